"""Delivery reports: the sync protocol (SPEC §7) that posts a tenant's events to it.

The event table is the outbox. A report run holds the tenant's sync lease (a row
condition, so one run per tenant at a time across the fleet), posts unreported events
in order, and marks exactly the events the tenant acknowledged. Nothing is ever deleted
here: a tenant that cannot be reached gets the same events, with the same `event_id`,
until it answers.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import current_app
from django.conf import settings
from django.db import transaction
from django.db.models import Count, Exists, F, OuterRef, Q
from django.utils import timezone

from mailproxy import metrics, safehttp
from queueing.models import Message, MessageEvent
from tenants import crypto
from tenants.models import AuthMethod, Tenant

logger = logging.getLogger(__name__)

REPORT_TASK = "delivery.report_tenant"
MAX_CALLS_PER_RUN = 50
MAX_ANSWER_BYTES = 1024 * 1024
COALESCE_SECONDS = 0.2
# Per event type, the fields of the item besides the common ones (SPEC §7); `possible_duplicate`
# and, for deferrals, the error text are added when present.
ITEM_FIELDS: dict[str, tuple[str, ...]] = {
    "sent": ("sent_ts", "refused"),
    "error": ("error_ts", "error", "smtp_code", "refused"),
    "deferred": ("deferred_ts", "deferred_reason", "attempts", "error"),
    "expired": ("error_ts", "error"),
    "cancelled": ("cancelled_ts",),
    "bounce": ("bounce_ts", "bounce_type", "bounce_code", "bounce_reason", "recipient"),
}
PEC_FIELDS = ("pec_event", "pec_ts", "pec_details", "recipient")


def sync_url(tenant: Tenant) -> str:
    if tenant.client_base_url:
        return tenant.client_base_url.rstrip("/") + (tenant.client_sync_path or "/mail-proxy/sync")
    return settings.GMP_CLIENT_SYNC_URL


def report_item(event: MessageEvent, account_id: str | None) -> dict[str, Any]:
    item: dict[str, Any] = {"event_id": event.pk, "event": event.event_type, "id": event.external_id,
                            "pk": event.message_id, "tenant_id": event.tenant_id,
                            "account_id": account_id or event.details.get("account_id")}
    fields = PEC_FIELDS if event.event_type.startswith("pec_") else ITEM_FIELDS.get(event.event_type, ())
    for name in fields:
        if name in event.details and (event.details[name] not in (None, []) or name == "smtp_code"):
            item[name] = event.details[name]
    if event.details.get("possible_duplicate"):
        item["possible_duplicate"] = True
    return item


def outbox(tenant: Tenant, limit: int) -> list[tuple[MessageEvent, str | None]]:
    events = (MessageEvent.objects.filter(tenant=tenant, reported_at__isnull=True, undelivered_at__isnull=True)
              .annotate(account_external_id=F("message__account__external_id")).order_by("id")[:limit])
    return [(event, event.account_external_id) for event in events]  # type: ignore[attr-defined]


def _headers(tenant: Tenant, body: bytes) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    secret = crypto.decrypt(tenant.client_auth_secret_encrypted)  # opened only to build this request
    if tenant.client_auth_method == AuthMethod.BEARER and secret:
        headers["Authorization"] = f"Bearer {secret}"
    elif tenant.client_auth_method == AuthMethod.BASIC and secret:
        pair = f"{tenant.client_auth_user}:{secret}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
    signing = crypto.decrypt(tenant.signing_secret_encrypted)
    if signing:
        stamp = str(int(time.time()))
        digest = hmac.new(signing.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        headers["X-Mail-Proxy-Timestamp"] = stamp
        headers["X-Mail-Proxy-Signature"] = f"sha256={digest}"
    return headers


@dataclass(frozen=True)
class Answer:
    queued: int
    next_sync_after: datetime | None
    error: set[str]
    not_found: set[str]


class CallFailed(Exception):
    """Nothing of the request is acknowledged: non-2xx, timeout, refused, not JSON."""


def _call(tenant: Tenant, url: str, items: list[dict[str, Any]]) -> Answer:
    body = json.dumps({"delivery_report": items}, separators=(",", ":")).encode()
    try:
        response = safehttp.request("POST", url, body=body, headers=_headers(tenant, body),
                                    timeout=settings.GMP_REPORT_TIMEOUT, max_bytes=MAX_ANSWER_BYTES)
    except (safehttp.OutboundRefused, safehttp.OutboundError) as exc:
        raise CallFailed(str(exc)) from None
    if not 200 <= response.status < 300:
        raise CallFailed(f"HTTP {response.status}")
    try:
        data = json.loads(response.body or b"{}")
    except ValueError:
        raise CallFailed("the answer is not JSON") from None
    if not isinstance(data, dict):
        raise CallFailed("the answer is not a JSON object")

    def ids(name: str) -> set[str]:
        value = data.get(name) or []
        return {str(item) for item in value} if isinstance(value, list) else set()

    queued = data.get("queued") or 0
    dnd = data.get("next_sync_after")
    until = None
    if isinstance(dnd, int | float) and not isinstance(dnd, bool) and dnd > time.time():
        until = datetime.fromtimestamp(min(dnd, time.time() + 30 * 86400), tz=UTC)
    return Answer(queued=queued if isinstance(queued, int) and not isinstance(queued, bool) else 0,
                  next_sync_after=until, error=ids("error"), not_found=ids("not_found"))


def _claim(tenant_id: str, lease_seconds: float) -> bool:
    now = timezone.now()
    return bool(Tenant.objects.filter(pk=tenant_id).filter(
        Q(sync_lease_until__isnull=True) | Q(sync_lease_until__lt=now)
    ).update(sync_lease_until=now + timedelta(seconds=lease_seconds), sync_ring_until=None))


def _fail(tenant: Tenant, error: str) -> None:
    now = timezone.now()
    step = settings.GMP_REPORT_BACKOFF_MIN_SECONDS if not tenant.sync_backoff_seconds else min(
        tenant.sync_backoff_seconds * 2, settings.GMP_REPORT_BACKOFF_MAX_SECONDS)
    since = tenant.sync_failing_since or now
    Tenant.objects.filter(pk=tenant.pk).update(
        sync_retry_at=now + timedelta(seconds=step), sync_backoff_seconds=step, sync_failing_since=since,
        sync_last_error=error[:1000], sync_last_call_at=now,
    )
    metrics.inc("report_failures", tenant_id=tenant.pk)
    if now - since >= timedelta(seconds=settings.GMP_REPORT_GIVE_UP_SECONDS):
        given_up = MessageEvent.objects.filter(
            tenant=tenant, reported_at__isnull=True, undelivered_at__isnull=True,
            occurred_at__lte=now - timedelta(seconds=settings.GMP_REPORT_GIVE_UP_SECONDS),
        ).update(undelivered_at=now)
        if given_up:
            logger.error("reports undelivered tenant=%s events=%d failing_since=%s", tenant.pk, given_up,
                         since.isoformat())
    logger.warning("report call failed tenant=%s retry_in=%ss error=%s", tenant.pk, step, error)


def _acknowledge(tenant: Tenant, sent: list[tuple[MessageEvent, dict[str, Any]]], answer: Answer) -> int:
    now = timezone.now()
    acked = [event.pk for event, item in sent
             if str(item["event_id"]) not in answer.error and str(item["id"]) not in answer.error]
    missing = [item["id"] for _, item in sent if str(item["id"]) in answer.not_found
               or str(item["event_id"]) in answer.not_found]
    if missing:
        logger.info("tenant does not know messages tenant=%s ids=%s", tenant.pk, missing[:20])
    with transaction.atomic():
        MessageEvent.objects.filter(pk__in=acked, reported_at__isnull=True).update(reported_at=now)
        Tenant.objects.filter(pk=tenant.pk).update(
            sync_last_at=now, sync_last_call_at=now, sync_retry_at=None, sync_backoff_seconds=0,
            sync_failing_since=None, sync_last_error="", sync_dnd_until=answer.next_sync_after,
            sync_expect_more=answer.queued > 0,
        )
    acknowledged = set(acked)
    for event, _ in sent:
        if event.pk in acknowledged:
            metrics.observe("report_lag_seconds", (now - event.occurred_at).total_seconds())
    return len(acked)


def report_tenant(*, tenant_id: str, force: bool = False) -> int:
    """Post the tenant's unreported events (or a heartbeat); the number of calls made.

    Safe to run twice at once: the second run finds the sync lease taken and returns.
    `force` (tenant run-now) clears Do Not Disturb and the failure backoff.
    """
    with metrics.batch():  # the run's lags and failures go to the shared store together
        return _report_tenant(tenant_id, force)


def _report_tenant(tenant_id: str, force: bool) -> int:
    # Longer than one call can take; renewed before each call of the run.
    lease = settings.GMP_REPORT_TIMEOUT * 2 + 10
    if not _claim(tenant_id, lease):
        # Another run is at work. Give the ring back, so the next sweep or send can ring
        # again: events recorded after that run's last look must not wait for the mark to expire.
        Tenant.objects.filter(pk=tenant_id).update(sync_ring_until=None)
        return 0
    calls = 0
    call_anyway = force  # a call is wanted even with nothing to report (run-now, `queued > 0`)
    try:
        if force:
            Tenant.objects.filter(pk=tenant_id).update(sync_dnd_until=None, sync_retry_at=None)
        for _ in range(MAX_CALLS_PER_RUN):
            tenant = Tenant.objects.get(pk=tenant_id)
            url = sync_url(tenant)
            now = timezone.now()
            if not url or (tenant.sync_retry_at and tenant.sync_retry_at > now):
                break
            pending = outbox(tenant, settings.GMP_REPORT_BATCH)
            if tenant.sync_expect_more and _submitted_since(tenant, tenant.sync_last_call_at):
                call_anyway = True  # the messages it announced have arrived
            if not pending and not call_anyway and not _heartbeat_due(tenant, now):
                break
            items = [report_item(event, account_id) for event, account_id in pending]
            call_started = timezone.now()
            Tenant.objects.filter(pk=tenant_id).update(sync_lease_until=call_started + timedelta(seconds=lease))
            try:
                answer = _call(tenant, url, items)
            except CallFailed as exc:
                calls += 1
                _fail(tenant, str(exc))
                break
            calls += 1
            call_anyway = False
            _acknowledge(tenant, list(zip((event for event, _ in pending), items, strict=True)), answer)
            if answer.error:
                break  # the refused events go again next run, not in a tight loop
            if len(pending) >= settings.GMP_REPORT_BATCH:
                continue  # more events are waiting
            if answer.queued > 0:
                if not _submitted_since(tenant, call_started):
                    break  # the tenant's next submission (or the sweep, after the floor) calls again
                call_anyway = True  # its new messages are in: call again at once
            elif not outbox(tenant, 1):
                break
    finally:
        Tenant.objects.filter(pk=tenant_id).update(sync_lease_until=None)
    # Events or submissions that arrived while we held the lease could not ring us: look once more.
    latest = Tenant.objects.filter(pk=tenant_id).first()
    if latest is not None and sync_url(latest) and calls and not (
        latest.sync_retry_at and latest.sync_retry_at > timezone.now()
    ) and (outbox(latest, 1) or (latest.sync_expect_more and _submitted_since(latest, latest.sync_last_call_at))):
        ring_reports([tenant_id])
    return calls


def _heartbeat_due(tenant: Tenant, now: datetime) -> bool:
    if tenant.sync_dnd_until and tenant.sync_dnd_until > now:
        return False
    if tenant.sync_expect_more and tenant.sync_last_call_at and (
        now - tenant.sync_last_call_at).total_seconds() >= settings.GMP_SYNC_MIN_INTERVAL:
        return True
    return tenant.sync_last_at is None or (now - tenant.sync_last_at).total_seconds() >= settings.GMP_SYNC_INTERVAL


def _submitted_since(tenant: Tenant, moment: datetime | None) -> bool:
    return moment is not None and Message.objects.filter(tenant=tenant, updated_at__gte=moment).exists()


def ring_reports(tenant_ids: list[str]) -> list[str]:
    """Queue one report task per tenant not rung already (a row condition, as for accounts)."""
    if not tenant_ids:
        return []
    now = timezone.now()
    with transaction.atomic():
        candidates = Tenant.objects.filter(pk__in=tenant_ids)
        if not settings.GMP_CLIENT_SYNC_URL:
            candidates = candidates.exclude(client_base_url="")  # nowhere to report to: nothing to ring
        rung = list(candidates.filter(
            Q(sync_ring_until__isnull=True) | Q(sync_ring_until__lte=now)
        ).exclude(
            # Under load, events of the next moments go together in one call (the sweep
            # comes back within a second): fewer, fuller requests, and workers stay free to send.
            sync_last_call_at__gt=now - timedelta(seconds=COALESCE_SECONDS)
        ).values_list("id", flat=True))
        Tenant.objects.filter(pk__in=rung).update(sync_ring_until=now + timedelta(seconds=settings.GMP_RING_SECONDS))
    for tenant_id in rung:
        current_app.send_task(REPORT_TASK, args=[tenant_id], queue="reports", retry=False)
    return rung


def tenants_to_report() -> list[str]:
    """Tenants with events waiting, or a heartbeat due; not in backoff, not already running."""
    now = timezone.now()
    waiting = MessageEvent.objects.filter(tenant=OuterRef("pk"), reported_at__isnull=True,
                                          undelivered_at__isnull=True)
    candidates = Tenant.objects.filter(Q(sync_retry_at__isnull=True) | Q(sync_retry_at__lte=now)).filter(
        Q(sync_lease_until__isnull=True) | Q(sync_lease_until__lt=now))
    if not settings.GMP_CLIENT_SYNC_URL:
        candidates = candidates.exclude(client_base_url="")
    due = []
    for tenant in candidates.annotate(waiting=Exists(waiting)):
        if tenant.waiting or _heartbeat_due(tenant, now):  # type: ignore[attr-defined]
            due.append(tenant.pk)
    return due


def sweep() -> list[str]:
    return ring_reports(tenants_to_report())


def sync_status() -> list[dict[str, Any]]:
    now = timezone.now()
    pending = dict(MessageEvent.objects.filter(reported_at__isnull=True, undelivered_at__isnull=True)
                   .values("tenant_id").annotate(n=Count("id")).values_list("tenant_id", "n"))
    undelivered = dict(MessageEvent.objects.filter(reported_at__isnull=True, undelivered_at__isnull=False)
                       .values("tenant_id").annotate(n=Count("id")).values_list("tenant_id", "n"))
    rows = []
    for tenant in Tenant.objects.order_by("id"):
        next_due = tenant.sync_retry_at or (
            tenant.sync_last_at + timedelta(seconds=settings.GMP_SYNC_INTERVAL) if tenant.sync_last_at else now)
        if tenant.sync_dnd_until and tenant.sync_dnd_until > next_due:
            next_due = tenant.sync_dnd_until
        rows.append({
            "tenant_id": tenant.pk,
            "sync_url_configured": bool(sync_url(tenant)),
            "last_sync_ts": tenant.sync_last_at.timestamp() if tenant.sync_last_at else None,
            "next_sync_due": next_due.timestamp(),
            "in_dnd": bool(tenant.sync_dnd_until and tenant.sync_dnd_until > now),
            "pending_reports": pending.get(tenant.pk, 0),
            "undelivered_reports": undelivered.get(tenant.pk, 0),
            "failing_since": tenant.sync_failing_since.timestamp() if tenant.sync_failing_since else None,
            "last_error": tenant.sync_last_error or None,
        })
    return rows
