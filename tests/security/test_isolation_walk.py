"""Another tenant's ids are answered exactly like ids that do not exist, on every route.

tests/test_isolation.py already walks every URL of the resolver and proves that a foreign
key neither leaks the victim's marked data nor changes its rows. This walk reuses its
patterns, victim and snapshot, and adds what it does not check: the answer to the
victim's ids (in the path, in `?tenant_id=`, in the body) is byte for byte the answer to
ids nobody has, so a caller cannot even learn that an id exists; every route that names
an object in its path answers 404; and the tables stay untouched, whatever the method.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from rest_framework.test import APIClient

from tenants.models import Tenant
from tenants.services import create_api_key
from tests.conftest import message
from tests.factories import SmtpAccountFactory
from tests.test_isolation import _fill, _methods, _snapshot, api_patterns

pytestmark = pytest.mark.django_db

# Values nobody owns, one per path parameter the walk knows (tests/test_isolation.py).
MISSING = {"tenant_id": "no-such-tenant", "account_id": "no-such-account", "message_id": "no-such-message",
           "prefix": "0000000000", "address": "nobody@nowhere.example.com", "token": "x", "n": "1"}


def _body(values: dict[str, str]) -> dict[str, Any]:
    """Everything a body can name, aimed at the owner of `values`."""
    return {
        "tenant_id": values["tenant_id"], "id": values["account_id"], "ids": [values["message_id"]],
        "host": "evil.example.com", "name": "taken over", "active": False, "batch_code": "camp",
        "older_than_seconds": 0, "label": "x", "address": values["address"], "reason": "taken over",
        "messages": [message(id=values["message_id"], tenant_id=values["tenant_id"],
                             account_id=values["account_id"], subject="hijacked")],
    }


def _call(client: APIClient, name: str, method: str, url: str, values: dict[str, str]) -> Any:
    if method in ("get", "delete"):
        return getattr(client, method)(url)
    body = _body(values)
    if name == "add-messages":  # its other fields would be refused before any tenant is looked at
        body = {"messages": body["messages"]}
    return getattr(client, method)(url, body, format="json")


def _answer(response: Any, values: dict[str, str]) -> tuple[int, Any]:
    """Status and JSON body, with the ids the caller itself sent put back as placeholders."""
    text = response.content.decode()
    for name in ("message_id", "account_id", "tenant_id", "address", "prefix"):
        text = text.replace(values[name], f"<{name}>")
    try:
        return response.status_code, json.loads(text)
    except ValueError:
        return response.status_code, text


@pytest.fixture
def intruder() -> APIClient:
    """A tenant with its own account, under an id the victim does not use."""
    tenant = Tenant.objects.create(id="intruder")
    SmtpAccountFactory(tenant=tenant, external_id="own")
    client = APIClient()
    client.credentials(HTTP_X_API_TOKEN=create_api_key(tenant=tenant).raw)
    return client


@pytest.mark.parametrize("with_query", [False, True], ids=["path-and-body", "plus-query"])
def test_foreign_ids_get_the_answer_of_missing_ids_on_every_route(
    victim: dict[str, Any], intruder: APIClient, with_query: bool
) -> None:
    foreign_values = victim["values"]
    before = _snapshot()
    checked = 0
    for route, pattern in api_patterns():
        for method in _methods(pattern):
            answers = []
            for values in (MISSING, foreign_values):
                url = _fill(route, values) + (f"?tenant_id={values['tenant_id']}" if with_query else "")
                response = _call(intruder, pattern.name, method, url, values)
                answers.append(_answer(response, values))
                assert response.status_code < 500, f"{method.upper()} {url} -> {response.status_code}"
                assert response["Content-Type"].startswith("application/json"), f"{method.upper()} {url}"
            missing, foreign = answers
            where = f"{method.upper()} {route}"
            assert foreign == missing, f"{where}: a foreign id is answered differently from a missing one"
            if "<" in route:
                assert foreign[0] == 404, f"{where} answered {foreign[0]} to another tenant's id"
            assert _snapshot() == before, f"{where} changed the victim's rows"
            checked += 1
    assert checked >= 25  # the walk really went over the API

