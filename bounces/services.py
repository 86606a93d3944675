"""Bounces: correlate a DSN with the message that caused it, report it, suppress hard ones."""

from __future__ import annotations

import hashlib
import logging
from datetime import timedelta
from functools import partial

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from bounces.dsn import DsnReport, parse_dsn
from bounces.imap import MailboxSettings
from bounces.models import Bounce, BounceKind
from bounces.polling import poll_mailbox
from mailproxy import metrics
from queueing.models import EventType, Message, MessageEvent, Suppression, SuppressionSource
from tenants import crypto
from tenants.models import SmtpAccount, Tenant

logger = logging.getLogger(__name__)


def correlate(report: DsnReport, *, tenant: Tenant | None) -> Message | None:
    """The message a bounce is about: our own headers first, then its Message-ID, then VERP."""
    candidates = Message.objects.all() if tenant is None else Message.objects.filter(tenant=tenant)
    for token in (report.proxy_id, report.verp_token):
        if token and token.isdigit():
            found = candidates.filter(pk=int(token)).first()
            if found is not None:
                return found
    if report.original_message_id:
        return candidates.filter(message_id=report.original_message_id).order_by("-id").first()
    return None


def record_bounce(raw: bytes, *, tenant: Tenant | None = None) -> int:
    """Handle one message of a bounce mailbox; how many recipients were recorded.

    Safe to run twice on the same message: a bounce is one row per original message,
    recipient and status.
    """
    report = parse_dsn(raw)
    if not report.is_bounce:
        return 0
    message = correlate(report, tenant=tenant)
    if message is None:
        logger.info("bounce for no known message tenant=%s message_id=%s", tenant.pk if tenant else "-",
                    report.original_message_id)
        return 0
    now = timezone.now()
    recorded = 0
    account_id = (SmtpAccount.objects.filter(pk=message.account_id).values_list("external_id", flat=True).first()
                  if message.account_id else None)
    for rcpt in report.recipients:
        if rcpt.kind is None:
            continue
        key = hashlib.sha256(f"{message.pk}|{rcpt.recipient}|{rcpt.status or rcpt.smtp_code}".encode()).hexdigest()
        try:
            with transaction.atomic():
                Bounce.objects.create(tenant_id=message.tenant_id, message=message, recipient=rcpt.recipient,
                                      status=rcpt.status or "", smtp_code=rcpt.smtp_code, kind=rcpt.kind,
                                      diagnostic=rcpt.diagnostic, dedupe_key=key, raw=raw)
                if rcpt.kind == BounceKind.DELAYED:
                    continue  # recorded, not a bounce (SPEC §12.2)
                MessageEvent.objects.create(
                    tenant_id=message.tenant_id, message=message, external_id=message.external_id,
                    event_type=EventType.BOUNCE, occurred_at=now, details={
                        "bounce_ts": now.timestamp(), "bounce_type": rcpt.kind,
                        "bounce_code": rcpt.status or (str(rcpt.smtp_code) if rcpt.smtp_code else None),
                        "bounce_reason": rcpt.diagnostic, "recipient": rcpt.recipient,
                    })
                if rcpt.kind == BounceKind.HARD:
                    days = settings.GMP_SUPPRESSION_DAYS
                    Suppression.objects.update_or_create(
                        tenant_id=message.tenant_id, address=rcpt.recipient,
                        defaults={"reason": f"hard bounce {rcpt.status or rcpt.smtp_code or ''}: "
                                            f"{rcpt.diagnostic}"[:500].strip(),
                                  "source": SuppressionSource.BOUNCE,
                                  "expires_at": now + timedelta(days=days) if days else None})
        except IntegrityError:
            continue  # already recorded (a rescan, or another poller got there first)
        recorded += 1
        metrics.inc("bounces", tenant_id=message.tenant_id, account_id=account_id or "", type=rcpt.kind)
        logger.info("bounce %s message=%s tenant=%s recipient=%s status=%s", rcpt.kind, message.pk,
                    message.tenant_id, rcpt.recipient, rcpt.status)
    return recorded


def tenant_mailbox(tenant: Tenant) -> MailboxSettings | None:
    config = tenant.bounce or {}
    if not config.get("enabled") or not config.get("imap_host"):
        return None
    return MailboxSettings(
        host=config["imap_host"], port=int(config.get("imap_port") or 993), user=config.get("imap_user", ""),
        password=crypto.decrypt(tenant.bounce_imap_password_encrypted), folder=config.get("imap_folder") or "INBOX",
        security=config.get("security") or "ssl", processed_folder=config.get("processed_folder") or "",
    )


def poll_bounces(*, force: bool = False) -> int:
    """Poll every due bounce mailbox: each tenant's own, and the instance-wide one."""
    handled = 0
    for tenant in Tenant.objects.exclude(bounce={}):
        mailbox = tenant_mailbox(tenant)
        if mailbox is not None:
            handled += poll_mailbox(key=f"bounce:tenant:{tenant.pk}", settings=mailbox,
                                    interval=int(tenant.bounce.get("poll_interval") or 60),
                                    handle=partial(record_bounce, tenant=tenant), force=force)
    if settings.GMP_BOUNCE_IMAP_HOST:
        shared = MailboxSettings(
            host=settings.GMP_BOUNCE_IMAP_HOST, port=settings.GMP_BOUNCE_IMAP_PORT, user=settings.GMP_BOUNCE_IMAP_USER,
            password=settings.GMP_BOUNCE_IMAP_PASSWORD, folder=settings.GMP_BOUNCE_IMAP_FOLDER,
            security=settings.GMP_BOUNCE_IMAP_SECURITY, processed_folder=settings.GMP_BOUNCE_PROCESSED_FOLDER,
        )
        handled += poll_mailbox(key="bounce:instance", settings=shared, interval=settings.GMP_BOUNCE_POLL_INTERVAL,
                                handle=record_bounce, force=force)
    return handled
