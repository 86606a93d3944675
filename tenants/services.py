"""Writes on tenants, SMTP accounts and API keys."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from tenants import crypto
from tenants.auth import hash_key
from tenants.models import ApiKey, AuthMethod, Security, SmtpAccount, Tenant

logger = logging.getLogger(__name__)

KEY_PREFIX = "mpk"


@dataclass(frozen=True)
class IssuedKey:
    """A freshly made key: `raw` is shown to the caller once and never stored."""

    key: ApiKey
    raw: str


def create_api_key(*, tenant: Tenant | None, label: str = "", expires_at: datetime | None = None) -> IssuedKey:
    """A new random key (256 bits) for a tenant, or an admin key when tenant is None."""
    for _ in range(5):
        prefix = secrets.token_hex(5)
        raw = f"{KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
        try:
            with transaction.atomic():
                key = ApiKey.objects.create(
                    tenant=tenant, prefix=prefix, key_hash=hash_key(raw), label=label, expires_at=expires_at
                )
        except IntegrityError:  # a prefix collision: 40 random bits, so practically never
            continue
        logger.info("api key created prefix=%s tenant=%s", prefix, tenant.id if tenant else "-")
        return IssuedKey(key=key, raw=raw)
    raise RuntimeError("could not generate a unique API key prefix")


def revoke_api_key(*, key: ApiKey) -> ApiKey:
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
        logger.info("api key revoked prefix=%s tenant=%s", key.prefix, key.tenant_id or "-")
    return key


def rotate_api_key(*, key: ApiKey) -> IssuedKey:
    """Replace a key by a new one with the same label and expiry; the old one stops at once."""
    with transaction.atomic():
        revoke_api_key(key=key)
        return create_api_key(tenant=key.tenant, label=key.label, expires_at=key.expires_at)


def _apply_tenant_fields(tenant: Tenant, data: dict[str, Any]) -> None:
    for field in ("name", "active", "client_base_url", "client_sync_path", "client_attachment_path",
                  "rate_limits", "large_file_config", "retention_seconds"):
        if field in data:
            setattr(tenant, field, data[field])
    if "client_auth" in data:
        auth = data["client_auth"] or {"method": AuthMethod.NONE}
        tenant.client_auth_method = auth["method"]
        tenant.client_auth_user = auth.get("user", "") if auth["method"] == AuthMethod.BASIC else ""
        secret = {AuthMethod.BEARER: auth.get("token", ""), AuthMethod.BASIC: auth.get("password", "")}.get(
            auth["method"], ""
        )
        tenant.client_auth_secret_encrypted = crypto.encrypt(secret)
    if "signing_secret" in data:
        tenant.signing_secret_encrypted = crypto.encrypt(data["signing_secret"])
    if "bounce" in data:
        bounce = dict(data["bounce"])
        if "imap_password" in bounce:
            tenant.bounce_imap_password_encrypted = crypto.encrypt(str(bounce.pop("imap_password") or ""))
        tenant.bounce = {**tenant.bounce, **bounce}


@dataclass(frozen=True)
class TenantSaved:
    tenant: Tenant
    created: bool
    first_key: IssuedKey | None


def save_tenant(*, data: dict[str, Any]) -> TenantSaved:
    """Create a tenant (with its first API key) or update the one with this id."""
    with transaction.atomic():
        tenant = Tenant.objects.select_for_update().filter(pk=data["id"]).first()
        created = tenant is None
        if tenant is None:
            tenant = Tenant(id=data["id"])
        _apply_tenant_fields(tenant, data)
        tenant.save()
        first_key = create_api_key(tenant=tenant, label="first key") if created else None
    logger.info("tenant %s tenant=%s", "created" if created else "updated", tenant.id)
    return TenantSaved(tenant=tenant, created=created, first_key=first_key)


def update_tenant(*, tenant: Tenant, data: dict[str, Any]) -> Tenant:
    """Partial update: fields absent from `data` keep their value."""
    with transaction.atomic():
        _apply_tenant_fields(tenant, data)
        tenant.save()
    logger.info("tenant updated tenant=%s", tenant.id)
    return tenant


def delete_tenant(*, tenant: Tenant) -> None:
    tenant_id = tenant.id
    tenant.delete()
    logger.info("tenant deleted tenant=%s", tenant_id)


ACCOUNT_PLAIN_FIELDS = (
    "host", "port", "user", "security", "verify_tls", "timeout", "max_connections", "connection_ttl",
    "batch_size", "limit_per_minute", "limit_per_hour", "limit_per_day", "limit_behavior", "is_default",
    "is_pec", "imap_host", "imap_port", "imap_user", "imap_folder", "imap_security", "imap_poll_interval",
)


@dataclass(frozen=True)
class AccountSaved:
    account: SmtpAccount
    created: bool


def save_account(*, tenant: Tenant, data: dict[str, Any]) -> AccountSaved:
    """Create or update an SMTP account; fields left out of an update keep their value."""
    with transaction.atomic():
        account = (
            SmtpAccount.objects.select_for_update().filter(tenant=tenant, external_id=data["id"]).first()
        )
        created = account is None
        if account is None:
            account = SmtpAccount(tenant=tenant, external_id=data["id"])
            if "security" not in data:
                account.security = Security.SSL if data.get("port") == 465 else Security.STARTTLS
        credentials_changed = False
        for field in ACCOUNT_PLAIN_FIELDS:
            if field in data:
                credentials_changed |= field in ("host", "port", "user", "security") and getattr(
                    account, field
                ) != data[field]
                setattr(account, field, data[field])
        if "password" in data:
            account.password_encrypted = crypto.encrypt(data["password"])
            credentials_changed = True
        if "imap_password" in data:
            account.imap_password_encrypted = crypto.encrypt(data["imap_password"])
        if credentials_changed:
            # New credentials deserve a new try: the failing mark was about the old ones.
            account.account_error = ""
            account.account_error_at = None
            account.paused_until = None
            account.backoff_seconds = 0
        if account.is_default:
            SmtpAccount.objects.filter(tenant=tenant, is_default=True).exclude(pk=account.pk).update(
                is_default=False
            )
        account.save()
    logger.info("smtp account %s tenant=%s account=%s", "created" if created else "updated", tenant.id,
                account.external_id)
    return AccountSaved(account=account, created=created)
