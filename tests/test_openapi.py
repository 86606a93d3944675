from __future__ import annotations

import json

import pytest
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db


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
