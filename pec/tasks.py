from __future__ import annotations

from celery import shared_task

from pec import services


@shared_task(name="pec.poll", ignore_result=True)
def poll() -> None:
    """Read the PEC mailboxes that are due."""
    services.poll_receipts()


@shared_task(name="pec.timeouts", ignore_result=True)
def timeouts() -> None:
    """Report PEC messages whose acceptance or delivery receipts did not come in time."""
    services.check_timeouts()
