"""Input and output shapes of tenants, accounts and API keys.

Input serializers only validate; the services write. Output serializers never carry a
secret: where one is set they say so (`configured`, `password_set`).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from rest_framework import serializers

from mailproxy import safehttp
from tenants.large_files import validate_large_file_config
from tenants.models import ApiKey, AuthMethod, LimitBehavior, Security, SmtpAccount, Tenant

UNSTORABLE = re.compile("[\ud800-\udfff]")
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$"
ID_HELP = "letters, digits and . _ @ -, starting with a letter or digit"

RATE_LIMIT_KEYS = {"per_minute": "per_minute", "per_hour": "per_hour", "per_day": "per_day",
                   # the seed product's names
                   "minute": "per_minute", "hourly": "per_hour", "daily": "per_day"}


def _check_http_url(value: str) -> str:
    if value == "":
        return value
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise serializers.ValidationError("must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise serializers.ValidationError("must not carry credentials; use client_auth")
    try:
        # Checked again, after resolving the name, each time a report goes out.
        safehttp.check_literal(value)
    except safehttp.OutboundRefused as exc:
        raise serializers.ValidationError(str(exc)) from None
    return value.rstrip("/")


def _check_path(value: str) -> str:
    if value and not value.startswith("/"):
        raise serializers.ValidationError("must start with '/'")
    return value


class ClientAuthSerializer(serializers.Serializer):
    method = serializers.ChoiceField(choices=AuthMethod.choices)
    token = serializers.CharField(required=False, allow_blank=False, write_only=True)
    user = serializers.CharField(required=False, allow_blank=False)
    password = serializers.CharField(required=False, allow_blank=False, write_only=True)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        method = attrs["method"]
        if method == AuthMethod.BEARER and not attrs.get("token"):
            raise serializers.ValidationError({"token": "required for bearer auth"})
        if method == AuthMethod.BASIC and not (attrs.get("user") and attrs.get("password")):
            raise serializers.ValidationError({"user": "user and password are required for basic auth"})
        return attrs


MAX_INT = 2_147_483_647  # the database's integer columns


def _unstorable(value: Any) -> str | None:
    """Where a JSON value holds text no database takes (NUL, a lone surrogate), if anywhere."""
    if isinstance(value, str):
        return "NUL" if "\x00" in value else ("a lone surrogate" if UNSTORABLE.search(value) else None)
    if isinstance(value, dict):
        for key, item in value.items():
            found = _unstorable(key) or _unstorable(item)
            if found:
                return found
    if isinstance(value, list):
        for item in value:
            found = _unstorable(item)
            if found:
                return found
    return None


class TenantInSerializer(serializers.Serializer):
    id = serializers.RegexField(ID_PATTERN, max_length=64, error_messages={"invalid": f"use {ID_HELP}"})
    name = serializers.CharField(max_length=200, required=False, allow_blank=True)
    active = serializers.BooleanField(required=False)
    client_base_url = serializers.CharField(max_length=500, required=False, allow_blank=True)
    client_sync_path = serializers.CharField(max_length=200, required=False, allow_blank=True)
    client_attachment_path = serializers.CharField(max_length=200, required=False, allow_blank=True)
    client_auth = ClientAuthSerializer(required=False, allow_null=True)
    signing_secret = serializers.CharField(max_length=500, required=False, allow_blank=True, write_only=True)
    rate_limits = serializers.DictField(required=False)
    large_file_config = serializers.DictField(required=False)
    retention_seconds = serializers.IntegerField(min_value=0, max_value=MAX_INT, required=False, allow_null=True)
    bounce = serializers.DictField(required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        for name in ("rate_limits", "large_file_config", "bounce", "name", "signing_secret"):
            problem = _unstorable(self.initial_data.get(name)) if isinstance(self.initial_data, dict) else None
            if problem:
                raise serializers.ValidationError({name: f"must not contain {problem}"})
        return attrs

    def validate_client_base_url(self, value: str) -> str:
        return _check_http_url(value)

    def validate_client_sync_path(self, value: str) -> str:
        return _check_path(value)

    def validate_client_attachment_path(self, value: str) -> str:
        return _check_path(value)

    def validate_rate_limits(self, value: dict[str, Any]) -> dict[str, int]:
        limits: dict[str, int] = {}
        for key, amount in value.items():
            if key not in RATE_LIMIT_KEYS:
                raise serializers.ValidationError(f"unknown key {key!r}; use per_minute, per_hour, per_day")
            if amount is None or amount == 0:
                continue
            if isinstance(amount, bool) or not isinstance(amount, int) or not 0 <= amount <= MAX_INT:
                raise serializers.ValidationError(f"{key} must be a whole number from 0 to {MAX_INT}")
            limits[RATE_LIMIT_KEYS[key]] = amount
        return limits

    def validate_bounce(self, value: dict[str, Any]) -> dict[str, Any]:
        allowed = {"enabled", "imap_host", "imap_port", "imap_user", "imap_password", "imap_folder",
                   "security", "poll_interval", "processed_folder", "return_path", "verp"}
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise serializers.ValidationError(f"unknown key {unknown[0]!r}")
        if "security" in value and value["security"] not in Security.values:
            raise serializers.ValidationError("security must be ssl, starttls or none")
        for key in ("imap_port", "poll_interval"):
            if key in value and (isinstance(value[key], bool) or not isinstance(value[key], int)
                                 or not 0 < value[key] <= MAX_INT):
                raise serializers.ValidationError(f"{key} must be a positive whole number up to {MAX_INT}")
        return value

    def validate_large_file_config(self, value: dict[str, Any]) -> dict[str, Any]:
        try:
            return validate_large_file_config(value)
        except ValueError as exc:
            raise serializers.ValidationError(str(exc)) from None


class TenantOutSerializer(serializers.ModelSerializer):
    client_auth = serializers.SerializerMethodField()
    has_signing_secret = serializers.SerializerMethodField()
    bounce = serializers.SerializerMethodField()
    suspended_batches = serializers.SerializerMethodField()

    class Meta:
        model = Tenant
        fields = ["id", "name", "active", "client_base_url", "client_sync_path", "client_attachment_path",
                  "client_auth", "has_signing_secret", "rate_limits", "large_file_config", "retention_seconds",
                  "bounce", "suspended", "suspended_batches", "created_at", "updated_at"]

    def get_client_auth(self, tenant: Tenant) -> dict[str, Any]:
        shown: dict[str, Any] = {"method": tenant.client_auth_method}
        if tenant.client_auth_method == AuthMethod.BASIC:
            shown["user"] = tenant.client_auth_user
        shown["configured"] = bool(tenant.client_auth_secret_encrypted)
        return shown

    def get_has_signing_secret(self, tenant: Tenant) -> bool:
        return bool(tenant.signing_secret_encrypted)

    def get_bounce(self, tenant: Tenant) -> dict[str, Any]:
        shown = {key: value for key, value in tenant.bounce.items() if key != "imap_password"}
        if shown or tenant.bounce_imap_password_encrypted:
            shown["imap_password_set"] = bool(tenant.bounce_imap_password_encrypted)
        return shown

    def get_suspended_batches(self, tenant: Tenant) -> list[str]:
        return sorted(batch.batch_code for batch in tenant.suspended_batches.all())


class AccountInSerializer(serializers.Serializer):
    id = serializers.RegexField(ID_PATTERN, max_length=100, error_messages={"invalid": f"use {ID_HELP}"})
    tenant_id = serializers.CharField(max_length=64, required=False)
    host = serializers.CharField(max_length=255)
    port = serializers.IntegerField(min_value=1, max_value=65535, required=False)
    user = serializers.CharField(max_length=255, required=False, allow_blank=True)
    password = serializers.CharField(max_length=1000, required=False, allow_blank=True, write_only=True,
                                     trim_whitespace=False)
    security = serializers.ChoiceField(choices=Security.choices, required=False)
    use_tls = serializers.BooleanField(required=False, help_text="the seed product's switch; prefer security")
    verify_tls = serializers.BooleanField(required=False)
    timeout = serializers.IntegerField(min_value=1, max_value=600, required=False)
    max_connections = serializers.IntegerField(min_value=1, max_value=100, required=False)
    connection_ttl = serializers.IntegerField(min_value=1, max_value=MAX_INT, required=False)
    batch_size = serializers.IntegerField(min_value=1, max_value=1000, required=False)
    limit_per_minute = serializers.IntegerField(min_value=0, max_value=MAX_INT, required=False, allow_null=True)
    limit_per_hour = serializers.IntegerField(min_value=0, max_value=MAX_INT, required=False, allow_null=True)
    limit_per_day = serializers.IntegerField(min_value=0, max_value=MAX_INT, required=False, allow_null=True)
    limit_behavior = serializers.ChoiceField(choices=LimitBehavior.choices, required=False)
    is_default = serializers.BooleanField(required=False)
    is_pec = serializers.BooleanField(required=False)
    imap_host = serializers.CharField(max_length=255, required=False, allow_blank=True)
    imap_port = serializers.IntegerField(min_value=1, max_value=65535, required=False)
    imap_user = serializers.CharField(max_length=255, required=False, allow_blank=True)
    imap_password = serializers.CharField(max_length=1000, required=False, allow_blank=True, write_only=True,
                                          trim_whitespace=False)
    imap_folder = serializers.CharField(max_length=200, required=False)
    imap_security = serializers.ChoiceField(choices=Security.choices, required=False)
    imap_poll_interval = serializers.IntegerField(min_value=1, max_value=MAX_INT, required=False)

    def validate_host(self, value: str) -> str:
        if any(ch.isspace() for ch in value) or "/" in value:
            raise serializers.ValidationError("must be a host name or address")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        use_tls = attrs.pop("use_tls", None)
        if "security" not in attrs and use_tls is not None:
            attrs["security"] = (
                Security.SSL if attrs.get("port") == 465 else Security.STARTTLS
            ) if use_tls else Security.NONE
        for key in ("limit_per_minute", "limit_per_hour", "limit_per_day"):
            if attrs.get(key) == 0:
                attrs[key] = None
        return attrs


class AccountOutSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="external_id")
    tenant_id = serializers.CharField()
    password_set = serializers.SerializerMethodField()
    imap_password_set = serializers.SerializerMethodField()

    class Meta:
        model = SmtpAccount
        fields = ["id", "tenant_id", "host", "port", "user", "password_set", "security", "verify_tls", "timeout",
                  "max_connections", "connection_ttl", "batch_size", "limit_per_minute", "limit_per_hour",
                  "limit_per_day", "limit_behavior", "is_default", "is_pec", "imap_host", "imap_port",
                  "imap_user", "imap_password_set", "imap_folder", "imap_security", "imap_poll_interval",
                  "account_error", "account_error_at", "created_at", "updated_at"]

    def get_password_set(self, account: SmtpAccount) -> bool:
        return bool(account.password_encrypted)

    def get_imap_password_set(self, account: SmtpAccount) -> bool:
        return bool(account.imap_password_encrypted)


class ApiKeyInSerializer(serializers.Serializer):
    label = serializers.CharField(max_length=200, required=False, allow_blank=True)  # type: ignore[assignment]
    expires_ts = serializers.FloatField(required=False, allow_null=True, help_text="unix seconds")


class ApiKeyOutSerializer(serializers.ModelSerializer):
    tenant_id = serializers.CharField(allow_null=True)
    expires_at = serializers.DateTimeField(allow_null=True)

    class Meta:
        model = ApiKey
        fields = ["prefix", "tenant_id", "label", "created_at", "expires_at", "last_used_at", "revoked_at"]
