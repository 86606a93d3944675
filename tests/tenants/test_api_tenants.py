from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from tenants import crypto
from tenants.models import Tenant

pytestmark = pytest.mark.django_db


def test_create_tenant_returns_its_first_key_once(admin_client: APIClient) -> None:
    response = admin_client.post("/tenant", {"id": "acme", "name": "ACME"}, format="json")
    assert response.status_code == 201
    body = response.json()
    assert body["tenant"]["id"] == "acme"
    key = body["api_key"]
    client = APIClient()
    client.credentials(HTTP_X_API_TOKEN=key)
    assert client.get("/tenant/acme").json()["tenant"]["name"] == "ACME"

    again = admin_client.post("/tenant", {"id": "acme", "name": "ACME Corp"}, format="json")
    assert again.status_code == 200
    assert "api_key" not in again.json()
    assert Tenant.objects.get(pk="acme").name == "ACME Corp"


def test_secrets_are_encrypted_and_never_returned(admin_client: APIClient) -> None:
    response = admin_client.post("/tenant", {
        "id": "acme", "client_base_url": "https://app.example.com/",
        "client_auth": {"method": "bearer", "token": "tok-SECRET-123"},
        "signing_secret": "sign-SECRET-456",
        "bounce": {"enabled": True, "imap_host": "imap.example.com", "imap_password": "imap-SECRET-789"},
    }, format="json")
    assert response.status_code == 201
    for answer in (response, admin_client.get("/tenant/acme"), admin_client.get("/tenants")):
        text = answer.content.decode()
        assert "SECRET" not in text
    shown = admin_client.get("/tenant/acme").json()["tenant"]
    assert shown["client_auth"] == {"method": "bearer", "configured": True}
    assert shown["has_signing_secret"] is True
    assert shown["bounce"]["imap_password_set"] is True
    assert shown["client_base_url"] == "https://app.example.com"

    row = Tenant.objects.get(pk="acme")
    assert "SECRET" not in row.client_auth_secret_encrypted + row.signing_secret_encrypted
    assert crypto.decrypt(row.client_auth_secret_encrypted) == "tok-SECRET-123"
    assert crypto.decrypt(row.bounce_imap_password_encrypted) == "imap-SECRET-789"
    assert "imap_password" not in row.bounce
    assert "SECRET" not in repr(row) + str(row)


@pytest.mark.parametrize(("payload", "field"), [
    ({"id": "bad id!"}, "id"),
    ({"id": "acme", "client_base_url": "ftp://x.example.com"}, "client_base_url"),
    ({"id": "acme", "client_base_url": "https://user:pw@x.example.com"}, "client_base_url"),
    ({"id": "acme", "client_sync_path": "no-slash"}, "client_sync_path"),
    ({"id": "acme", "client_auth": {"method": "bearer"}}, "client_auth.token"),
    ({"id": "acme", "client_auth": {"method": "basic", "user": "u"}}, "client_auth.user"),
    ({"id": "acme", "rate_limits": {"per_week": 3}}, "rate_limits"),
    ({"id": "acme", "rate_limits": {"per_hour": -1}}, "rate_limits"),
    ({"id": "acme", "large_file_config": {"action": "explode"}}, "large_file_config"),
    ({"id": "acme", "bounce": {"imap_port": "x"}}, "bounce"),
])
def test_bad_tenant_input_names_the_field_and_stores_nothing(
    admin_client: APIClient, payload: dict, field: str
) -> None:
    response = admin_client.post("/tenant", payload, format="json")
    assert response.status_code == 400
    body = response.json()
    assert body["ok"] is False
    assert field in body["details"]
    assert not Tenant.objects.exists()


def test_seed_rate_limit_names_are_accepted(admin_client: APIClient) -> None:
    admin_client.post("/tenant", {"id": "acme", "rate_limits": {"hourly": 100, "daily": 1000}}, format="json")
    assert Tenant.objects.get(pk="acme").rate_limits == {"per_hour": 100, "per_day": 1000}


def test_put_is_partial(admin_client: APIClient, tenant: Tenant) -> None:
    admin_client.put("/tenant/acme", {"client_base_url": "https://a.example.com"}, format="json")
    response = admin_client.put("/tenant/acme", {"name": "Renamed"}, format="json")
    assert response.status_code == 200
    tenant.refresh_from_db()
    assert (tenant.name, tenant.client_base_url) == ("Renamed", "https://a.example.com")


def test_tenant_may_update_itself_but_not_its_active_flag(tenant_client: APIClient, tenant: Tenant) -> None:
    assert tenant_client.put("/tenant/acme", {"name": "Mine"}, format="json").status_code == 200
    response = tenant_client.put("/tenant/acme", {"active": False}, format="json")
    assert response.status_code == 403
    tenant.refresh_from_db()
    assert (tenant.name, tenant.active) == ("Mine", True)


def test_only_admin_deletes_a_tenant(tenant_client: APIClient, admin_client: APIClient, tenant: Tenant) -> None:
    assert tenant_client.delete("/tenant/acme").status_code == 403
    assert admin_client.delete("/tenant/acme").status_code == 200
    assert not Tenant.objects.filter(pk="acme").exists()


def test_list_tenants_active_only(admin_client: APIClient, tenant: Tenant, other_tenant: Tenant) -> None:
    other_tenant.active = False
    other_tenant.save()
    everyone = [t["id"] for t in admin_client.get("/tenants").json()["tenants"]]
    active = [t["id"] for t in admin_client.get("/tenants?active_only=true").json()["tenants"]]
    assert (everyone, active) == (["acme", "globex"], ["acme"])


def test_missing_tenant_is_404(admin_client: APIClient) -> None:
    response = admin_client.get("/tenant/nobody")
    assert response.status_code == 404
    assert response.json()["ok"] is False
