"""The doorbell: find accounts with due work and hand each one send task.

Cheap and idempotent. It runs from beat every GMP_SEND_INTERVAL_SECONDS, right after
an immediate message is committed, and on run-now. `ring_until` on the account row
keeps a queued task from being doubled by the next sweep; it expires by itself, so a
task lost with the broker is rung again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from celery import current_app
from django.conf import settings
from django.db import transaction
from django.db.models import OuterRef, Q, Subquery
from django.db.models.functions import Now
from django.utils import timezone

from queueing import lifecycle
from queueing.models import Priority
from tenants.models import SmtpAccount

logger = logging.getLogger(__name__)

SEND_TASK = "delivery.send_batch"
QUEUE_OF_PRIORITY = {Priority.IMMEDIATE: "immediate", Priority.HIGH: "high", Priority.MEDIUM: "medium",
                     Priority.LOW: "low"}


def due_accounts(*, tenant_id: str | None = None) -> dict[int, int]:
    """Accounts with due messages and the best priority waiting on each, skipping paused ones.

    One probe per account (its first due message by its (account, priority, id) index),
    not a grouping of every due message: beat runs this every second, and a backlog of a
    million messages must cost it no more than an empty queue.
    """
    return {pk: best for pk, best in due_accounts_query(tenant_id=tenant_id) if best is not None}


def due_accounts_query(*, tenant_id: str | None = None) -> Any:
    """(account pk, best waiting priority or None) of the accounts not paused.

    The probe leaves suspended batches to the claim (`claim_due` excludes them): their
    messages are `held` already, and one that slipped in while its batch was being
    suspended costs at most a send task that claims nothing.
    """
    first_due = (lifecycle.due_messages(suspended_batches=[]).filter(account_id=OuterRef("pk"))
                 .order_by("priority", "id").values("priority")[:1])
    accounts = SmtpAccount.objects.filter(tenant__active=True, tenant__suspended=False).filter(
        Q(paused_until__isnull=True) | Q(paused_until__lte=Now())
    )
    if tenant_id is not None:
        accounts = accounts.filter(tenant_id=tenant_id)
    return accounts.annotate(best=Subquery(first_due)).values_list("pk", "best")


def due_accounts_of(account_pk: int) -> dict[int, int]:
    """The account with the best priority it has waiting, if it has due work."""
    best = lifecycle.due_messages(account_pk=account_pk).order_by("priority").values_list("priority", flat=True)
    first = best.first()
    return {} if first is None else {account_pk: first}


def ring(accounts: dict[int, int], *, force: bool = False) -> list[int]:
    """Enqueue one send task per account not rung already; the accounts rung.

    The conditional UPDATE is the claim on ringing: of several dispatchers (two beats,
    a sweep and a doorbell at once) only one enqueues the task. Sweeps ring few
    accounts (those with due mail), so a statement per account costs little.
    """
    if not accounts:
        return []
    now = timezone.now()
    until = now + timedelta(seconds=settings.GMP_RING_SECONDS)
    rung = []
    for account_pk in accounts:
        # One conditional UPDATE per account, in autocommit: a single round trip, and of two
        # dispatchers ringing at once exactly one sees its row change.
        candidates = SmtpAccount.objects.filter(pk=account_pk)
        if not force:
            candidates = candidates.filter(Q(ring_until__isnull=True) | Q(ring_until__lte=now))
        if candidates.update(ring_until=until):
            rung.append(account_pk)
    for account_pk in rung:
        queue = QUEUE_OF_PRIORITY[Priority(accounts[account_pk])]
        current_app.send_task(SEND_TASK, args=[account_pk], queue=queue, retry=False)
    return rung


def dispatch_due(*, tenant_id: str | None = None) -> list[int]:
    """One sweep: reclaim dead workers' leases, expire overdue mail, ring accounts with due work."""
    lifecycle.reclaim_expired_leases()
    lifecycle.expire_overdue()
    return ring(due_accounts(tenant_id=tenant_id))


def ring_after_commit(accounts: Iterable[tuple[int, int]]) -> None:
    """Ring accounts of freshly committed immediate messages, without waiting for the sweep.

    Runs after the answer's data is durable. A broker that does not answer costs only the
    sweep's delay (at most GMP_SEND_INTERVAL_SECONDS): the request still succeeds.
    """
    best: dict[int, int] = {}
    for account_pk, priority in accounts:
        if priority == Priority.IMMEDIATE:
            best[account_pk] = priority
    if not best:
        return

    def doorbell() -> None:
        try:
            ring(best)
        except Exception:  # noqa: BLE001 (the sweep re-rings; the API must not fail on a doorbell)
            logger.warning("doorbell failed; the sweep will pick the messages up", exc_info=True)

    transaction.on_commit(doorbell)


REPORT_TASK = "delivery.report_tenant"
REPORT_SWEEP_TASK = "delivery.report_sweep"


def wake_reports(tenant_ids: Iterable[str], *, force: bool = False) -> None:
    """Ask for a report run now (by task name: reporting is the delivery app's).

    A run already in progress holds the tenant's sync lease and makes the extra task a
    no-op, so this needs no de-duplication; a broker that does not answer costs only the
    report sweep's delay.
    """
    for tenant_id in dict.fromkeys(tenant_ids):
        try:
            current_app.send_task(REPORT_TASK, args=[tenant_id, force], queue="reports", retry=False)
        except Exception:  # noqa: BLE001 (the report sweep covers it)
            logger.warning("could not wake reports tenant=%s", tenant_id, exc_info=True)


def wake_all_reports() -> None:
    try:
        current_app.send_task(REPORT_SWEEP_TASK, queue="reports", retry=False)
    except Exception:  # noqa: BLE001 (beat runs the sweep every second anyway)
        logger.warning("could not wake the report sweep", exc_info=True)
