from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from queueing.models import EventType, Message, MessageEvent, Status
from tenants import crypto
from tenants.models import SmtpAccount, Tenant
from tests.conftest import message

pytestmark = pytest.mark.django_db


def test_create_account_password_is_write_only(tenant_client: APIClient, tenant: Tenant) -> None:
    response = tenant_client.post("/account", {
        "id": "main", "host": "smtp.example.com", "port": 587, "user": "u", "password": "pw-SECRET",
        "limit_per_minute": 30,
    }, format="json")
    assert response.status_code == 200
    account = response.json()["account"]
    assert account["password_set"] is True
    assert account["security"] == "starttls"
    for answer in (response, tenant_client.get("/accounts"), tenant_client.get("/account/main")):
        assert "SECRET" not in answer.content.decode()
        assert "password_encrypted" not in answer.content.decode()
    row = SmtpAccount.objects.get(tenant=tenant, external_id="main")
    assert crypto.decrypt(row.password_encrypted) == "pw-SECRET"


def test_update_keeps_omitted_fields_and_clears_auth_error(tenant_client: APIClient, account: SmtpAccount) -> None:
    account.account_error = "535 authentication failed"
    account.save()
    old_password = account.password_encrypted
    tenant_client.post("/account", {"id": "main", "host": account.host, "limit_per_hour": 100}, format="json")
    account.refresh_from_db()
    assert (account.limit_per_hour, account.password_encrypted) == (100, old_password)
    assert account.account_error == "535 authentication failed"
    tenant_client.post("/account", {"id": "main", "host": account.host, "password": "new"}, format="json")
    account.refresh_from_db()
    assert account.account_error == ""


def test_port_465_defaults_to_implicit_tls_and_use_tls_is_understood(tenant_client: APIClient) -> None:
    a = tenant_client.post("/account", {"id": "a", "host": "h.example.com", "port": 465}, format="json")
    b = tenant_client.post("/account", {"id": "b", "host": "h.example.com", "port": 25, "use_tls": False},
                           format="json")
    assert (a.json()["account"]["security"], b.json()["account"]["security"]) == ("ssl", "none")


def test_one_default_account_per_tenant(tenant_client: APIClient, tenant: Tenant) -> None:
    tenant_client.post("/account", {"id": "a", "host": "h.example.com", "is_default": True}, format="json")
    tenant_client.post("/account", {"id": "b", "host": "h.example.com", "is_default": True}, format="json")
    defaults = list(SmtpAccount.objects.filter(tenant=tenant, is_default=True).values_list("external_id", flat=True))
    assert defaults == ["b"]


@pytest.mark.parametrize(("payload", "field"), [
    ({"id": "x"}, "host"),
    ({"id": "x", "host": "h.example.com", "port": 70000}, "port"),
    ({"id": "x", "host": "h.example.com", "security": "tls-please"}, "security"),
    ({"id": "has space", "host": "h.example.com"}, "id"),
    ({"id": "x", "host": "h.example.com", "limit_per_minute": -5}, "limit_per_minute"),
])
def test_bad_account_input_is_400_naming_the_field(tenant_client: APIClient, payload: dict, field: str) -> None:
    response = tenant_client.post("/account", payload, format="json")
    assert response.status_code == 400
    assert field in response.json()["details"]
    assert not SmtpAccount.objects.exists()


def test_delete_refused_while_messages_wait_unless_forced(tenant_client: APIClient, account: SmtpAccount) -> None:
    tenant_client.post("/commands/add-messages", {"messages": [message(id="w1")]}, format="json")
    refused = tenant_client.delete("/account/main")
    assert refused.status_code == 409
    assert refused.json()["details"] == {"waiting": 1}
    forced = tenant_client.delete("/account/main?force=true")
    assert forced.status_code == 200
    assert not SmtpAccount.objects.filter(pk=account.pk).exists()
    failed = Message.objects.get(external_id="w1")
    assert failed.status == Status.ERROR
    assert "deleted" in failed.last_error
    assert MessageEvent.objects.filter(message=failed, event_type=EventType.ERROR).count() == 1


def test_delete_account_without_messages(tenant_client: APIClient, account: SmtpAccount) -> None:
    assert tenant_client.delete("/account/main").status_code == 200
    assert tenant_client.get("/account/main").status_code == 404


def test_admin_names_the_tenant_of_an_account(admin_client: APIClient, account: SmtpAccount) -> None:
    assert admin_client.get("/account/main?tenant_id=acme").json()["account"]["tenant_id"] == "acme"
    assert admin_client.get("/account/main?tenant_id=nobody").status_code == 404


def test_admin_lists_all_accounts_or_one_tenants(
    admin_client: APIClient, account: SmtpAccount, other_account: SmtpAccount
) -> None:
    everyone = admin_client.get("/accounts").json()["accounts"]
    acme = admin_client.get("/accounts?tenant_id=acme").json()["accounts"]
    assert sorted(a["tenant_id"] for a in everyone) == ["acme", "globex"]
    assert [a["tenant_id"] for a in acme] == ["acme"]


def test_account_other_tenant_is_404_like_missing(other_client: APIClient, account: SmtpAccount) -> None:
    theirs = other_client.get("/account/main")
    missing = other_client.get("/account/nothing")
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json() == missing.json()
    assert other_client.delete("/account/main").status_code == 404
    assert SmtpAccount.objects.filter(pk=account.pk).exists()
