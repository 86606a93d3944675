"""API tokens: one indistinct 401 for every bad token, revocation at once, only hashes stored."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.db import models
from django.utils import timezone
from rest_framework.test import APIClient

from tenants.auth import INVALID_TOKEN
from tenants.models import ApiKey, Tenant
from tenants.services import create_api_key
from tests.conftest import ADMIN_TOKEN, message
from tests.security.dumps import database_text

pytestmark = pytest.mark.django_db

UNAUTHORIZED = {"ok": False, "error": INVALID_TOKEN, "details": None}
# A tenant route, an admin-only route, a command, a detail route, the metrics.
PROBES: list[tuple[str, str]] = [
    ("get", "/messages"), ("get", "/tenants"), ("post", "/commands/add-messages"), ("get", "/tenant/acme"),
    ("get", "/account/main"), ("get", "/metrics"), ("delete", "/tenant/acme/api-keys/0000000000"),
]


def _probe(token: str | None) -> list[tuple[str, int, Any, str | None]]:
    client = APIClient()
    if token is not None:
        client.credentials(HTTP_X_API_TOKEN=token)
    answers = []
    for method, path in PROBES:
        if method == "post":
            response = client.post(path, {"messages": [message()]}, format="json")
        else:
            response = getattr(client, method)(path)
        answers.append((f"{method.upper()} {path}", response.status_code, response.json(),
                        response.headers.get("WWW-Authenticate")))
    return answers


def _bad_tokens(tenant: Tenant) -> dict[str, str | None]:
    good = create_api_key(tenant=tenant)
    expired = create_api_key(tenant=tenant, expires_at=timezone.now() + timedelta(days=1))
    ApiKey.objects.filter(pk=expired.key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    revoked = create_api_key(tenant=tenant)
    ApiKey.objects.filter(pk=revoked.key.pk).update(revoked_at=timezone.now())
    prefix = good.key.prefix
    return {
        "missing header": None,
        "empty": "",
        "unknown": "mpk_0123456789_" + "A" * 43,
        "malformed": "not a token at all",
        "only the scheme prefix": "mpk_",
        "very long": "mpk_" + "x" * 8000,
        "with a bearer scheme": f"Bearer {good.raw}",
        "expired key": expired.raw,
        "revoked key": revoked.raw,
        "right prefix, wrong secret": f"mpk_{prefix}_" + "B" * 43,
        "right prefix, secret cut short": good.raw[:-1],
        "the stored hash itself": ApiKey.objects.get(pk=good.key.pk).key_hash,
        "admin token with a trailing space": ADMIN_TOKEN + " ",
        "admin token with a leading space": " " + ADMIN_TOKEN,
        "admin token in upper case": ADMIN_TOKEN.upper(),
        "admin token's hash": hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest(),
    }


def test_every_refused_token_gets_the_same_401_and_the_same_fixed_message(tenant: Tenant, account: Any) -> None:
    for case, token in _bad_tokens(tenant).items():
        for where, status, body, challenge in _probe(token):
            assert (status, body) == (401, UNAUTHORIZED), f"{case}: {where} answered {status} {body}"
            assert challenge == 'ApiKey header="X-API-Token"', f"{case}: {where}"


def test_a_good_key_passes_the_same_probes(tenant: Tenant, account: Any) -> None:
    token = create_api_key(tenant=tenant).raw
    statuses = {where: status for where, status, _, _ in _probe(token)}
    assert statuses["GET /messages"] == 200
    assert statuses["GET /tenants"] == 403  # admin only: known, but not allowed
    assert 401 not in statuses.values()


def _get(token: str, path: str = "/messages") -> int:
    client = APIClient()
    client.credentials(HTTP_X_API_TOKEN=token)
    return client.get(path).status_code


def test_revocation_takes_effect_on_the_very_next_request(tenant: Tenant, account: Any) -> None:
    kept, doomed = create_api_key(tenant=tenant), create_api_key(tenant=tenant)
    assert _get(doomed.raw) == 200
    client = APIClient()
    client.credentials(HTTP_X_API_TOKEN=kept.raw)
    assert client.delete(f"/tenant/acme/api-keys/{doomed.key.prefix}").status_code == 200
    assert _get(doomed.raw) == 401
    assert _get(kept.raw) == 200


def test_a_key_revoking_itself_is_refused_at_once(tenant: Tenant) -> None:
    key = create_api_key(tenant=tenant)
    client = APIClient()
    client.credentials(HTTP_X_API_TOKEN=key.raw)
    assert client.delete(f"/tenant/acme/api-keys/{key.key.prefix}").status_code == 200
    assert client.get("/messages").status_code == 401


def test_rotation_stops_the_old_key_at_once_and_the_new_one_works(tenant: Tenant) -> None:
    old = create_api_key(tenant=tenant)
    client = APIClient()
    client.credentials(HTTP_X_API_TOKEN=old.raw)
    answer = client.post(f"/tenant/acme/api-keys/{old.key.prefix}/rotate")
    assert answer.status_code == 201
    assert _get(old.raw) == 401
    assert _get(answer.json()["api_key"]) == 200


def test_expiry_takes_effect_without_any_cache(tenant: Tenant) -> None:
    key = create_api_key(tenant=tenant, expires_at=timezone.now() + timedelta(hours=1))
    assert _get(key.raw) == 200
    ApiKey.objects.filter(pk=key.key.pk).update(expires_at=timezone.now() - timedelta(microseconds=1))
    assert _get(key.raw) == 401


def test_keys_are_stored_only_as_sha256_hashes(admin_client: APIClient, client_for: Callable[..., Any]) -> None:
    created = admin_client.post("/tenant", {"id": "hashco", "name": "Hash Co"}, format="json").json()
    raws = {created["api_key_prefix"]: created["api_key"]}
    extra = admin_client.post("/tenant/hashco/api-keys", {"label": "second"}, format="json").json()
    raws[extra["prefix"]] = extra["api_key"]
    rotated = admin_client.post(f"/tenant/hashco/api-keys/{extra['prefix']}/rotate").json()
    raws[rotated["prefix"]] = rotated["api_key"]
    admin_key = create_api_key(tenant=None, label="operator")
    raws[admin_key.key.prefix] = admin_key.raw
    for raw in raws.values():
        assert _get(raw, "/accounts") in (200, 401)  # used once, so last_used_at is written too

    text_fields = [f.attname for f in ApiKey._meta.concrete_fields
                   if isinstance(f, models.CharField | models.TextField)]
    assert {"prefix", "key_hash", "label"} <= set(text_fields)
    for prefix, raw in raws.items():
        row = ApiKey.objects.get(prefix=prefix)
        assert row.key_hash == hashlib.sha256(raw.encode()).hexdigest()
        secret = raw.split("_", 2)[2]  # mpk_<prefix>_<secret>
        assert len(secret) >= 43  # at least 32 random bytes, base64url
        for name in text_fields:
            value = str(getattr(row, name))
            assert raw not in value, f"{prefix}: column {name} holds the key"
            assert secret not in value, f"{prefix}: column {name} holds the key's secret"

    dump = database_text()
    assert "hashco" in dump  # the dump really has the rows
    for raw in [*raws.values(), ADMIN_TOKEN]:
        assert raw not in dump
        assert raw.split("_", 2)[-1] not in dump
