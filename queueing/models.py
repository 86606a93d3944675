"""Messages and their events.

The event table is the outbox of delivery reports: every state change of a message writes
its event in the same transaction, and an event stays unreported (`reported_at` empty)
until the tenant acknowledged it.
"""

from __future__ import annotations

from datetime import datetime

from django.db import models
from django.db.models import Q

from tenants.models import SmtpAccount, Tenant


class Priority(models.IntegerChoices):
    IMMEDIATE = 0, "immediate"
    HIGH = 1, "high"
    MEDIUM = 2, "medium"
    LOW = 3, "low"


PRIORITY_BY_LABEL = {label: value for value, label in Priority.choices}


class Status(models.TextChoices):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DEFERRED = "deferred"
    ERROR = "error"
    EXPIRED = "expired"
    HELD = "held"
    CANCELLED = "cancelled"


# Waiting: may still be replaced by a new submission with the same id, or cancelled.
WAITING_STATUSES = (Status.QUEUED, Status.DEFERRED, Status.HELD)
# Due candidates for dispatch (with next_attempt_at <= now).
SENDABLE_STATUSES = (Status.QUEUED, Status.DEFERRED)
FINAL_STATUSES = (Status.SENT, Status.ERROR, Status.EXPIRED, Status.CANCELLED)


class ContentType(models.TextChoices):
    PLAIN = "plain"
    HTML = "html"


class Message(models.Model):
    # `id` is the proxy's own number (the API's `pk`); `external_id` is the client's id.
    id = models.BigAutoField(primary_key=True)
    # No index of its own: message_unique_client_id (tenant, external_id) serves every
    # look-up by tenant, and two more indexes would be written at every status change.
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="messages", db_index=False)
    account = models.ForeignKey(
        SmtpAccount, on_delete=models.SET_NULL, null=True, blank=True, related_name="messages"
    )
    external_id = models.CharField(max_length=200)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    priority = models.PositiveSmallIntegerField(choices=Priority.choices, default=Priority.MEDIUM)
    batch_code = models.CharField(max_length=200, blank=True)

    from_addr = models.CharField(max_length=500)
    to = models.JSONField(default=list)
    cc = models.JSONField(default=list, blank=True)
    bcc = models.JSONField(default=list, blank=True)
    reply_to = models.CharField(max_length=500, blank=True)
    return_path = models.CharField(max_length=500, blank=True)
    subject = models.TextField()
    body = models.TextField(blank=True)
    content_type = models.CharField(max_length=5, choices=ContentType.choices, default=ContentType.PLAIN)
    body_text = models.TextField(blank=True)
    body_html = models.TextField(blank=True)
    headers = models.JSONField(default=dict, blank=True)
    attachments = models.JSONField(default=list, blank=True)
    # A message given whole (RFC 5322, base64): sent as given, with the proxy's headers set.
    raw_eml = models.TextField(blank=True, default="")
    message_id = models.CharField(max_length=500)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    deferred_until = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField()
    attempts = models.PositiveIntegerField(default=0)
    sent_at = models.DateTimeField(null=True, blank=True)
    error_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    smtp_code = models.PositiveSmallIntegerField(null=True, blank=True)
    # A worker's claim: the message is the claim's (`lease_token`) until this database time.
    lease_until = models.DateTimeField(null=True, blank=True)
    lease_token = models.UUIDField(null=True, blank=True)
    # Recipients still to deliver after some were refused with 4xx (None: all of them).
    pending_recipients = models.JSONField(null=True, blank=True)
    # Recipients refused for good (5xx), with their codes, for the report.
    refused = models.JSONField(default=list, blank=True)
    # The server may have accepted a copy already (connection lost after the final dot,
    # or a worker died holding the lease): the report says so.
    possible_duplicate = models.BooleanField(default=False)
    deferred_reason = models.CharField(max_length=20, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "external_id"], name="message_unique_client_id"),
            models.CheckConstraint(condition=Q(priority__lte=3), name="message_priority_range"),
        ]
        indexes = [
            # Due messages of one account, in send order (priority, then age).
            models.Index(
                fields=["account", "priority", "id"],
                condition=Q(status__in=["queued", "deferred"]),
                name="message_due_by_account",
            ),
            # Which accounts have due work: a range scan on time over waiting rows only.
            models.Index(
                fields=["next_attempt_at"],
                condition=Q(status__in=["queued", "deferred"]),
                name="message_due_by_time",
            ),
            # Waiting messages with an expiry: beat's expiry pass reads only these, every second.
            models.Index(
                fields=["expires_at"],
                condition=Q(status__in=["queued", "deferred", "held"], expires_at__isnull=False),
                name="message_expiring",
            ),
            # Expired leases of crashed workers.
            models.Index(fields=["lease_until"], condition=Q(status="sending"), name="message_leased"),
            models.Index(fields=["tenant", "status", "id"], name="message_tenant_status"),
            models.Index(fields=["tenant", "batch_code"], name="message_tenant_batch"),
            # Recent sends per account: refills the rate-limit buckets after Redis lost them.
            models.Index(fields=["account", "sent_at"], condition=Q(sent_at__isnull=False),
                         name="message_sent_by_account"),
            models.Index(fields=["tenant", "sent_at"], condition=Q(sent_at__isnull=False),
                         name="message_sent_by_tenant"),
        ]

    def __str__(self) -> str:
        return f"{self.tenant_id}/{self.external_id} ({self.status})"

    @property
    def is_waiting(self) -> bool:
        return self.status in WAITING_STATUSES

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    def is_due(self, now: datetime) -> bool:
        return self.status in SENDABLE_STATUSES and self.next_attempt_at <= now


class EventType(models.TextChoices):
    SENT = "sent"
    ERROR = "error"
    DEFERRED = "deferred"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    BOUNCE = "bounce"
    PEC_ACCEPTANCE = "pec_acceptance"
    PEC_RELAY = "pec_relay"
    PEC_DELIVERY = "pec_delivery"
    PEC_ERROR = "pec_error"
    PEC_TIMEOUT = "pec_timeout"


class MessageEvent(models.Model):
    """One thing that happened to a message; the row is also the report waiting to go out.

    `message` is empty for a submission rejected at enqueue (no message was stored); the
    client's id is kept in `external_id` so the report can still name it.
    """

    id = models.BigAutoField(primary_key=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="events")
    message = models.ForeignKey(Message, on_delete=models.CASCADE, null=True, blank=True, related_name="events")
    external_id = models.CharField(max_length=200)
    event_type = models.CharField(max_length=20, choices=EventType.choices)
    occurred_at = models.DateTimeField()
    details = models.JSONField(default=dict, blank=True)
    reported_at = models.DateTimeField(null=True, blank=True)
    # Set when the tenant could not be reached for GMP_REPORT_GIVE_UP_SECONDS: kept and
    # listable, sent again on run-now, skipped by the regular report cycle until then.
    undelivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["tenant", "id"], condition=Q(reported_at__isnull=True, undelivered_at__isnull=True),
                         name="event_outbox"),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.tenant_id}/{self.external_id}"


class RateLimitBucket(models.Model):
    """One rate-limit window of the SQL limiter (embedded instance); its row is the lock."""

    key = models.CharField(primary_key=True, max_length=120)

    def __str__(self) -> str:
        return self.key


class RateLimitHit(models.Model):
    """A token spent from a bucket of the SQL limiter; it comes back `window` seconds after `at`."""

    bucket = models.ForeignKey(RateLimitBucket, on_delete=models.CASCADE, related_name="hits")
    at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["bucket", "at"], name="ratelimit_hit_window")]

    def __str__(self) -> str:
        return f"{self.bucket_id}@{self.at.isoformat()}"


class SuppressionSource(models.TextChoices):
    BOUNCE = "bounce"
    API = "api"


class Suppression(models.Model):
    """An address the tenant's mail must not go to (a hard bounce, or added through the API).

    Here rather than in `bounces` because enqueue, in this app, must refuse these
    recipients, and an app does not import from the apps that come after it.
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="suppressions")
    address = models.CharField(max_length=320)  # lower-cased addr-spec
    reason = models.CharField(max_length=500)
    source = models.CharField(max_length=10, choices=SuppressionSource.choices, default=SuppressionSource.API)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["tenant_id", "address"]
        constraints = [models.UniqueConstraint(fields=["tenant", "address"], name="suppression_unique_address")]

    def __str__(self) -> str:
        return f"{self.tenant_id}/{self.address}"
