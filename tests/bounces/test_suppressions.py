from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from queueing.models import Message, MessageEvent, Suppression
from tenants.models import SmtpAccount, Tenant
from tests.conftest import message

pytestmark = pytest.mark.django_db


def add(client: APIClient, *messages: dict) -> dict:
    return client.post("/commands/add-messages", {"messages": list(messages)}, format="json").json()


def test_suppressed_recipient_is_left_out_and_the_others_still_go(
    tenant_client: APIClient, tenant: Tenant, account: SmtpAccount
) -> None:
    Suppression.objects.create(tenant=tenant, address="gone@example.com", reason="5.1.1 user unknown")
    body = add(tenant_client, message(id="m", to=["ok@example.com", "Gone <GONE@example.com>"]))
    assert body["queued"] == 1
    assert body["suppressed"] == [{"id": "m", "recipient": "gone@example.com", "reason": "5.1.1 user unknown"}]
    assert Message.objects.get().to == ["ok@example.com"]


def test_message_to_suppressed_recipients_only_is_rejected(
    tenant_client: APIClient, tenant: Tenant, account: SmtpAccount
) -> None:
    Suppression.objects.create(tenant=tenant, address="gone@example.com", reason="hard bounce")
    body = add(tenant_client, message(id="m", to="gone@example.com"))
    assert body["rejected"] == [
        {"id": "m", "index": 0, "field": "messages[0].to", "reason": "to: suppressed: hard bounce"}]
    assert "suppressed" not in body
    assert not Message.objects.exists()
    assert MessageEvent.objects.get().details["error"] == "to: suppressed: hard bounce"


def test_expired_suppression_no_longer_applies(tenant_client: APIClient, tenant: Tenant, account: SmtpAccount) -> None:
    Suppression.objects.create(tenant=tenant, address="back@example.com", reason="old",
                               expires_at=timezone.now() - timedelta(days=1))
    assert add(tenant_client, message(id="m", to="back@example.com"))["queued"] == 1


def test_another_tenants_suppression_does_not_apply(
    tenant_client: APIClient, other_tenant: Tenant, account: SmtpAccount
) -> None:
    Suppression.objects.create(tenant=other_tenant, address="x@example.com", reason="theirs")
    assert add(tenant_client, message(id="m", to="x@example.com"))["queued"] == 1


@override_settings(GMP_SUPPRESSION_DAYS=90)
def test_suppression_api_add_list_delete(tenant_client: APIClient, tenant: Tenant) -> None:
    created = tenant_client.post("/suppressions", {"address": "Someone <Some@Example.com>", "reason": "asked"},
                                 format="json")
    assert created.status_code == 201
    entry = created.json()["suppression"]
    assert (entry["address"], entry["reason"], entry["source"]) == ("some@example.com", "asked", "api")
    assert entry["expires_ts"] == pytest.approx((timezone.now() + timedelta(days=90)).timestamp(), abs=60)
    listed = tenant_client.get("/suppressions").json()["suppressions"]
    assert [e["address"] for e in listed] == ["some@example.com"]
    assert tenant_client.delete("/suppressions/some@example.com").status_code == 200
    assert tenant_client.get("/suppressions").json()["suppressions"] == []
    assert tenant_client.delete("/suppressions/some@example.com").status_code == 404


@override_settings(GMP_SUPPRESSION_DAYS=0)
def test_zero_days_means_never_expires(tenant_client: APIClient) -> None:
    entry = tenant_client.post("/suppressions", {"address": "a@example.com"}, format="json").json()["suppression"]
    assert entry["expires_ts"] is None


def test_bad_address_is_400(tenant_client: APIClient) -> None:
    response = tenant_client.post("/suppressions", {"address": "not-an-address"}, format="json")
    assert response.status_code == 400
    assert "address" in response.json()["details"]
    assert not Suppression.objects.exists()


def test_other_tenants_suppressions_are_invisible(other_client: APIClient, tenant: Tenant) -> None:
    Suppression.objects.create(tenant=tenant, address="mine@example.com", reason="r")
    assert other_client.get("/suppressions").json()["suppressions"] == []
    assert other_client.delete("/suppressions/mine@example.com").status_code == 404
    assert other_client.get("/suppressions?tenant_id=acme").status_code == 404
    assert Suppression.objects.count() == 1
