"""Tenant isolation on every URL of the project.

The walk reads the URL patterns from Django's resolver, so an endpoint added later is
checked too: it must name its path parameters below, refuse calls without a token, and
neither show nor change another tenant's data when called with a foreign key.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone
from rest_framework.test import APIClient

from mailproxy.urls import PUBLIC_URL_NAMES
from queueing.models import EventType, Message, MessageEvent, Status, Suppression
from tenants import crypto
from tenants.models import ApiKey, SmtpAccount, SuspendedBatch, Tenant
from tenants.services import create_api_key
from tests.conftest import message
from tests.factories import SmtpAccountFactory

pytestmark = pytest.mark.django_db

SECRET_MARK = "VICTIM-ONLY-7f3a"
METHODS = ("get", "post", "put", "patch", "delete")


def _patterns(resolvers: list[URLPattern | URLResolver], prefix: str = "") -> list[tuple[str, URLPattern]]:
    found: list[tuple[str, URLPattern]] = []
    for entry in resolvers:
        if isinstance(entry, URLResolver):
            if entry.app_name == "admin":
                continue  # the Django admin has its own login; tested apart
            found.extend(_patterns(entry.url_patterns, prefix + str(entry.pattern)))
        else:
            found.append((prefix + str(entry.pattern), entry))
    return found


def api_patterns() -> list[tuple[str, URLPattern]]:
    return [(route, p) for route, p in _patterns(get_resolver().url_patterns) if p.name not in PUBLIC_URL_NAMES]


def _methods(pattern: URLPattern) -> list[str]:
    view = getattr(pattern.callback, "cls", None) or getattr(pattern.callback, "view_class", None)
    assert view is not None, f"{pattern.name}: not a class-based view"
    return [method for method in METHODS if hasattr(view, method)]


def _fill(route: str, values: dict[str, str]) -> str:
    path = route
    for converter in ("str", "path", "int", "slug"):
        for name, value in values.items():
            path = path.replace(f"<{converter}:{name}>", value)
    assert "<" not in path, f"{route}: a path parameter the isolation walk does not know; add it to the test"
    return "/" + path


@pytest.fixture
def victim() -> dict[str, Any]:
    """A tenant with one of everything, all marked so a leak is visible."""
    tenant = Tenant.objects.create(
        id="victim", name=f"Victim {SECRET_MARK}",
        client_auth_method="bearer", client_auth_secret_encrypted=crypto.encrypt(SECRET_MARK),
    )
    account = SmtpAccountFactory(tenant=tenant, external_id="main", host=f"{SECRET_MARK.lower()}.example.com")
    key = create_api_key(tenant=tenant, label=SECRET_MARK)
    victim_client = APIClient()
    victim_client.credentials(HTTP_X_API_TOKEN=key.raw)
    response = victim_client.post("/commands/add-messages", {"messages": [
        message(id="waiting-msg", subject=f"waiting {SECRET_MARK}"),
        message(id="sent-msg", subject=f"sent {SECRET_MARK}", batch_code="camp"),
    ]}, format="json")
    assert response.json()["queued"] == 2
    sent = Message.objects.get(external_id="sent-msg")
    MessageEvent.objects.create(tenant=tenant, message=sent, external_id="sent-msg", event_type=EventType.SENT,
                                occurred_at=timezone.now(), reported_at=timezone.now())
    Message.objects.filter(pk=sent.pk).update(status=Status.SENT, updated_at=timezone.now() - timedelta(days=60))
    Suppression.objects.create(tenant=tenant, address="blocked@victim.example.com", reason=f"bounced {SECRET_MARK}")
    return {"tenant": tenant, "account": account, "key": key.key,
            "values": {"tenant_id": "victim", "account_id": "main", "message_id": "waiting-msg",
                       "prefix": key.key.prefix, "address": "blocked@victim.example.com", "token": "x", "n": "1"}}


def _snapshot() -> dict[str, Any]:
    return {
        "tenant": list(Tenant.objects.filter(pk="victim").values()),
        "accounts": list(SmtpAccount.objects.filter(tenant_id="victim").values()),
        "keys": list(ApiKey.objects.filter(tenant_id="victim").values()),
        "messages": list(Message.objects.filter(tenant_id="victim").values()),
        "events": list(MessageEvent.objects.filter(tenant_id="victim").values()),
        "batches": list(SuspendedBatch.objects.filter(tenant_id="victim").values()),
        "suppressions": list(Suppression.objects.filter(tenant_id="victim").values()),
    }


def _call(client: APIClient, method: str, url: str) -> Any:
    if method in ("get", "delete"):
        return getattr(client, method)(url)
    return getattr(client, method)(url, _hostile_body(), format="json")


def _hostile_body() -> dict[str, Any]:
    return {
        "tenant_id": "victim", "id": "main", "ids": ["waiting-msg", "sent-msg"], "host": "evil.example.com",
        "name": "taken over", "active": False, "batch_code": "camp", "older_than_seconds": 0, "label": "x",
        "messages": [message(id="waiting-msg", tenant_id="victim", account_id="main", subject="hijacked")],
    }


def test_walk_finds_the_api(victim: dict[str, Any]) -> None:
    names = {pattern.name for _, pattern in api_patterns()}
    assert {"add-messages", "messages", "message", "account", "tenant", "api-key"} <= names


def test_every_endpoint_refuses_calls_without_a_token(victim: dict[str, Any]) -> None:
    anonymous = APIClient()
    for route, pattern in api_patterns():
        url = _fill(route, victim["values"])
        for method in _methods(pattern):
            response = _call(anonymous, method, url)
            assert response.status_code == 401, f"{method.upper()} {url} answered {response.status_code}"


@pytest.mark.parametrize("with_query", [False, True])
def test_another_tenants_key_can_neither_see_nor_change_anything(
    victim: dict[str, Any], with_query: bool
) -> None:
    intruder = Tenant.objects.create(id="intruder")
    SmtpAccountFactory(tenant=intruder, external_id="main")
    client = APIClient()
    client.credentials(HTTP_X_API_TOKEN=create_api_key(tenant=intruder).raw)
    before = _snapshot()
    for route, pattern in api_patterns():
        url = _fill(route, victim["values"]) + ("?tenant_id=victim&all=true&force=true" if with_query else "")
        for method in _methods(pattern):
            response = _call(client, method, url)
            where = f"{method.upper()} {url} -> {response.status_code}"
            assert response.status_code < 500, where
            assert SECRET_MARK.lower() not in response.content.decode().lower(), f"{where} leaked the victim's data"
            assert "waiting-msg" not in response.content.decode() or response.status_code >= 400 or (
                # a per-message rejection may echo the id the intruder itself sent
                pattern.name in ("add-messages", "delete-messages")
            ), where
            assert _snapshot() == before, f"{where} changed the victim's data"
    # The intruder's own messages are its own: nothing of the victim was copied across.
    assert not Message.objects.filter(tenant=intruder, subject__contains=SECRET_MARK).exists()
