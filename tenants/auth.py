"""`X-API-Token` authentication: the instance admin token, admin keys and tenant keys."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request

from tenants.exceptions import DomainError, NotFoundError
from tenants.models import ApiKey, Tenant

HEADER = "HTTP_X_API_TOKEN"
# One message for every refusal, so a caller cannot tell a wrong key from an expired one.
INVALID_TOKEN = "missing or invalid API token"  # noqa: S105 (a message, not a secret)
DEFAULT_TENANT_ID = "default"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the admin (tenant is None) or one tenant."""

    tenant: Tenant | None
    key: ApiKey | None = None
    # DRF and Django look for these on request.user.
    is_authenticated: bool = True
    is_active: bool = True

    @property
    def is_admin(self) -> bool:
        return self.tenant is None

    def __repr__(self) -> str:
        return f"<Principal {'admin' if self.is_admin else self.tenant}>"


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def authenticate_token(raw: str) -> Principal | None:
    """The principal for a raw token, or None when it is unknown, expired or revoked."""
    digest = hash_key(raw)
    admin_token = settings.GMP_API_TOKEN
    if admin_token and hmac.compare_digest(digest, hash_key(admin_token)):
        return Principal(tenant=None)
    key = ApiKey.objects.select_related("tenant").filter(key_hash=digest).first()
    now = timezone.now()
    if key is None or not hmac.compare_digest(key.key_hash, digest) or not key.is_usable(now):
        return None
    _touch(key, now)
    return Principal(tenant=key.tenant, key=key)


def _touch(key: ApiKey, now: datetime) -> None:
    # Writing on every request would double the cost of a send; a minute's precision
    # is what "last used" needs.
    threshold = now - timedelta(seconds=settings.GMP_API_KEY_TOUCH_SECONDS)
    if key.last_used_at is None or key.last_used_at < threshold:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now


class ApiTokenAuthentication(BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[Principal, ApiKey | None]:
        raw = request.META.get(HEADER, "")
        principal = authenticate_token(raw) if raw else None
        if principal is None:
            raise AuthenticationFailed(INVALID_TOKEN)
        return principal, principal.key

    def authenticate_header(self, request: Request) -> str:
        # Makes DRF answer 401 (not 403) to unauthenticated calls.
        return 'ApiKey header="X-API-Token"'


def principal_of(request: Request) -> Principal:
    """The caller of an authenticated request."""
    principal = request.user
    if not isinstance(principal, Principal):  # only when a view forgot its permission classes
        raise AuthenticationFailed(INVALID_TOKEN)
    return principal


def resolve_tenant(principal: Principal, tenant_id: str | None, *, create_default: bool = False) -> Tenant:
    """The tenant a request acts on.

    A tenant key acts on its own tenant; naming another one is answered as not found.
    The admin names the tenant, or gets the `default` tenant of single-tenant installs
    (created on first write when `create_default`).
    """
    if principal.tenant is not None:
        if tenant_id not in (None, "", principal.tenant.id):
            raise NotFoundError()
        return principal.tenant
    if tenant_id:
        tenant = Tenant.objects.filter(pk=tenant_id).first()
        if tenant is None:
            raise NotFoundError(f"tenant {tenant_id!r} not found")
        return tenant
    if create_default:
        tenant, _ = Tenant.objects.get_or_create(pk=DEFAULT_TENANT_ID, defaults={"name": "Default"})
        return tenant
    tenant = Tenant.objects.filter(pk=DEFAULT_TENANT_ID).first()
    if tenant is None:
        raise DomainError("tenant_id is required: no default tenant exists yet", details={"tenant_id": "required"})
    return tenant
