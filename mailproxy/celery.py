"""The Celery application. Queues, routing and the beat schedule are completed by the delivery engine."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mailproxy.settings")

app = Celery("mailproxy")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
