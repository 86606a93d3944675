from __future__ import annotations

from django.apps import AppConfig


class PecConfig(AppConfig):
    name = "pec"
