from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from tenants.auth import INVALID_TOKEN, hash_key
from tenants.models import ApiKey, Tenant
from tenants.services import create_api_key, revoke_api_key

pytestmark = pytest.mark.django_db


def _status(client: APIClient, path: str = "/messages") -> tuple[int, dict]:
    response = client.get(path)
    return response.status_code, response.json()


def test_missing_token_is_401_in_the_error_format(api_client: APIClient) -> None:
    status, body = _status(api_client)
    assert status == 401
    assert body == {"ok": False, "error": INVALID_TOKEN, "details": None}


def test_unknown_token_is_401_with_the_same_message(api_client: APIClient) -> None:
    api_client.credentials(HTTP_X_API_TOKEN="mpk_nothing_here")
    assert _status(api_client) == (401, {"ok": False, "error": INVALID_TOKEN, "details": None})


def test_expired_key_is_401(api_client: APIClient, tenant: Tenant) -> None:
    issued = create_api_key(tenant=tenant, expires_at=timezone.now() - timedelta(seconds=1))
    api_client.credentials(HTTP_X_API_TOKEN=issued.raw)
    assert _status(api_client) == (401, {"ok": False, "error": INVALID_TOKEN, "details": None})


def test_revoked_key_stops_at_once(api_client: APIClient, tenant: Tenant) -> None:
    issued = create_api_key(tenant=tenant)
    api_client.credentials(HTTP_X_API_TOKEN=issued.raw)
    assert _status(api_client)[0] == 200
    revoke_api_key(key=issued.key)
    assert _status(api_client)[0] == 401


def test_tenant_key_on_admin_endpoint_is_403(tenant_client: APIClient) -> None:
    status, body = _status(tenant_client, "/tenants")
    assert status == 403
    assert body["ok"] is False
    assert "admin" in body["error"]


def test_key_is_stored_only_as_its_hash(tenant: Tenant) -> None:
    issued = create_api_key(tenant=tenant, label="ci")
    row = ApiKey.objects.get(pk=issued.key.pk)
    assert row.key_hash == hash_key(issued.raw)
    assert issued.raw not in repr(row.__dict__)
    assert issued.raw.startswith(f"mpk_{row.prefix}_")
    # 32 random bytes after the prefix: at least 256 bits of entropy
    assert len(issued.raw.split("_", 2)[2]) >= 43


def test_last_used_is_recorded(api_client: APIClient, tenant: Tenant) -> None:
    issued = create_api_key(tenant=tenant)
    api_client.credentials(HTTP_X_API_TOKEN=issued.raw)
    api_client.get("/messages")
    assert ApiKey.objects.get(pk=issued.key.pk).last_used_at is not None


def test_admin_key_created_without_tenant_sees_everything(api_client: APIClient, tenant: Tenant) -> None:
    issued = create_api_key(tenant=None, label="ops")
    api_client.credentials(HTTP_X_API_TOKEN=issued.raw)
    response = api_client.get("/tenants")
    assert response.status_code == 200
    assert [t["id"] for t in response.json()["tenants"]] == ["acme"]


def test_key_endpoints_create_list_rotate_revoke(
    admin_client: APIClient, tenant: Tenant, client_for: Callable[[Tenant], APIClient]
) -> None:
    created = admin_client.post("/tenant/acme/api-keys", {"label": "deploy"}, format="json")
    assert created.status_code == 201
    raw, prefix = created.json()["api_key"], created.json()["prefix"]

    listed = admin_client.get("/tenant/acme/api-keys").json()["api_keys"]
    assert [k["prefix"] for k in listed] == [prefix]
    assert raw not in str(listed)
    assert "key_hash" not in listed[0]

    rotated = admin_client.post(f"/tenant/acme/api-keys/{prefix}/rotate")
    assert rotated.status_code == 201
    new_raw = rotated.json()["api_key"]
    old, new = APIClient(), APIClient()
    old.credentials(HTTP_X_API_TOKEN=raw)
    new.credentials(HTTP_X_API_TOKEN=new_raw)
    assert old.get("/messages").status_code == 401
    assert new.get("/messages").status_code == 200
    assert rotated.json()["label"] == "deploy"

    new_prefix = rotated.json()["prefix"]
    assert admin_client.delete(f"/tenant/acme/api-keys/{new_prefix}").status_code == 200
    assert new.get("/messages").status_code == 401


def test_tenant_manages_its_own_keys(tenant_client: APIClient, tenant: Tenant) -> None:
    response = tenant_client.post("/tenant/acme/api-keys", {"label": "second"}, format="json")
    assert response.status_code == 201
    assert ApiKey.objects.filter(tenant=tenant).count() == 2


def test_key_expiry_in_the_past_is_refused(admin_client: APIClient, tenant: Tenant) -> None:
    response = admin_client.post("/tenant/acme/api-keys", {"expires_ts": 1000}, format="json")
    assert response.status_code == 400
    assert "expires_ts" in response.json()["details"]
    assert ApiKey.objects.filter(tenant=tenant).count() == 0
