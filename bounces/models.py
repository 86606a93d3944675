"""Bounces read from IMAP mailboxes, and the position of every mailbox poller."""

from __future__ import annotations

from django.db import models

from queueing.models import Message
from tenants.models import Tenant


class MailboxCursor(models.Model):
    """Where a poller stands in one mailbox (bounce or PEC): UIDVALIDITY and last UID done.

    Advanced only after the events of the messages read are committed, so a crash reads
    them again (and the de-duplication keys make that harmless) instead of skipping them.
    """

    key = models.CharField(max_length=200, unique=True)  # "bounce:tenant:<id>", "bounce:instance", "pec:account:<pk>"
    uidvalidity = models.BigIntegerField(null=True, blank=True)
    last_uid = models.BigIntegerField(default=0)
    last_polled_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)  # one poller per mailbox at a time

    def __str__(self) -> str:
        return f"{self.key} @ {self.uidvalidity}/{self.last_uid}"


class BounceKind(models.TextChoices):
    HARD = "hard"
    SOFT = "soft"
    DELAYED = "delayed"


class Bounce(models.Model):
    """One bounced (or delayed) recipient of one message, with the raw report kept."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="bounces")
    message = models.ForeignKey(Message, on_delete=models.SET_NULL, null=True, blank=True, related_name="bounces")
    recipient = models.CharField(max_length=320)
    status = models.CharField(max_length=20, blank=True)
    smtp_code = models.PositiveSmallIntegerField(null=True, blank=True)
    kind = models.CharField(max_length=10, choices=BounceKind.choices)
    diagnostic = models.TextField(blank=True)
    # original message + recipient + status: the same bounce read twice (a rescan, two pollers) is one row.
    dedupe_key = models.CharField(max_length=64, unique=True)
    raw = models.BinaryField()
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.kind} {self.recipient} ({self.status or self.smtp_code})"
