from __future__ import annotations

from celery import shared_task

from delivery import largefiles, reports, services


@shared_task(name="delivery.send_batch", acks_late=True, ignore_result=True)
def send_batch(account_pk: int) -> None:
    """Send the due messages of one account; safe to run twice."""
    services.send_due(account_pk=account_pk)


@shared_task(name="delivery.report_tenant", acks_late=True, ignore_result=True)
def report_tenant(tenant_id: str, force: bool = False) -> None:
    """Post one tenant's delivery reports; safe to run twice (a sync lease per tenant)."""
    reports.report_tenant(tenant_id=tenant_id, force=force)


@shared_task(name="delivery.report_sweep", ignore_result=True)
def report_sweep() -> None:
    """Ring the report task of every tenant with events waiting or a heartbeat due."""
    reports.sweep()


@shared_task(name="delivery.cleanup_files", ignore_result=True)
def cleanup_files() -> None:
    """Remove offloaded large files whose links expired."""
    largefiles.cleanup_expired()
