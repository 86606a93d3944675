from __future__ import annotations

from celery import shared_task

from bounces import services


@shared_task(name="bounces.poll", ignore_result=True)
def poll() -> None:
    """Read the bounce mailboxes that are due; safe to run on several workers at once."""
    services.poll_bounces()
