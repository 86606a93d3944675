"""Sending: one account's due messages, over pooled connections, within the rate limits."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypedDict

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection
from django.db.models import F, Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from delivery import reports, smtp
from delivery.attachments import AttachmentError, fetch_attachments
from delivery.largefiles import LargeFileError, apply_policy
from delivery.mime import Envelope, build_envelope
from mailproxy import metrics
from queueing import dispatch, lifecycle
from queueing.models import Message, Status
from queueing.ratelimit import Bucket, Decision, LimiterUnavailable, buckets_for, get_limiter
from tenants.models import LimitBehavior, SmtpAccount

logger = logging.getLogger(__name__)

LIMITER_PAUSE_SECONDS = 5


@dataclass
class SendSummary:
    claimed: int = 0
    sent: int = 0
    failed: int = 0
    deferred: int = 0
    released: int = 0


def _back_off(account: SmtpAccount, error: str, *, probing: bool) -> datetime:
    """Pause the whole account after a failed connection: 5 s, doubling up to 5 min.

    Shared by every worker through the account row, so an outage costs one probe per
    step however many workers and messages wait. Workers that failed at the same moment
    as another (the outage's first seconds) find the account already paused and keep
    that pause: the step doubles once per probe, not once per worker.
    """
    now = timezone.now()
    step = settings.GMP_BACKOFF_MIN_SECONDS if not account.backoff_seconds else min(
        account.backoff_seconds * 2, settings.GMP_BACKOFF_MAX_SECONDS)
    paused_until = now + timedelta(seconds=step)
    rows = SmtpAccount.objects.filter(pk=account.pk)
    if not probing:
        rows = rows.filter(Q(paused_until__isnull=True) | Q(paused_until__lte=now))
    if not rows.update(paused_until=paused_until, backoff_seconds=step,
                       unreachable_since=Coalesce(F("unreachable_since"), now)):
        current = SmtpAccount.objects.filter(pk=account.pk).values_list("paused_until", flat=True).first()
        return current or paused_until
    logger.warning("smtp unreachable account=%s tenant=%s retry_in=%ss error=%s", account.external_id,
                   account.tenant_id, step, error)
    return paused_until


# A probe holds the account for its connection timeout plus this margin; if its worker
# dies meanwhile, the next worker probes when the hold ends.
PROBE_MARGIN_SECONDS = 5


def _take_probe(account: SmtpAccount) -> datetime | None:
    """During an outage, let one worker of the fleet try the server; None when this one may.

    Otherwise the time until which another worker's probe (or the next backoff step) holds
    the account. Outside an outage every worker connects as it needs to.
    """
    if not account.backoff_seconds:
        return None
    now = timezone.now()
    hold = now + timedelta(seconds=account.timeout + PROBE_MARGIN_SECONDS)
    if SmtpAccount.objects.filter(pk=account.pk, backoff_seconds__gt=0).filter(
            Q(paused_until__isnull=True) | Q(paused_until__lte=now)).update(paused_until=hold):
        return None
    paused_until, backoff = SmtpAccount.objects.filter(pk=account.pk).values_list(
        "paused_until", "backoff_seconds").get()
    if not backoff:  # another worker reached the server meanwhile
        return None
    return paused_until or hold


def _auth_refused(account: SmtpAccount, error: str) -> datetime:
    now = timezone.now()
    paused_until = now + timedelta(seconds=settings.GMP_AUTH_RETRY_SECONDS)
    SmtpAccount.objects.filter(pk=account.pk).update(account_error=f"authentication failed: {error}",
                                                     account_error_at=now, paused_until=paused_until)
    logger.error("smtp authentication refused account=%s tenant=%s error=%s", account.external_id,
                 account.tenant_id, error)
    return paused_until


def _reachable_again(account: SmtpAccount) -> None:
    if account.unreachable_since or account.backoff_seconds or account.paused_until:
        now = timezone.now()
        SmtpAccount.objects.filter(pk=account.pk).update(unreachable_since=None, backoff_seconds=0, paused_until=None)
        # Messages other workers gave back while this probe held the account are due now,
        # not when the hold would have ended.
        Message.objects.filter(
            account_id=account.pk, status__in=(Status.QUEUED, Status.DEFERRED), deferred_reason="unreachable",
            next_attempt_at__gt=now,
            next_attempt_at__lte=now + timedelta(seconds=account.timeout + PROBE_MARGIN_SECONDS),
        ).update(next_attempt_at=now)
        logger.info("smtp reachable again account=%s tenant=%s", account.external_id, account.tenant_id)


# How long a worker keeps trying to record a transaction that happened while the database
# is away; after that the lease's expiry decides (the message is flagged possible_duplicate).
RECORD_RETRY_SECONDS = 120.0


def _lease_seconds(account: SmtpAccount) -> int:
    # Covers the batch's time budget plus one transaction that starts at its very end.
    return settings.GMP_BATCH_SECONDS + 2 * account.timeout + 10


def send_due(*, account_pk: int) -> SendSummary:
    """Send the due messages of one account, one batch; safe to run twice at once.

    A second run claims other messages or none (SKIP LOCKED, leases): no message is sent
    twice. What this run could not send for reasons of the account (server unreachable,
    credentials, rate limit, time budget) goes back to the queue without using attempts.
    """
    with metrics.batch():  # the batch's counts go to the shared store together
        return _send_due(account_pk)


class _Series(TypedDict):
    tenant_id: str
    account_id: str


def _series(account: SmtpAccount) -> _Series:
    """The labels of the account's counters."""
    return {"tenant_id": account.tenant_id, "account_id": account.external_id}


def _count_failure(account: SmtpAccount, message: Message, *, permanent: bool) -> None:
    """Count a recorded failed attempt: an error when it ended the message, else a deferral."""
    # The rule of lifecycle.record_failure: a temporary failure past the last retry is final.
    final = permanent or message.attempts + 1 > settings.GMP_MAX_RETRIES
    metrics.inc("errors" if final else "deferred", **_series(account))


def _send_due(account_pk: int) -> SendSummary:
    summary = SendSummary()
    account = SmtpAccount.objects.select_related("tenant").filter(pk=account_pk).first()
    if account is None:
        return summary
    SmtpAccount.objects.filter(pk=account.pk).update(ring_until=None)  # the doorbell was answered
    now = timezone.now()
    if (account.paused_until and account.paused_until > now) or not account.tenant.active:
        return summary
    lease_seconds = _lease_seconds(account)
    claim = lifecycle.claim_due(account=account, limit=account.batch_size, lease_seconds=lease_seconds)
    lease_ends = time.monotonic() + lease_seconds
    summary.claimed = len(claim.message_ids)
    if not claim.message_ids:
        return summary
    if summary.claimed >= account.batch_size:
        # A full batch: more is probably due. Ring now, so a free worker takes the next
        # batch of this account while this one sends (its task still queues behind
        # other accounts' tasks, so a big account does not starve the rest).
        dispatch.ring(dispatch.due_accounts_of(account.pk))
    messages = lifecycle.claimed_messages(claim)
    buckets = buckets_for(account, account.tenant)
    deadline = time.monotonic() + settings.GMP_BATCH_SECONDS
    pooled: smtp._Pooled | None = None
    # The last sent message's token, dated at its arrival together with the next
    # acquisition (one Redis round trip per message), or alone when the batch ends.
    unstamped: Decision | None = None
    try:
        for index, message in enumerate(messages):
            rest = [m.pk for m in messages[index:]]
            if time.monotonic() > deadline:
                summary.released += lifecycle.release(claim=claim, message_ids=rest)
                break
            if lease_ends - time.monotonic() < 3 * account.timeout + 5:
                # A slow server ate into the lease: extend it before the next transaction,
                # so no other worker reclaims a message while this one may still send it.
                held = lifecycle.renew_lease(claim=claim, message_ids=rest, lease_seconds=lease_seconds)
                lease_ends = time.monotonic() + lease_seconds
                if message.pk not in held:
                    continue
            token: Decision | None = None
            if buckets:
                verdict, token = _take_token(account, buckets, message, claim, rest, summary, unstamped)
                unstamped = None
                if verdict == "stop":
                    break
                if verdict == "skip":
                    continue
            try:
                envelope = _prepare(account, message)
            except (AttachmentError, LargeFileError) as exc:
                if lifecycle.record_failure(claim=claim, message=message, permanent=exc.permanent, error=str(exc)):
                    _count_failure(account, message, permanent=exc.permanent)
                if exc.permanent:
                    summary.failed += 1
                else:
                    summary.deferred += 1
                continue
            except (ValueError, TypeError, LookupError) as exc:
                # A message the email package cannot render fails alone: left unhandled it would
                # end the batch with every message still claimed, and do it again at each reclaim.
                logger.error("message cannot be built message=%s tenant=%s: %s", message.pk, message.tenant_id,
                             type(exc).__name__)
                error = f"the message cannot be built: {type(exc).__name__}: {exc}"[:500]
                if lifecycle.record_failure(claim=claim, message=message, permanent=True, error=error):
                    _count_failure(account, message, permanent=True)
                summary.failed += 1
                continue
            if pooled is None:
                held_until = _take_probe(account)
                if held_until is not None:
                    summary.released += lifecycle.release(claim=claim, message_ids=rest, next_attempt_at=held_until,
                                                          reason="unreachable")
                    break
                try:
                    pooled = smtp.pool.acquire(account)
                except smtp.Unreachable as exc:
                    _handle_unreachable(account, claim, messages[index:], str(exc), summary,
                                        probing=bool(account.backoff_seconds))
                    break
                except smtp.AuthRefused as exc:
                    until = _auth_refused(account, str(exc))
                    summary.released += lifecycle.release(claim=claim, message_ids=rest, next_attempt_at=until,
                                                          reason="auth", error=str(exc))
                    break
                _reachable_again(account)
            try:
                outcome = smtp.transact(pooled.client, envelope)
            except smtp.AuthRefused as exc:  # 530 at MAIL: the server wants credentials
                smtp.pool.release(account, pooled, broken=True)
                pooled = None
                until = _auth_refused(account, str(exc))
                summary.released += lifecycle.release(claim=claim, message_ids=rest, next_attempt_at=until,
                                                      reason="auth", error=str(exc))
                break
            unstamped = token
            if outcome.broken:
                smtp.pool.release(account, pooled, broken=True)
                pooled = None
            if _record_durably(account, claim, message, outcome, summary,
                               before_waiting=functools.partial(_restamp, account, buckets, token)):
                unstamped = None  # dated before the wait
    finally:
        _restamp(account, buckets, unstamped)
        if pooled is not None:
            smtp.pool.release(account, pooled)
    if summary.sent or summary.failed or summary.deferred:
        reports.ring_reports([account.tenant_id])  # reports go out within moments of the outcome
    if summary.released:
        # Work given back (time budget, pause): hand the account to the back of the queue.
        dispatch.ring(dispatch.due_accounts_of(account.pk))
    logger.info("batch done account=%s tenant=%s claimed=%d sent=%d failed=%d deferred=%d released=%d",
                account.external_id, account.tenant_id, summary.claimed, summary.sent, summary.failed,
                summary.deferred, summary.released)
    return summary


def _prepare(account: SmtpAccount, message: Message) -> Envelope:
    """Fetch the attachments, apply the tenant's large-file policy, build the message."""
    if not message.attachments:
        return build_envelope(message, recipients=message.pending_recipients)
    fetched = fetch_attachments(message.attachments, tenant=account.tenant)
    decision = apply_policy(tenant=account.tenant, attachments=fetched)
    if decision.reject:
        raise LargeFileError(decision.reject, permanent=True)
    for warning in decision.warnings:
        logger.warning("large attachment sent anyway message=%s tenant=%s: %s", message.pk, message.tenant_id,
                       warning)
    return build_envelope(message, recipients=message.pending_recipients, attachments=decision.keep,
                          links=decision.links)


def _take_token(account: SmtpAccount, buckets: list[Bucket], message: Message, claim: lifecycle.Claim,
                rest: list[int], summary: SendSummary, unstamped: Decision | None) -> tuple[str, Decision | None]:
    """"go" with a token taken, "skip" when the message failed, "stop" when the batch waits.

    `unstamped`: the previous message's token, dated at its arrival in the same call.
    """
    try:
        decision = get_limiter().acquire(buckets, member=f"{message.pk}:{message.attempts}", restamp=unstamped)
    except LimiterUnavailable as exc:
        # Without the shared counters no worker may decide alone: wait, drop nothing.
        logger.warning("rate limiter unavailable account=%s error=%s", account.external_id, exc)
        summary.released += lifecycle.release(
            claim=claim, message_ids=rest, next_attempt_at=timezone.now() + timedelta(seconds=LIMITER_PAUSE_SECONDS))
        return "stop", None
    if decision.allowed:
        return "go", decision
    metrics.inc("rate_limited", **_series(account))
    if account.limit_behavior == LimitBehavior.REJECT:
        if lifecycle.record_failure(claim=claim, message=message, permanent=True, error="rate limit exceeded"):
            _count_failure(account, message, permanent=True)
        summary.failed += 1
        return "skip", None
    retry_at = datetime.fromtimestamp(decision.retry_at or time.time() + 1, tz=UTC)
    summary.released += lifecycle.release(claim=claim, message_ids=rest, next_attempt_at=retry_at,
                                          reason="rate_limit")
    return "stop", None


def _restamp(account: SmtpAccount, buckets: list[Bucket], token: Decision | None) -> None:
    """The token's time becomes the message's arrival at the server (see the limiters' restamp).

    Safe to do a few milliseconds late (after the outcome's write): a token dated early
    could only let another worker overshoot once it is a whole window old.
    """
    if token is None:
        return
    try:
        get_limiter().restamp(buckets, token)
    except LimiterUnavailable as exc:  # the token stays dated at its grant: off by one transaction
        logger.warning("rate limiter unavailable account=%s error=%s", account.external_id, exc)


def _handle_unreachable(account: SmtpAccount, claim: lifecycle.Claim, waiting: list[Message], error: str,
                        summary: SendSummary, *, probing: bool) -> None:
    until = _back_off(account, error, probing=probing)
    refreshed = SmtpAccount.objects.only("unreachable_since").get(pk=account.pk)
    since = refreshed.unreachable_since or timezone.now()
    failed = lifecycle.fail_unreachable_too_long(claim=claim, messages=waiting, since=since)
    metrics.inc("errors", len(failed), **_series(account))
    summary.failed += len(failed)
    summary.released += lifecycle.release(claim=claim, message_ids=[m.pk for m in waiting if m.pk not in failed],
                                          next_attempt_at=until, reason="unreachable", error=error)


def _record_durably(account: SmtpAccount, claim: lifecycle.Claim, message: Message, outcome: smtp.Outcome,
                    summary: SendSummary, *, before_waiting: Callable[[], None]) -> bool:
    """Write the outcome of a transaction that happened, waiting out a database outage.

    The server has the message: if this write were given up, the lease would expire and
    the message would be sent again. The write is conditional on the claim's token, so a
    retry after a commit whose answer was lost changes nothing, and one after a reclaim
    is refused (the reclaim flagged the message as a possible duplicate). Whether it
    waited: `before_waiting` ran first.
    """
    deadline = time.monotonic() + RECORD_RETRY_SECONDS
    pause = 0.2
    waited = False
    while True:
        try:
            _record(account, claim, message, outcome, summary)
            return waited
        except (OperationalError, InterfaceError) as exc:
            if time.monotonic() + pause > deadline:
                raise
            if not waited:
                before_waiting()
                waited = True
            logger.warning("database unavailable while recording message=%s tenant=%s: %s; retrying",
                           message.pk, message.tenant_id, type(exc).__name__)
            connection.close()  # the next attempt opens a fresh connection
            time.sleep(pause)
            pause = min(pause * 2, 2.0)


def _record(account: SmtpAccount, claim: lifecycle.Claim, message: Message, outcome: smtp.Outcome,
            summary: SendSummary) -> None:
    # Counted only when the outcome was written (the lease still ours), after its commit.
    if outcome.kind == "sent":
        if lifecycle.record_sent(claim=claim, message=message, refused=outcome.refused, pending=outcome.pending,
                                 smtp_code=outcome.code or 250):
            if outcome.pending:  # some recipients wait for a retry: the message is deferred
                _count_failure(account, message, permanent=False)
            else:
                metrics.inc("sent", **_series(account))
                metrics.observe("queue_seconds", (timezone.now() - message.created_at).total_seconds())
        summary.sent += 1
    elif outcome.kind == "unknown":
        if message.possible_duplicate:
            if lifecycle.record_failure(claim=claim, message=message, permanent=True, possible_duplicate=True,
                                        error=f"outcome unknown twice: {outcome.error}"):
                _count_failure(account, message, permanent=True)
            summary.failed += 1
        else:
            # Tried once more, flagged: a second copy is possible, a lost message is not.
            if lifecycle.record_failure(claim=claim, message=message, permanent=False, possible_duplicate=True,
                                        error=outcome.error):
                _count_failure(account, message, permanent=False)
            summary.deferred += 1
    else:
        permanent = outcome.kind == "permanent"
        if lifecycle.record_failure(claim=claim, message=message, permanent=permanent, error=outcome.error,
                                    smtp_code=outcome.code, refused=[*message.refused, *outcome.refused]):
            _count_failure(account, message, permanent=permanent)
        if permanent:
            summary.failed += 1
        else:
            summary.deferred += 1
