"""Messages given whole (`eml`): validated at the door, sent byte for byte with the proxy's headers."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from rest_framework.test import APIClient

from delivery import services, smtp
from queueing.models import Message, Status
from tenants.models import SmtpAccount
from tests.smtp_sink import SmtpSink

pytestmark = pytest.mark.django_db

RAW = (
    b"From: =?utf-8?q?J=C3=BCrgen?= <jurgen@example.com>\n"  # bare LF line ends, as files often have
    b"To: a@example.com, \"Smith, B\" <b@example.com>\n"
    b"Cc: c@example.com\n"
    b"Bcc: d@example.com\n"
    b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\n"
    b"Message-ID: <given@example.com>\n"
    b"X-Custom: kept\n"
    b"  folded continuation\n"
    b"Content-Type: text/plain; charset=utf-8\n"
    b"Content-Transfer-Encoding: 8bit\n"
    b"\n"
    b"Hall\xc3\xb6\n.\n..two dots\nbare\rCR\n"
)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def add(client: APIClient, **fields: Any) -> dict[str, Any]:
    response = client.post("/commands/add-messages", {"messages": [{"id": "e1", **fields}]}, format="json")
    assert response.status_code == 200, response.content
    return dict(response.json())


@pytest.fixture(autouse=True)
def _fresh_pool() -> Any:
    smtp.pool.close_all()
    yield
    smtp.pool.close_all()


def test_eml_is_listed_from_its_headers_and_sent_as_written(
    tenant_client: APIClient, smtp_account: SmtpAccount, smtp_server: SmtpSink
) -> None:
    assert add(tenant_client, eml=b64(RAW))["queued"] == 1
    stored = Message.objects.get(external_id="e1")
    assert stored.from_addr == "Jürgen <jurgen@example.com>"
    assert stored.to == ["a@example.com", '"Smith, B" <b@example.com>']
    assert (stored.cc, stored.bcc, stored.subject) == (["c@example.com"], ["d@example.com"], "Grüße")
    assert stored.message_id == "<given@example.com>"
    services.send_due(account_pk=smtp_account.pk)
    stored.refresh_from_db()
    assert stored.status == Status.SENT
    (received,) = smtp_server.messages
    assert sorted(received.rcpt_tos) == ["a@example.com", "b@example.com", "c@example.com", "d@example.com"]
    head, _, body = received.data.partition(b"\r\n\r\n")
    assert b"Bcc" not in head
    assert b"d@example.com" not in head
    assert head.count(b"Message-ID:") == 1
    assert b"Message-ID: <given@example.com>" in head
    assert f"X-Mail-Proxy-ID: {stored.pk}".encode() in head
    assert b"Date: " in head
    assert b"X-Custom: kept\r\n  folded continuation" in head
    assert body == b"Hall\xc3\xb6\r\n.\r\n..two dots\r\nbare\r\nCR\r\n"  # every line end is CRLF


def test_request_fields_win_over_the_eml_headers(
    tenant_client: APIClient, smtp_account: SmtpAccount, smtp_server: SmtpSink
) -> None:
    add(tenant_client, eml=b64(RAW), to=["other@example.com"], priority="immediate", batch_code="b1")
    stored = Message.objects.get(external_id="e1")
    assert (stored.to, stored.priority, stored.batch_code) == (["other@example.com"], 0, "b1")
    services.send_due(account_pk=smtp_account.pk)
    (received,) = smtp_server.messages
    assert sorted(received.rcpt_tos) == ["c@example.com", "d@example.com", "other@example.com"]
    assert b"To: a@example.com" in received.data  # the eml's own header is untouched


def test_an_eml_without_message_id_or_date_gets_them(
    tenant_client: APIClient, smtp_account: SmtpAccount, smtp_server: SmtpSink
) -> None:
    add(tenant_client, eml=b64(b"From: x@example.com\r\nTo: y@example.com\r\nMessage-ID: not an id\r\n\r\nhi\r\n"))
    stored = Message.objects.get(external_id="e1")
    assert stored.message_id.startswith("<")
    assert "@example.com>" in stored.message_id
    assert stored.subject == ""
    services.send_due(account_pk=smtp_account.pk)
    (received,) = smtp_server.messages
    assert received.message_id == stored.message_id
    assert b"not an id" not in received.data
    assert b"\r\nDate: " in received.data


@pytest.mark.parametrize(("fields", "reason"), [
    ({"eml": "%%% not base64"}, "eml: is not valid base64"),
    ({"eml": b64(b"no header here\r\n")}, "eml: has no header section"),
    ({"eml": b64(b"To: y@example.com\r\n\r\nhi")}, "from: is required"),
    ({"eml": b64(b"From: x@example.com\r\n\r\nhi")}, "to: at least one address is required"),
    ({"eml": b64(b"From: not-an-address\r\nTo: y@example.com\r\n\r\nhi")}, "from: 'not-an-address' is not a valid"),
    ({"eml": b64(RAW), "body": "also a body"}, "body: cannot be given with eml"),
    ({"eml": b64(RAW), "attachments": [{"filename": "a", "storage_path": "base64:AA=="}]},
     "attachments: cannot be given with eml"),
    ({"eml": 42}, "eml: must be the base64 of an RFC 5322 message"),
])
def test_a_bad_eml_is_rejected_naming_the_field_and_nothing_is_stored(
    tenant_client: APIClient, smtp_account: SmtpAccount, fields: dict[str, Any], reason: str
) -> None:
    answer = add(tenant_client, **fields)
    assert answer["queued"] == 0
    assert answer["rejected"][0]["reason"].startswith(reason), answer
    assert not Message.objects.exists()
