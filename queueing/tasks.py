from __future__ import annotations

from celery import shared_task

from mailproxy import health
from queueing import dispatch, services


@shared_task(name="queueing.dispatch", ignore_result=True)
def dispatch_sweep(tenant_id: str | None = None) -> None:
    """Ring every account with due work; run by beat, safe to run any number of times."""
    dispatch.dispatch_due(tenant_id=tenant_id)


@shared_task(name="queueing.cleanup", ignore_result=True)
def cleanup() -> None:
    """Apply the retention: remove final messages whose events were all acknowledged."""
    services.cleanup_messages(tenant=None)


@shared_task(name="queueing.heartbeat", ignore_result=True)
def heartbeat() -> None:
    """Tell /ready that beat is alive (and that a worker takes its tasks)."""
    health.record_beat()
