"""Oversized and hostile input: every answer is the JSON error shape with a 4xx, never a 500,
nothing is stored, and attachment bombs stop at the cap without exhausting the worker.
"""

from __future__ import annotations

import base64
import json
import tracemalloc
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from delivery import reports, services
from queueing.models import EventType, Message, MessageEvent, Status
from tenants.models import SmtpAccount, Tenant
from tests.conftest import message
from tests.security.servers import HostileServer
from tests.smtp_sink import SmtpSink

pytestmark = pytest.mark.django_db

POSTGRES = settings.DATABASES["default"]["ENGINE"].endswith("postgresql")
MB = 1024 * 1024



def assert_error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.content[:300])
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"ok", "error", "details"}, body
    assert body["ok"] is False, body
    assert body["error"], body
    return body


def _post_raw(client: APIClient, path: str, raw: bytes, content_type: str = "application/json", **extra: Any) -> Any:
    return client.generic("POST", path, raw, content_type=content_type, **extra)


def _nothing_stored(*, reported: bool = False) -> None:
    """No message row; with `reported`, the rejection's own error event (SPEC §4.1) is allowed."""
    assert not Message.objects.exists()
    events = MessageEvent.objects.exclude(event_type=EventType.ERROR) if reported else MessageEvent.objects.all()
    assert not events.exists()


# --- sizes ------------------------------------------------------------------------------


@override_settings(GMP_MAX_REQUEST_MB=1)
@pytest.mark.parametrize("path", ["/commands/add-messages", "/account", "/tenant/acme", "/suppressions"])
def test_a_body_over_the_request_limit_is_answered_413(raw_client: APIClient, account: SmtpAccount,
                                                        path: str) -> None:
    raw = json.dumps({"messages": [message(body="x" * (MB + 1000))]}).encode()
    method = "PUT" if path.startswith("/tenant/") else "POST"
    body = assert_error(raw_client.generic(method, path, raw, content_type="application/json"), 413)
    assert "1 MB" in body["error"]
    _nothing_stored()


@pytest.mark.parametrize("length", ["abc", "-1", "1e3", " "])
def test_a_bad_content_length_is_a_400(raw_client: APIClient, length: str) -> None:
    assert_error(_post_raw(raw_client, "/commands/add-messages", b'{"messages": []}', CONTENT_LENGTH=length), 400)


@override_settings(GMP_MAX_BATCH=3)
def test_a_batch_over_the_limit_is_a_413_with_nothing_stored(raw_client: APIClient, account: SmtpAccount) -> None:
    payloads = [message(id=f"m{i}") for i in range(4)] + [message(id="bad", to="nope")]
    body = assert_error(raw_client.post("/commands/add-messages", {"messages": payloads}, format="json"), 413)
    assert body["details"] == {"messages": 5, "limit": 3}
    _nothing_stored()


# --- shapes -----------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [100, 900, 2000, 10_000, 100_000])
@pytest.mark.parametrize("shape", ["lists", "objects", "inside a message"])
def test_deeply_nested_json_is_a_400(raw_client: APIClient, account: SmtpAccount, depth: int, shape: str) -> None:
    if shape == "lists":
        raw = "[" * depth + "]" * depth
    elif shape == "objects":
        raw = '{"a":' * depth + "1" + "}" * depth
    else:
        raw = ('{"messages": [{"id": "deep", "from": "a@example.com", "to": "b@example.com", "subject": "s", '
               '"headers": ' + "[" * depth + "]" * depth + "}]}")
    response = _post_raw(raw_client, "/commands/add-messages", raw.encode())
    if shape == "inside a message" and response.status_code == 200:  # a per-message rejection is fine too
        assert response.json()["rejected"][0]["field"] == "messages[0].headers"
    else:
        assert_error(response, 400)
    _nothing_stored(reported=True)


@pytest.mark.parametrize(("case", "raw"), [
    ("latin-1 inside a string", '{"messages": [{"id": "caf\xe9"}]}'.encode("latin-1")),
    ("utf-16 with a BOM", '{"messages": []}'.encode("utf-16")),
    ("bare 0xff bytes", b"\xff\xfe\xfd"),
    ("a UTF-8 BOM", b'\xef\xbb\xbf{"messages": []}'),
    ("truncated UTF-8", b'{"messages": [{"id": "\xe2\x82"}]}'),
    ("overlong UTF-8 slash", b'{"messages": [{"id": "\xc0\xaf"}]}'),
    ("not JSON at all", b"<xml/>"),
    ("empty", b""),
    ("NaN", b'{"messages": NaN}'),
])
def test_bodies_that_are_not_utf8_json_are_a_400(raw_client: APIClient, case: str, raw: bytes) -> None:
    assert_error(_post_raw(raw_client, "/commands/add-messages", raw), 400)
    _nothing_stored()


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml",
                                          "multipart/form-data; boundary=x"])
def test_anything_but_json_is_a_415(raw_client: APIClient, content_type: str) -> None:
    assert_error(_post_raw(raw_client, "/commands/add-messages", b'{"messages": []}', content_type), 415)


def test_a_request_with_thousands_of_http_headers_is_answered_normally(raw_client: APIClient,
                                                                     account: SmtpAccount) -> None:
    extra = {f"HTTP_X_FILLER_{i}": "v" * 50 for i in range(5000)}
    response = raw_client.get("/messages", **extra)
    assert response.status_code == 200


def test_a_message_with_ten_thousand_headers_is_refused_or_sent_whole(
    raw_client: APIClient, smtp_account: SmtpAccount, smtp_server: SmtpSink
) -> None:
    headers = {f"X-Filler-{i}": f"value {i}" for i in range(10_000)}
    response = raw_client.post("/commands/add-messages", {"messages": [message(headers=headers)]}, format="json")
    assert response.status_code in (200, 400, 413), response.status_code
    if response.status_code != 200 or response.json()["queued"] == 0:
        return
    services.send_due(account_pk=smtp_account.pk)
    row = Message.objects.get()
    assert row.status in (Status.SENT, Status.ERROR), (row.status, row.last_error)
    if row.status == Status.SENT:
        [received] = smtp_server.messages
        assert received.message["X-Filler-9999"] == "value 9999"


# --- NUL and lone surrogates ------------------------------------------------------------


@pytest.mark.parametrize("field", ["subject", "body", "body_text", "from", "to",
                                   "batch_code", "message_id", "reply_to", "tenant_id", "account_id"])
def test_a_nul_in_a_message_field_is_refused_naming_it(raw_client: APIClient, account: SmtpAccount,
                                                        field: str) -> None:
    value = {"from": "a\x00b@example.com", "to": "a\x00b@example.com", "reply_to": "a\x00b@example.com",
             "message_id": "<a\x00b@example.com>"}.get(field, "a\x00b")
    response = raw_client.post("/commands/add-messages", {"messages": [message(**{field: value})]}, format="json")
    assert response.status_code == 200, response.content[:300]
    [rejected] = response.json()["rejected"]
    assert rejected["field"] == f"messages[0].{field}", rejected
    _nothing_stored(reported=True)


@pytest.mark.parametrize(("case", "payload"), [
    ("header name", message(headers={"X-A\x00": "v"})),
    ("header value", message(headers={"X-A": "v\x00"})),
    ("attachment filename", message(attachments=[{"filename": "a\x00.txt", "storage_path": "base64:SGk="}])),
    ("message id", message(id="a\x00b")),
])
def test_a_nul_in_headers_ids_and_file_names_is_refused(raw_client: APIClient, account: SmtpAccount, case: str,
                                                        payload: dict[str, Any]) -> None:
    response = raw_client.post("/commands/add-messages", {"messages": [payload]}, format="json")
    assert response.status_code == 200, response.content[:300]
    assert response.json()["queued"] == 0
    _nothing_stored(reported=True)


@pytest.mark.parametrize(("case", "method", "path", "payload"), [
    ("endpoint storage_path", "post", "/commands/add-messages",
     {"messages": [message(attachments=[{"filename": "a.txt", "storage_path": "doc\x00id",
                                         "fetch_mode": "endpoint"}])]}),
    ("attachment auth token", "post", "/commands/add-messages",
     {"messages": [message(attachments=[{"filename": "a.txt", "storage_path": "doc=1", "fetch_mode": "endpoint",
                                         "auth": {"method": "bearer", "token": "t\x00"}}])]}),
    ("tenant bounce setting", "put", "/tenant/acme", {"bounce": {"imap_host": "imap\x00.example.com"}}),
    ("query parameter", "get", "/messages?batch_code=%00", None),
    ("message id in the path", "get", "/messages/a%00b", None),
    ("account id in the path", "get", "/account/a%00b", None),
    ("suppression in the path", "delete", "/suppressions/a%00b@example.com", None),
])
def test_a_nul_that_reaches_the_database_is_never_a_500(raw_client: APIClient, account: SmtpAccount, case: str,
                                                          method: str, path: str, payload: Any) -> None:
    """Refused with a 4xx, or taken as text where the database can hold it (SQLite can)."""
    if payload is None:
        response = getattr(raw_client, method)(path)
    else:
        response = getattr(raw_client, method)(path, payload, format="json")
    assert response.status_code < 500, (response.status_code, response.content[:200])
    if response.status_code >= 400:
        assert_error(response, response.status_code)


@pytest.mark.parametrize(("case", "method", "path", "raw"), [
    ("message subject", "post", "/commands/add-messages",
     '{"messages": [{"id": "m", "from": "a@example.com", "to": "b@example.com", "subject": "\\ud800", '
     '"body": "x"}]}'),
    ("message id", "post", "/commands/add-messages", '{"messages": [{"id": "\\udfff"}]}'),
    ("tenant name", "put", "/tenant/acme", '{"name": "\\ud800"}'),
    ("suppression reason", "post", "/suppressions", '{"address": "a@example.com", "reason": "\\ud800"}'),
    ("tenant bounce setting", "put", "/tenant/acme", '{"bounce": {"imap_host": "\\ud800"}}'),
])
def test_a_lone_surrogate_is_a_400(raw_client: APIClient, account: SmtpAccount, case: str, method: str, path: str,
                                   raw: str) -> None:
    response = raw_client.generic(method.upper(), path, raw.encode(), content_type="application/json")
    if response.status_code == 200 and path == "/commands/add-messages":
        assert response.json()["queued"] == 0
        return
    assert_error(response, 400)


# --- attachment bombs -------------------------------------------------------------------


@override_settings(GMP_MAX_ATTACHMENT_MB=1)
def test_a_base64_attachment_over_the_cap_is_refused(
    raw_client: APIClient, smtp_account: SmtpAccount, smtp_server: SmtpSink
) -> None:
    blob = base64.b64encode(b"x" * (MB + MB // 2)).decode()
    payload = message(attachments=[{"filename": "big.bin", "storage_path": f"base64:{blob}"}])
    answer = raw_client.post("/commands/add-messages", {"messages": [payload]}, format="json").json()
    if answer["queued"]:
        services.send_due(account_pk=smtp_account.pk)
        row = Message.objects.get()
        assert row.status == Status.ERROR, (row.status, row.last_error)
        assert "big.bin" in row.last_error
    else:
        assert answer["rejected"][0]["field"].startswith("messages[0].attachments[0]")
    assert smtp_server.messages == []


def _peak_while(action: Any) -> int:
    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()



@override_settings(GMP_MAX_ATTACHMENT_MB=1, GMP_ALLOWED_HOSTS=["127.0.0.1"])
@pytest.mark.parametrize(("route", "offered_mb"), [("/stream", 200), ("/gzip", 100)],
                         ids=["endless body", "gzip bomb"])
def test_an_http_attachment_over_the_cap_stops_at_the_cap_and_fails_clearly(
    tenant: Tenant, smtp_account: SmtpAccount, smtp_server: SmtpSink, hostile: HostileServer, route: str,
    offered_mb: int,
) -> None:
    from queueing.services import enqueue_messages

    url = f"{hostile.url}{route}?mb={offered_mb}"
    enqueue_messages(scope=tenant, payloads=[message(attachments=[{"filename": "bomb.bin", "storage_path": url}])])
    peak = _peak_while(lambda: services.send_due(account_pk=smtp_account.pk))
    row = Message.objects.get()
    assert row.status == Status.ERROR, (row.status, row.last_error)
    assert row.last_error == "attachment 'bomb.bin': larger than 1 MB (GMP_MAX_ATTACHMENT_MB)"
    assert smtp_server.messages == []
    assert peak < 24 * MB, f"the worker held {peak / MB:.0f} MB for a 1 MB cap"
    if route == "/stream":
        assert hostile.bytes_written["/stream"] < 32 * MB, "the fetch kept reading past the cap"


def test_a_tenant_answering_an_endless_report_reply_acknowledges_nothing(
    tenant: Tenant, hostile: HostileServer
) -> None:
    Tenant.objects.filter(pk=tenant.pk).update(client_base_url=hostile.url, client_sync_path="/stream?mb=200")
    MessageEvent.objects.create(tenant=tenant, external_id="m1", event_type=EventType.SENT,
                                occurred_at=timezone.now(), details={})
    peak = _peak_while(lambda: reports.report_tenant(tenant_id=tenant.pk))
    assert MessageEvent.objects.filter(reported_at__isnull=True).count() == 1
    tenant.refresh_from_db()
    assert "larger than" in tenant.sync_last_error, tenant.sync_last_error
    assert peak < 24 * MB
    assert hostile.bytes_written["/stream"] < 32 * MB




@pytest.mark.parametrize(("path", "field"), [
    ("/account", "connection_ttl"), ("/account", "imap_poll_interval"), ("/account", "limit_per_minute"),
    ("/tenant/acme", "retention_seconds"),
])
def test_an_out_of_range_integer_is_a_400(raw_client: APIClient, account: SmtpAccount, path: str,
                                           field: str) -> None:
    if path == "/account":
        response = raw_client.post(path, {"id": "main", "host": "smtp.example.com", field: 2**63}, format="json")
    else:
        response = raw_client.put(path, {field: 2**63}, format="json")
    body = assert_error(response, 400)
    assert field in body["details"]


@pytest.mark.parametrize("tenant_id", ["acme\x00", "ac\ud800me", "acme\n", "../acme", "x" * 65])
def test_the_admin_naming_a_tenant_no_tenant_can_have_gets_a_rejection(
    raw_client_for: Any, account: SmtpAccount, tenant_id: str
) -> None:
    raw = json.dumps({"messages": [message(id="m", tenant_id=tenant_id)]}).encode()  # \ud800 stays escaped
    response = _post_raw(raw_client_for(None), "/commands/add-messages", raw)
    assert response.status_code == 200, response.content[:300]
    body = response.json()
    assert body["queued"] == 0
    assert [(r["field"], r["reason"].startswith("tenant_id: ")) for r in body["rejected"]] == [
        ("messages[0].tenant_id", True)], body
    _nothing_stored()
