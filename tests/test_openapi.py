from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import jsonschema
import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from tenants.models import Tenant
from tests.conftest import message

pytestmark = pytest.mark.django_db

ERROR_REF = "#/components/schemas/ErrorResponse"
ADMIN_ONLY = {("post", "/tenant"), ("get", "/tenants"), ("get", "/tenants/sync-status"), ("get", "/metrics"),
              ("delete", "/tenant/{tenant_id}"), ("put", "/tenant/{tenant_id}")}  # the last two: in part


def test_schema_documents_every_endpoint(api_client: APIClient) -> None:
    response = api_client.get("/openapi.json")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/")
    schema = json.loads(response.content)
    paths = schema["paths"]
    for path in ("/commands/add-messages", "/messages", "/messages/{message_id}", "/commands/delete-messages",
                 "/commands/cleanup-messages", "/commands/suspend", "/commands/activate", "/account",
                 "/accounts", "/account/{account_id}", "/tenant", "/tenants", "/tenant/{tenant_id}",
                 "/tenant/{tenant_id}/api-keys", "/tenant/{tenant_id}/api-keys/{prefix}", "/health",
                 "/ready", "/metrics"):
        assert path in paths, path
    add = paths["/commands/add-messages"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert add["$ref"].endswith("AddMessagesInRequest")
    message_fields = schema["components"]["schemas"]["MessageInRequest"]["properties"]
    assert {"from", "to", "subject", "attachments", "priority"} <= set(message_fields)


def test_swagger_ui_is_served_without_a_token(api_client: APIClient) -> None:
    assert api_client.get("/docs").status_code == 200


def test_unknown_path_is_a_json_404(api_client: APIClient) -> None:
    response = api_client.get("/no/such/thing")
    assert response.status_code == 404
    assert response.json() == {"ok": False, "error": "not found", "details": None}


def _schema(client: APIClient) -> dict[str, Any]:
    return json.loads(client.get("/openapi.json").content)


def _operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method, path, operation) for path, operations in schema["paths"].items()
            for method, operation in operations.items()]


def test_every_refusal_an_operation_can_give_is_documented_with_the_error_shape(api_client: APIClient) -> None:
    schema = _schema(api_client)
    error = schema["components"]["schemas"]["ErrorResponse"]
    assert error["required"] == ["ok", "error", "details"]
    assert error["properties"]["ok"] == {"type": "boolean", "enum": [False]}
    for method, path, operation in _operations(schema):
        label = f"{method.upper()} {path}"
        responses = operation["responses"]
        parameters = operation.get("parameters", [])
        expected = set()
        if operation.get("security"):
            expected |= {"401", "429"}
        if any(parameter["in"] == "path" for parameter in parameters):
            expected.add("404")
        if "requestBody" in operation:
            expected |= {"400", "413"}
        if any(parameter["in"] == "query" for parameter in parameters):
            expected.add("400")
        if (method, path) in ADMIN_ONLY:
            expected.add("403")
        assert expected <= set(responses), (label, sorted(expected - set(responses)))
        for status, response in responses.items():
            if status.startswith("4"):
                assert response["content"]["application/json"]["schema"] == {"$ref": ERROR_REF}, (label, status)
                assert response["description"], (label, status)
        assert list(responses) == sorted(responses), label
    paths = schema["paths"]
    assert "409" in paths["/commands/activate"]["post"]["responses"]
    assert "409" in paths["/account/{account_id}"]["delete"]["responses"]
    assert "413" in paths["/commands/add-messages"]["post"]["responses"]
    assert "Retry-After" in paths["/accounts"]["get"]["responses"]["429"]["headers"]
    assert set(paths["/ready"]["get"]["responses"]) == {"200", "503"}
    assert set(paths["/health"]["get"]["responses"]) == {"200"}


def _json_schema(node: Any) -> Any:
    """An OpenAPI 3.0 schema as JSON Schema: `nullable` becomes a null type."""
    if isinstance(node, list):
        return [_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: _json_schema(value) for key, value in node.items() if key != "nullable"}
    if node.get("nullable") and "type" in node:
        converted["type"] = [node["type"], "null"]
    return converted


class Walk:
    """Calls the API and checks each answer against what the schema documents for its status."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema = schema
        self.components = _json_schema(schema["components"])
        self.seen: set[tuple[str, str, int]] = set()

    def __call__(self, client: APIClient, method: str, template: str, status: int, body: Any = None,
                 query: str = "", **path: str) -> dict[str, Any]:
        url = template.format(**path) + (f"?{query}" if query else "")
        response = getattr(client, method)(url, body, format="json") if body is not None \
            else getattr(client, method)(url)
        label = f"{method.upper()} {template}"
        assert response.status_code == status, (label, response.status_code, response.content)
        documented = self.schema["paths"][template][method]["responses"].get(str(status))
        assert documented is not None, f"{label} answers {status}, which its schema does not document"
        answer = response.json()
        shape = documented["content"]["application/json"]["schema"]
        jsonschema.validate(answer, {"allOf": [_json_schema(shape)], "components": self.components})
        assert answer["ok"] is (status < 400), label
        self.seen.add((method, template, status))
        return dict(answer)


def test_every_answer_has_the_documented_status_and_envelope(
    api_client: APIClient, admin_client: APIClient, tenant: Tenant, client_for: Callable[[Tenant], APIClient],
) -> None:
    walk = Walk(_schema(api_client))
    own = client_for(tenant)
    walk(api_client, "get", "/accounts", 401)
    walk(own, "get", "/tenants", 403)
    walk(own, "get", "/tenants/sync-status", 403)
    walk(admin_client, "post", "/tenant", 201, {"id": "newco", "name": "New"})
    walk(admin_client, "post", "/tenant", 200, {"id": "newco", "name": "Renamed"})
    walk(admin_client, "get", "/tenants", 200)
    walk(admin_client, "get", "/tenants/sync-status", 200)
    walk(admin_client, "delete", "/tenant/{tenant_id}", 200, tenant_id="newco")

    walk(own, "post", "/account", 200, {"id": "main", "host": "smtp.example.com"})
    walk(own, "get", "/accounts", 200)
    walk(own, "get", "/account/{account_id}", 200, account_id="main")
    walk(own, "get", "/account/{account_id}", 404, account_id="nope")
    walk(own, "post", "/commands/add-messages", 400, {"messages": "not a list"})
    with override_settings(GMP_MAX_BATCH=1):
        walk(own, "post", "/commands/add-messages", 413, {"messages": [message(id="a"), message(id="b")]})
    walk(own, "post", "/commands/add-messages", 200, {"messages": [message(id="msg-1")]})
    walk(own, "get", "/messages", 200)
    walk(own, "get", "/messages", 400, query="status=nonsense")
    walk(own, "get", "/messages/{message_id}", 200, message_id="msg-1")
    walk(own, "get", "/messages/{message_id}", 404, message_id="nope")
    walk(own, "get", "/messages/{message_id}/receipts", 200, message_id="msg-1")
    walk(own, "delete", "/account/{account_id}", 409, account_id="main")

    walk(own, "post", "/commands/suspend", 200, {})
    walk(own, "post", "/commands/activate", 409, {"batch_code": "b1"})
    walk(own, "post", "/commands/activate", 200, {})
    walk(own, "post", "/commands/run-now", 200)
    walk(own, "post", "/commands/delete-messages", 200, {"ids": ["msg-1", "msg-2"]})
    walk(own, "post", "/commands/cleanup-messages", 200, {})
    walk(own, "delete", "/account/{account_id}", 200, account_id="main", query="force=true")

    walk(own, "get", "/tenant/{tenant_id}", 200, tenant_id="acme")
    walk(own, "get", "/tenant/{tenant_id}", 404, tenant_id="globex")
    walk(own, "put", "/tenant/{tenant_id}", 403, {"active": False}, tenant_id="acme")
    walk(own, "put", "/tenant/{tenant_id}", 200, {"name": "Acme"}, tenant_id="acme")
    walk(own, "delete", "/tenant/{tenant_id}", 403, tenant_id="acme")
    walk(own, "get", "/tenant/{tenant_id}/api-keys", 200, tenant_id="acme")
    issued = walk(own, "post", "/tenant/{tenant_id}/api-keys", 201, {"label": "spare"}, tenant_id="acme")
    rotated = walk(own, "post", "/tenant/{tenant_id}/api-keys/{prefix}/rotate", 201, tenant_id="acme",
                   prefix=issued["prefix"])
    walk(own, "delete", "/tenant/{tenant_id}/api-keys/{prefix}", 200, tenant_id="acme", prefix=rotated["prefix"])

    walk(own, "post", "/suppressions", 201, {"address": "gone@example.com"})
    walk(own, "post", "/suppressions", 200, {"address": "gone@example.com", "reason": "asked"})
    walk(own, "get", "/suppressions", 200)
    walk(own, "delete", "/suppressions/{address}", 200, address="gone@example.com")
    walk(own, "delete", "/suppressions/{address}", 404, address="gone@example.com")

    with override_settings(GMP_API_RATE="1/min"):
        walk(own, "get", "/accounts", 200)
        walk(own, "get", "/accounts", 429)
    assert len(walk.seen) > 40
