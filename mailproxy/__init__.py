"""The mail-proxy Django project. Importing it loads the Celery app, so tasks can be sent."""

from __future__ import annotations

from mailproxy.celery import app as celery_app

__all__ = ("celery_app",)
