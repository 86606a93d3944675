"""Tenants, their SMTP accounts and API keys.

Secret columns (`*_encrypted`) hold values sealed by `tenants.crypto`; the clear text never
sits on a model instance, so no repr, serializer or admin page can show it.
"""

from __future__ import annotations

from datetime import datetime

from django.db import models
from django.db.models import Q


class AuthMethod(models.TextChoices):
    NONE = "none", "none"
    BEARER = "bearer", "bearer"
    BASIC = "basic", "basic"


class Security(models.TextChoices):
    STARTTLS = "starttls", "STARTTLS"
    SSL = "ssl", "implicit TLS"
    NONE = "none", "none"


class LimitBehavior(models.TextChoices):
    DEFER = "defer", "defer"
    REJECT = "reject", "reject"


class Tenant(models.Model):
    # The client-facing id is the primary key: it is what every API path and report names.
    id = models.CharField(primary_key=True, max_length=64)
    name = models.CharField(max_length=200, blank=True)
    active = models.BooleanField(default=True)
    client_base_url = models.CharField(max_length=500, blank=True)
    client_sync_path = models.CharField(max_length=200, blank=True, default="/mail-proxy/sync")
    client_attachment_path = models.CharField(max_length=200, blank=True, default="/mail-proxy/attachments")
    client_auth_method = models.CharField(max_length=10, choices=AuthMethod.choices, default=AuthMethod.NONE)
    client_auth_user = models.CharField(max_length=200, blank=True)
    # bearer token or basic password
    client_auth_secret_encrypted = models.TextField(blank=True)
    signing_secret_encrypted = models.TextField(blank=True)
    rate_limits = models.JSONField(default=dict, blank=True)
    large_file_config = models.JSONField(default=dict, blank=True)
    retention_seconds = models.PositiveIntegerField(null=True, blank=True)
    # Bounce mailbox settings without the password, which is sealed apart.
    bounce = models.JSONField(default=dict, blank=True)
    bounce_imap_password_encrypted = models.TextField(blank=True)
    suspended = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # Delivery-report (sync) state, shared by every worker through this row.
    sync_last_at = models.DateTimeField(null=True, blank=True)  # last acknowledged call
    sync_last_call_at = models.DateTimeField(null=True, blank=True)
    sync_dnd_until = models.DateTimeField(null=True, blank=True)  # the tenant's next_sync_after
    sync_retry_at = models.DateTimeField(null=True, blank=True)  # backoff after a failed call
    sync_backoff_seconds = models.PositiveIntegerField(default=0)
    sync_failing_since = models.DateTimeField(null=True, blank=True)
    sync_last_error = models.TextField(blank=True)
    # The last answer said `queued > 0`: the tenant's next submission calls it again at once.
    sync_expect_more = models.BooleanField(default=False)
    sync_ring_until = models.DateTimeField(null=True, blank=True)
    sync_lease_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.id


class SuspendedBatch(models.Model):
    """A batch (campaign) whose messages are held while the rest of the tenant sends."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="suspended_batches")
    batch_code = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "batch_code"], name="suspended_batch_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.tenant_id}/{self.batch_code}"


class SmtpAccount(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="accounts")
    # The client's id for the account, unique within its tenant.
    external_id = models.CharField(max_length=100)
    host = models.CharField(max_length=255)
    port = models.PositiveIntegerField(default=587)
    user = models.CharField(max_length=255, blank=True)
    password_encrypted = models.TextField(blank=True)
    security = models.CharField(max_length=10, choices=Security.choices, default=Security.STARTTLS)
    verify_tls = models.BooleanField(default=True)
    timeout = models.PositiveIntegerField(default=30)
    max_connections = models.PositiveIntegerField(default=5)
    connection_ttl = models.PositiveIntegerField(default=300)
    batch_size = models.PositiveIntegerField(default=50)
    limit_per_minute = models.PositiveIntegerField(null=True, blank=True)
    limit_per_hour = models.PositiveIntegerField(null=True, blank=True)
    limit_per_day = models.PositiveIntegerField(null=True, blank=True)
    limit_behavior = models.CharField(max_length=10, choices=LimitBehavior.choices, default=LimitBehavior.DEFER)
    is_default = models.BooleanField(default=False)
    is_pec = models.BooleanField(default=False)
    imap_host = models.CharField(max_length=255, blank=True)
    imap_port = models.PositiveIntegerField(default=993)
    imap_user = models.CharField(max_length=255, blank=True)
    imap_password_encrypted = models.TextField(blank=True)
    imap_folder = models.CharField(max_length=200, default="INBOX")
    imap_security = models.CharField(max_length=10, choices=Security.choices, default=Security.SSL)
    imap_poll_interval = models.PositiveIntegerField(default=60)
    # Set when the server refuses our credentials; cleared when they are changed.
    account_error = models.TextField(blank=True)
    account_error_at = models.DateTimeField(null=True, blank=True)
    # Delivery state shared by every worker (the database is the only thing they share
    # for sure): no new send task while `ring_until` is ahead (one is queued already), no
    # connection attempt while `paused_until` is ahead (server unreachable or refusing our
    # credentials; `backoff_seconds` is the current step of that backoff).
    ring_until = models.DateTimeField(null=True, blank=True)
    paused_until = models.DateTimeField(null=True, blank=True)
    unreachable_since = models.DateTimeField(null=True, blank=True)
    backoff_seconds = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["tenant_id", "external_id"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "external_id"], name="smtp_account_unique_id"),
            models.UniqueConstraint(
                fields=["tenant"], condition=Q(is_default=True), name="smtp_account_one_default"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.tenant_id}/{self.external_id}"


class ApiKey(models.Model):
    """A tenant's API key (or an instance-wide admin key when `tenant` is empty).

    Only the SHA-256 of the key is stored; `prefix` is the public part shown in listings
    and used to revoke it.
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys", null=True, blank=True)
    prefix = models.CharField(max_length=16, unique=True)
    key_hash = models.CharField(max_length=64, unique=True)
    label = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.tenant_id or 'admin'})"

    @property
    def is_admin(self) -> bool:
        return self.tenant_id is None

    def is_usable(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)
