"""A message's way from the queue to a final state: claim, outcome, release.

Every function here is one short transaction that changes the message row and writes
its event (the report outbox) together. Outcome writes are conditional on the claim's
lease token: a worker whose lease was taken over can no longer change the message.
"""

from __future__ import annotations

import json
import logging
import random
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Exists, F, OuterRef, Q
from django.db.models.functions import Now
from django.utils import timezone

from queueing.models import SENDABLE_STATUSES, EventType, Message, MessageEvent, Status
from tenants.models import SmtpAccount, SuspendedBatch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Claim:
    token: uuid.UUID
    message_ids: list[int]


def _event(message: Message, event_type: str, now: datetime, details: dict[str, Any]) -> MessageEvent:
    return MessageEvent(tenant_id=message.tenant_id, message_id=message.pk, external_id=message.external_id,
                        event_type=event_type, occurred_at=now, details=details)


def due_messages(*, account_pk: int | None = None, suspended_batches: list[str] | None = None) -> Any:
    """Messages a worker may send now (database time), in send order.

    Suspension is checked here too, not only through the `held` status: a message
    committed while its tenant was being suspended must not slip through. Given the
    tenant's `suspended_batches` (one account's claim), they are excluded as a plain list:
    a correlated NOT EXISTS makes PostgreSQL sort the account's whole backlog instead of
    walking its (account, priority, id) index for the first few rows.
    """
    rows = Message.objects.filter(
        status__in=SENDABLE_STATUSES, next_attempt_at__lte=Now(), tenant__active=True, tenant__suspended=False,
    ).filter(Q(expires_at__isnull=True) | Q(expires_at__gt=Now()))
    if suspended_batches is None:
        suspended = SuspendedBatch.objects.filter(tenant_id=OuterRef("tenant_id"), batch_code=OuterRef("batch_code"))
        rows = rows.exclude(Exists(suspended))
    elif suspended_batches:
        rows = rows.exclude(batch_code__in=suspended_batches)
    if account_pk is not None:
        rows = rows.filter(account_id=account_pk)
    return rows.order_by("priority", "id")


def claim_due(*, account: SmtpAccount, limit: int, lease_seconds: int) -> Claim:
    """Take up to `limit` due messages of an account for this worker, with a lease.

    On PostgreSQL, `FOR UPDATE SKIP LOCKED` lets workers claim side by side without
    waiting for each other; on SQLite the whole transaction holds the write lock.
    Claiming nothing means someone else has the work (or there is none).
    """
    token = uuid.uuid4()
    with transaction.atomic():
        suspended = list(SuspendedBatch.objects.filter(tenant_id=account.tenant_id)
                         .values_list("batch_code", flat=True))
        ids = list(
            due_messages(account_pk=account.pk, suspended_batches=suspended)
            .select_for_update(skip_locked=True, of=("self",))
            .values_list("id", flat=True)[:limit]
        )
        if ids:
            Message.objects.filter(pk__in=ids, status__in=SENDABLE_STATUSES).update(
                status=Status.SENDING, lease_token=token, lease_until=Now() + timedelta(seconds=lease_seconds),
                updated_at=timezone.now(),
            )
    return Claim(token=token, message_ids=ids)


def claimed_messages(claim: Claim) -> list[Message]:
    """The claim's messages still held under its lease, in send order."""
    return list(Message.objects.filter(pk__in=claim.message_ids, lease_token=claim.token, status=Status.SENDING)
                .select_related("tenant").order_by("priority", "id"))


def renew_lease(*, claim: Claim, message_ids: Iterable[int], lease_seconds: int) -> set[int]:
    """Extend the lease of messages still held; the ids still ours."""
    ids = list(message_ids)
    with transaction.atomic():
        held = set(Message.objects.filter(pk__in=ids, lease_token=claim.token, status=Status.SENDING)
                   .values_list("id", flat=True))
        Message.objects.filter(pk__in=held).update(lease_until=Now() + timedelta(seconds=lease_seconds))
    return held


def release(*, claim: Claim, message_ids: Iterable[int], next_attempt_at: datetime | None = None,
            reason: str = "", error: str = "") -> int:
    """Give claimed messages back to the queue untouched: no attempt used.

    Used when the account cannot send right now (server unreachable, credentials
    refused, rate limit, the batch's time is up). A message gets one `deferred` event the
    first time it waits for a given reason, not one per probe.
    """
    ids = list(message_ids)
    if not ids:
        return 0
    now = timezone.now()
    with transaction.atomic():
        rows = list(Message.objects.select_for_update().filter(pk__in=ids, lease_token=claim.token,
                                                               status=Status.SENDING))
        events = []
        for message in rows:
            message.status = Status.DEFERRED if message.attempts else Status.QUEUED
            message.lease_token = None
            message.lease_until = None
            if next_attempt_at is not None:
                message.next_attempt_at = next_attempt_at
            if reason and message.deferred_reason != reason:
                message.status = Status.DEFERRED
                events.append(_event(message, EventType.DEFERRED, now, {
                    "deferred_ts": message.next_attempt_at.timestamp(), "deferred_reason": reason,
                    "attempts": message.attempts, **({"error": error} if error else {}),
                }))
                message.deferred_reason = reason
            message.updated_at = now
        Message.objects.bulk_update(rows, ["status", "lease_token", "lease_until", "next_attempt_at",
                                           "deferred_reason", "updated_at"])
        MessageEvent.objects.bulk_create(events)
    return len(rows)


def _owned(claim: Claim, message: Message) -> Any:
    return Message.objects.filter(pk=message.pk, lease_token=claim.token, status=Status.SENDING)


def record_sent(*, claim: Claim, message: Message, refused: list[dict[str, Any]],
                pending: list[str] | None = None, smtp_code: int = 250) -> bool:
    """The server took the message (for every recipient, or for all but `pending`).

    With recipients still pending (refused with 4xx) the message waits for their retry:
    it is `deferred` and only they get the next attempt, so nobody gets two copies.
    """
    now = timezone.now()
    refused_all = [*message.refused, *refused]
    if pending:
        return _record_partly_sent(claim, message, now, refused_all, pending, smtp_code)
    details: dict[str, Any] = {"sent_ts": now.timestamp()}
    if refused_all:
        details["refused"] = refused_all
    if message.possible_duplicate:
        details["possible_duplicate"] = True
    if connection.vendor == "postgresql" and not connection.in_atomic_block:
        changed = _record_sent_in_one_statement(claim, message, now, refused_all, smtp_code, details)
    else:
        with transaction.atomic():
            changed = _owned(claim, message).update(
                status=Status.SENT, sent_at=now, attempts=F("attempts") + 1, refused=refused_all,
                pending_recipients=None, lease_token=None, lease_until=None, smtp_code=smtp_code, last_error="",
                updated_at=now,
            )
            if changed:
                MessageEvent.objects.create(tenant_id=message.tenant_id, message_id=message.pk,
                                            external_id=message.external_id, event_type=EventType.SENT,
                                            occurred_at=now, details=details)
    if not changed:
        logger.warning("sent but the lease was lost message=%s tenant=%s", message.pk, message.tenant_id)
    return bool(changed)


def _record_partly_sent(claim: Claim, message: Message, now: datetime, refused_all: list[dict[str, Any]],
                        pending: list[str], smtp_code: int) -> bool:
    attempts = message.attempts + 1
    if attempts > settings.GMP_MAX_RETRIES:
        return record_failure(claim=claim, message=message, permanent=True, smtp_code=smtp_code,
                              error=f"retries exhausted after {attempts} attempts for {', '.join(pending)}",
                              refused=refused_all)
    next_at = now + retry_delay(attempts)
    with transaction.atomic():
        changed = _owned(claim, message).update(
            status=Status.DEFERRED, attempts=attempts, next_attempt_at=next_at, sent_at=message.sent_at or now,
            pending_recipients=pending, refused=refused_all, lease_token=None, lease_until=None,
            deferred_reason="recipients", updated_at=now, smtp_code=smtp_code,
        )
        if changed:
            MessageEvent.objects.create(tenant_id=message.tenant_id, message_id=message.pk,
                                        external_id=message.external_id, event_type=EventType.DEFERRED,
                                        occurred_at=now, details={
                                            "deferred_ts": next_at.timestamp(), "deferred_reason": "recipients",
                                            "attempts": attempts, "pending": pending, "refused": refused_all})
    return bool(changed)


def _record_sent_in_one_statement(claim: Claim, message: Message, now: datetime, refused: list[dict[str, Any]],
                                  smtp_code: int, details: dict[str, Any]) -> int:
    """The `sent` outcome and its event as one PostgreSQL statement (a data-modifying CTE).

    The most frequent write of the product: one round trip instead of four (BEGIN,
    UPDATE, INSERT, COMMIT), and a single statement in autocommit is atomic on its own.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            """
            WITH sent AS (
                UPDATE queueing_message
                   SET status = %s, sent_at = %s, attempts = attempts + 1, refused = %s::jsonb,
                       pending_recipients = NULL, lease_token = NULL, lease_until = NULL, smtp_code = %s,
                       last_error = '', updated_at = %s
                 WHERE id = %s AND lease_token = %s AND status = %s
             RETURNING id, tenant_id, external_id
            )
            INSERT INTO queueing_messageevent (tenant_id, message_id, external_id, event_type, occurred_at, details)
            SELECT tenant_id, id, external_id, %s, %s, %s::jsonb FROM sent
            """,
            [Status.SENT.value, now, json.dumps(refused), smtp_code, now, message.pk, claim.token,
             Status.SENDING.value, EventType.SENT.value, now, json.dumps(details)],
        )
        return cursor.rowcount


def retry_delay(attempts: int) -> timedelta:
    """Backoff after the n-th failed attempt: GMP_RETRY_DELAYS, ±10 % jitter (no herd)."""
    delays = settings.GMP_RETRY_DELAYS
    base = delays[min(attempts, len(delays)) - 1] if delays else 60
    return timedelta(seconds=base * random.uniform(0.9, 1.1))  # noqa: S311 (jitter, not security)


def record_failure(*, claim: Claim, message: Message, permanent: bool, error: str, smtp_code: int | None = None,
                   refused: list[dict[str, Any]] | None = None, possible_duplicate: bool = False) -> bool:
    """A failed attempt: retried later if temporary and retries remain, else `error`."""
    now = timezone.now()
    attempts = message.attempts + 1
    refused_all = refused if refused is not None else message.refused
    flags = {"possible_duplicate": True} if possible_duplicate else {}
    if not permanent and attempts > settings.GMP_MAX_RETRIES:
        permanent = True
        error = f"retries exhausted after {attempts} attempts: {error}"
    with transaction.atomic():
        if permanent:
            changed = _owned(claim, message).update(
                status=Status.ERROR, attempts=attempts, error_at=now, last_error=error, smtp_code=smtp_code,
                refused=refused_all, lease_token=None, lease_until=None, updated_at=now, **flags,
            )
            details: dict[str, Any] = {"error_ts": now.timestamp(), "error": error, "smtp_code": smtp_code}
            event_type = EventType.ERROR
        else:
            next_at = now + retry_delay(attempts)
            changed = _owned(claim, message).update(
                status=Status.DEFERRED, attempts=attempts, next_attempt_at=next_at, last_error=error,
                smtp_code=smtp_code, refused=refused_all, lease_token=None, lease_until=None,
                deferred_reason="smtp", updated_at=now, **flags,
            )
            details = {"deferred_ts": next_at.timestamp(), "deferred_reason": "smtp", "attempts": attempts,
                       "error": error, "smtp_code": smtp_code}
            event_type = EventType.DEFERRED
        if refused_all:
            details["refused"] = refused_all
        if possible_duplicate or message.possible_duplicate:
            details["possible_duplicate"] = True
        if changed:
            MessageEvent.objects.create(tenant_id=message.tenant_id, message_id=message.pk,
                                        external_id=message.external_id, event_type=event_type, occurred_at=now,
                                        details=details)
    return bool(changed)


def fail_unreachable_too_long(*, claim: Claim, messages: list[Message], since: datetime) -> set[int]:
    """Fail claimed messages older than GMP_MAX_QUEUE_LIFETIME while the server stays unreachable."""
    cutoff = timezone.now() - timedelta(seconds=settings.GMP_MAX_QUEUE_LIFETIME)
    failed = set()
    for message in messages:
        if message.created_at < cutoff and record_failure(
            claim=claim, message=message, permanent=True,
            error=f"server unreachable since {since.isoformat(timespec='seconds')}",
        ):
            failed.add(message.pk)
    return failed


def expire_overdue() -> int:
    """End waiting messages whose `expires_ts` has passed, each with an `expired` event."""
    now = timezone.now()
    with transaction.atomic():
        rows = list(
            Message.objects.select_for_update(skip_locked=True)
            .filter(status__in=[Status.QUEUED, Status.DEFERRED, Status.HELD], expires_at__lte=now)
            .only("id", "tenant_id", "external_id")[:1000]
        )
        if not rows:
            return 0
        error = "expired before it could be sent"
        Message.objects.filter(pk__in=[row.pk for row in rows]).update(
            status=Status.EXPIRED, error_at=now, last_error=error, updated_at=now
        )
        MessageEvent.objects.bulk_create(
            [_event(row, EventType.EXPIRED, now, {"error_ts": now.timestamp(), "error": error}) for row in rows]
        )
    logger.info("expired messages=%d", len(rows))
    return len(rows)


def reclaim_expired_leases() -> int:
    """Give back messages whose worker died holding them (its lease ran out).

    A worker sends its claim one message at a time, in (priority, id) order, recording
    each outcome before the next: of a dead claim, only the first message still held may
    have reached the server. That one is flagged `possible_duplicate` (its Message-ID is
    unchanged, so a copy is recognisable); the ones after it were never tried.
    """
    with transaction.atomic():
        rows = list(Message.objects.select_for_update(skip_locked=True)
                    .filter(status=Status.SENDING, lease_until__lt=Now()).values_list("id", "lease_token")[:1000])
        if not rows:
            return 0
        ids = [pk for pk, _ in rows]
        in_flight = {pk for pk, token in rows if token is None}  # no claim to tell by: assume the worst
        for token in {token for _, token in rows if token is not None}:
            first = (Message.objects.filter(lease_token=token, status=Status.SENDING).order_by("priority", "id")
                     .values_list("id", flat=True).first())
            if first is not None:
                in_flight.add(first)
        back = {"status": Status.QUEUED, "lease_token": None, "lease_until": None, "next_attempt_at": Now(),
                "updated_at": timezone.now()}
        Message.objects.filter(pk__in=[pk for pk in ids if pk in in_flight]).update(possible_duplicate=True, **back)
        Message.objects.filter(pk__in=[pk for pk in ids if pk not in in_flight]).update(**back)
    logger.warning("reclaimed messages of a lost worker count=%d", len(ids))
    return len(ids)
