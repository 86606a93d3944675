from __future__ import annotations

from celery import shared_task

from delivery import services


@shared_task(name="delivery.send_batch", acks_late=True, ignore_result=True)
def send_batch(account_pk: int) -> None:
    """Send the due messages of one account; safe to run twice."""
    services.send_due(account_pk=account_pk)
