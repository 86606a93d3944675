"""PEC: receipts read from a PEC account's mailbox become events of the message they certify."""

from __future__ import annotations

import hashlib
import logging
from datetime import timedelta
from functools import partial

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from bounces.imap import MailboxSettings
from bounces.polling import poll_mailbox
from delivery.mime import addr_spec
from pec.models import PecReceiptRecord
from pec.receipts import PecReceipt, parse_receipt
from queueing.models import EventType, Message, MessageEvent, Status
from tenants import crypto
from tenants.models import SmtpAccount

logger = logging.getLogger(__name__)


def correlate(receipt: PecReceipt, *, account: SmtpAccount) -> Message | None:
    """The message a receipt certifies: its Message-ID (daticert msgid), then our own header."""
    sent = Message.objects.filter(tenant_id=account.tenant_id)
    if receipt.msgid:
        found = sent.filter(message_id=receipt.msgid).order_by("-id").first()
        if found is not None:
            return found
    if receipt.proxy_id and receipt.proxy_id.isdigit():
        return sent.filter(pk=int(receipt.proxy_id)).first()
    return None


def record_receipt(raw: bytes, *, account: SmtpAccount) -> int:
    """Handle one message of a PEC mailbox; how many events it produced (0 for envelopes and duplicates)."""
    receipt = parse_receipt(raw)
    if receipt is None or receipt.is_transport or receipt.proxy_event is None:
        return 0
    message = correlate(receipt, account=account)
    if message is None:
        logger.info("PEC receipt for no known message account=%s msgid=%s", account.pk, receipt.msgid)
        return 0
    now = timezone.now()
    # A delivery receipt is per recipient; acceptance and relay concern the whole message.
    recipients = list(receipt.recipients) if receipt.proxy_event in ("pec_delivery", "pec_error") else []
    created = 0
    for recipient in recipients or [""]:
        key = hashlib.sha256(
            f"{message.pk}|{receipt.receipt_type}|{recipient}|{receipt.identificativo or ''}".encode()).hexdigest()
        details = {"pec_event": receipt.receipt_type, "pec_ts": receipt.timestamp.timestamp() if receipt.timestamp
                   else None, "pec_details": receipt.error or "", "recipient": recipient or None}
        try:
            with transaction.atomic():
                PecReceiptRecord.objects.create(
                    tenant_id=message.tenant_id, message=message, account=account,
                    receipt_type=receipt.receipt_type or "", event_type=receipt.proxy_event, recipient=recipient,
                    pec_ts=receipt.timestamp, error=receipt.error or "", identificativo=receipt.identificativo or "",
                    dedupe_key=key, raw=raw)
                MessageEvent.objects.create(tenant_id=message.tenant_id, message=message,
                                            external_id=message.external_id, event_type=receipt.proxy_event,
                                            occurred_at=now, details=details)
        except IntegrityError:
            continue  # read before (a rescan, or another poller)
        created += 1
    return created


def account_mailbox(account: SmtpAccount) -> MailboxSettings:
    """The PEC mailbox of an account; IMAP user and password default to the SMTP ones."""
    password = account.imap_password_encrypted or account.password_encrypted
    return MailboxSettings(host=account.imap_host or account.host, port=account.imap_port,
                           user=account.imap_user or account.user, password=crypto.decrypt(password),
                           folder=account.imap_folder or "INBOX", security=account.imap_security,
                           verify_tls=account.verify_tls)


def poll_receipts(*, force: bool = False) -> int:
    handled = 0
    for account in SmtpAccount.objects.filter(is_pec=True).select_related("tenant"):
        handled += poll_mailbox(key=f"pec:account:{account.pk}", settings=account_mailbox(account),
                                interval=account.imap_poll_interval,
                                handle=partial(record_receipt, account=account), force=force)
    return handled


def check_timeouts() -> int:
    """`pec_timeout` for PEC messages without acceptance, or without delivery for a recipient, in time."""
    now = timezone.now()
    created = 0
    pec_sent = Message.objects.filter(account__is_pec=True, status=Status.SENT, sent_at__isnull=False)

    def has(event: str, **details: str) -> Exists:
        return Exists(MessageEvent.objects.filter(message=OuterRef("pk"), event_type=event,
                                                  **{f"details__{k}": v for k, v in details.items()}))

    late = (pec_sent.filter(sent_at__lte=now - timedelta(seconds=settings.GMP_PEC_ACCEPTANCE_TIMEOUT))
            .exclude(has(EventType.PEC_ACCEPTANCE)).exclude(has(EventType.PEC_TIMEOUT, pec_event="accettazione")))
    for message in late[:500]:
        MessageEvent.objects.create(tenant_id=message.tenant_id, message=message, external_id=message.external_id,
                                    event_type=EventType.PEC_TIMEOUT, occurred_at=now, details={
                                        "pec_event": "accettazione", "pec_ts": None, "recipient": None,
                                        "pec_details": "no acceptance receipt in time"})
        created += 1
    overdue = list(pec_sent.filter(sent_at__lte=now - timedelta(seconds=settings.GMP_PEC_DELIVERY_TIMEOUT))
                   .exclude(has(EventType.PEC_TIMEOUT, pec_event="avvenuta-consegna"))[:500])
    answered = set(MessageEvent.objects.filter(
        message__in=overdue, event_type__in=[EventType.PEC_DELIVERY, EventType.PEC_ERROR],
    ).values_list("message_id", "details__recipient"))
    for message in overdue:
        for recipient in dict.fromkeys(addr_spec(a).lower() for a in (*message.to, *message.cc, *message.bcc)):
            if (message.pk, recipient) not in answered:
                MessageEvent.objects.create(
                    tenant_id=message.tenant_id, message=message, external_id=message.external_id,
                    event_type=EventType.PEC_TIMEOUT, occurred_at=now, details={
                        "pec_event": "avvenuta-consegna", "pec_ts": None, "recipient": recipient,
                        "pec_details": "no delivery receipt in time"})
                created += 1
    return created
