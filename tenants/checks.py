"""Start-up checks: refuse to run a production instance with development secrets."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, Warning, register

from tenants.crypto import EncryptionKeyError, parse_key

PLACEHOLDERS = ("change-me", "changeme", "insecure", "placeholder", "secret")


def _is_placeholder(value: str) -> bool:
    lowered = value.lower()
    return len(value) < 32 or any(word in lowered for word in PLACEHOLDERS)


@register()
def check_secrets(app_configs: Any = None, **kwargs: Any) -> list[Error | Warning]:
    problems: list[Error | Warning] = []
    key = settings.MAIL_PROXY_ENCRYPTION_KEY
    if key:
        try:
            parse_key(key)
            for index, old in enumerate(settings.MAIL_PROXY_ENCRYPTION_OLD_KEYS):
                parse_key(old, name=f"MAIL_PROXY_ENCRYPTION_OLD_KEYS[{index}]")
        except EncryptionKeyError as exc:
            problems.append(Error(str(exc), hint="generate one with `mail-proxy generate-key`", id="mailproxy.E001"))
    if settings.DEBUG:
        return problems
    if not key:
        problems.append(Error(
            "MAIL_PROXY_ENCRYPTION_KEY is not set: secrets cannot be stored",
            hint="set MAIL_PROXY_ENCRYPTION_KEY (or _FILE) to base64 of 32 random bytes", id="mailproxy.E002",
        ))
    if not settings.SECRET_KEY or _is_placeholder(settings.SECRET_KEY):
        problems.append(Error(
            "DJANGO_SECRET_KEY is missing or a placeholder", hint="set a random value of 50 characters",
            id="mailproxy.E003",
        ))
    token = settings.GMP_API_TOKEN
    if token and _is_placeholder(token):
        problems.append(Error(
            "GMP_API_TOKEN looks like a placeholder (shorter than 32 characters or a sample word)",
            hint="use a random token, e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`",
            id="mailproxy.E004",
        ))
    return problems
