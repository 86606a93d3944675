"""Header injection and SMTP smuggling, through the API door and the real send path.

The door must refuse a line break in anything that becomes a header or an envelope
address, naming the field. Bodies may hold anything: whatever their line ends and lone
dots, the SMTP server must receive exactly one message per message sent (one MAIL FROM
each), whose body is the intended one with its line ends made CRLF — the 2023 "SMTP
smuggling" sequences (`\\n.\\r\\n`, `\\r.\\r`, bare LF or CR around a dot) included, for
composed messages and for messages given whole (`eml`).
"""

from __future__ import annotations

import base64
import re
from typing import Any

import pytest
from rest_framework.test import APIClient

from delivery import services
from queueing.models import Message, Status
from tenants.models import SmtpAccount
from tests.conftest import message
from tests.smtp_sink import SmtpSink

pytestmark = pytest.mark.django_db

INJECTION = "\r\nBcc: evil@example.com"
SMUGGLE = ("\r\n.\r\nMAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\n"
           "Subject: smuggled\r\n\r\nevil")


# --- the door ---------------------------------------------------------------------------


def _with_break(brk: str) -> list[tuple[str, dict[str, Any], str]]:
    """(case, message fields, the field the rejection must name) for one line break."""
    evil = brk + "Bcc: evil@example.com"
    return [
        ("subject", {"subject": f"Hello{evil}"}, "subject"),
        ("from", {"from": f"sender@example.com{evil}"}, "from"),
        ("from display name", {"from": f"Sender{evil} <sender@example.com>"}, "from"),
        ("to as a string", {"to": f"rcpt@example.com{evil}"}, "to"),
        ("to in a list", {"to": ["ok@example.com", f"rcpt@example.com{evil}"]}, "to"),
        ("cc", {"cc": f"cc@example.com{evil}"}, "cc"),
        ("bcc", {"bcc": [f"bcc@example.com{evil}"]}, "bcc"),
        ("reply_to", {"reply_to": f"reply@example.com{evil}"}, "reply_to"),
        ("return_path", {"return_path": f"bounce@example.com{brk}RCPT TO:<evil@example.com>"}, "return_path"),
        ("header value", {"headers": {"X-Campaign": f"spring{evil}"}}, "headers.X-Campaign"),
        ("header name", {"headers": {f"X-Campaign{evil}": "spring"}}, "headers"),
        ("message_id", {"message_id": f"<a@example.com>{evil}"}, "message_id"),
        ("batch_code", {"batch_code": f"spring{evil}"}, "batch_code"),
        ("attachment filename", {"attachments": [
            {"filename": f"a.txt{evil}", "storage_path": "base64:SGVsbG8=", "fetch_mode": "base64"}]},
         "attachments[0].filename"),
    ]


CRLF_CASES = [(f"{case} {name}", fields, field) for name, brk in (("CRLF", "\r\n"), ("LF", "\n"), ("CR", "\r"))
              for case, fields, field in _with_break(brk)]


@pytest.mark.parametrize(("case", "fields", "field"), CRLF_CASES, ids=[case for case, _, _ in CRLF_CASES])
def test_a_line_break_in_a_header_or_address_is_refused_naming_the_field(
    tenant_client: APIClient, account: SmtpAccount, case: str, fields: dict[str, Any], field: str
) -> None:
    answer = tenant_client.post("/commands/add-messages", {"messages": [message(**fields)]}, format="json").json()
    assert answer["queued"] == 0, f"{case} was accepted"
    [rejected] = answer["rejected"]
    assert rejected["field"] == f"messages[0].{field}", rejected
    assert rejected["reason"].startswith(f"{field}: "), rejected
    assert not Message.objects.exists()


# Characters Python's str.splitlines() (and so the email package) treats as line breaks, besides CR and LF.
UNICODE_BREAKS = {"VT": "\x0b", "FF": "\x0c", "FS": "\x1c", "GS": "\x1d", "RS": "\x1e", "NEL": "\x85",
                  "LINE SEPARATOR": "\u2028", "PARAGRAPH SEPARATOR": "\u2029"}
@pytest.mark.parametrize("where", ["subject", "header value"])
@pytest.mark.parametrize("name", list(UNICODE_BREAKS))
def test_other_line_breaks_are_refused_or_sent_as_one_harmless_message(
    tenant_client: APIClient, smtp_account: SmtpAccount, smtp_server: SmtpSink, name: str, where: str
) -> None:
    evil = f"spring{UNICODE_BREAKS[name]}Bcc: evil@example.com"
    fields = {"subject": evil} if where == "subject" else {"headers": {"X-Campaign": evil}}
    answer = tenant_client.post("/commands/add-messages", {"messages": [message(**fields)]}, format="json").json()
    if answer["queued"] == 0:
        [rejected] = answer["rejected"]
        assert rejected["field"] in ("messages[0].subject", "messages[0].headers.X-Campaign")
        return
    services.send_due(account_pk=smtp_account.pk)
    [received] = smtp_server.messages
    assert received.rcpt_tos == ("rcpt@example.com",)
    assert received.message["Bcc"] is None


def test_one_poisoned_message_does_not_stop_the_rest_of_its_batch(
    tenant_client: APIClient, smtp_account: SmtpAccount, smtp_server: SmtpSink
) -> None:
    tenant_client.post("/commands/add-messages", {"messages": [
        message(id="poison", subject="spring"), message(id="fine", subject="fine"),
    ]}, format="json")
    # The door refuses it now; a row stored by an older version, or written by hand, may still hold one.
    Message.objects.filter(external_id="poison").update(subject="spring\u2028Bcc: evil@example.com")
    services.send_due(account_pk=smtp_account.pk)
    assert [m.subject for m in smtp_server.messages] == ["fine"]
    assert Message.objects.get(external_id="poison").status == Status.ERROR


# --- bodies through the real send path --------------------------------------------------

BODIES = {
    "a lone dot line": "before\r\n.\r\nafter",
    "only a dot": ".",
    "starts with a dot": ".hidden\r\nline",
    "two dots": "..\r\n.",
    "CRLF dot CRLF then commands": f"intro{SMUGGLE}\r\n.\r\n",
    "bare LF dot bare LF": "intro\n.\nMAIL FROM:<evil@example.com>\nRCPT TO:<victim@example.com>\nDATA\nevil\n.\n",
    "LF dot CRLF": "intro\n.\r\nMAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\nevil",
    "CRLF dot LF": "intro\r\n.\nMAIL FROM:<evil@example.com>\nevil",
    "bare CR dot bare CR": "intro\r.\rMAIL FROM:<evil@example.com>\rRCPT TO:<victim@example.com>\rDATA\revil",
    "CR dot CRLF": "intro\r.\r\nMAIL FROM:<evil@example.com>\r\nevil",
    "bare CR": "one\rtwo",
    "mixed ends": "a\r\nb\nc\rd\r\n.\n.\r.\r\n",
    "ends with CRLF dot": "the end\r\n.",
}


def _crlf(text: str) -> str:
    normal = re.sub(r"\r\n|\r|\n", "\r\n", text)
    return normal if normal.endswith("\r\n") else normal + "\r\n"


def _only_one_transaction(smtp_server: SmtpSink, sent: int) -> None:
    assert len(smtp_server.messages) == sent
    assert smtp_server.transactions == sent, "a second MAIL FROM reached the server"
    for received in smtp_server.messages:
        assert received.mail_from == "sender@example.com"
        assert received.rcpt_tos == ("rcpt@example.com",)


@pytest.mark.parametrize("case", list(BODIES))
@pytest.mark.parametrize("shape", ["plain", "html", "alternative"])
def test_a_hostile_body_arrives_as_one_message_with_that_body(
    tenant_client: APIClient, smtp_account: SmtpAccount, smtp_server: SmtpSink, case: str, shape: str
) -> None:
    body = BODIES[case]
    fields = {"plain": {"body": body}, "html": {"body": body, "content_type": "html"},
              "alternative": {"body": ..., "body_text": body, "body_html": f"<p>{body}</p>"}}[shape]
    answer = tenant_client.post("/commands/add-messages", {"messages": [message(**fields)]}, format="json").json()
    assert answer["queued"] == 1, answer
    services.send_due(account_pk=smtp_account.pk)
    _only_one_transaction(smtp_server, 1)
    mail = smtp_server.messages[0].message
    assert mail["Subject"] == "Hello"
    part = mail.get_body(preferencelist=("html",) if shape == "html" else ("plain",))
    assert part is not None
    assert part.get_content() == _crlf(body)


def test_every_hostile_body_in_one_batch_over_one_connection(
    tenant_client: APIClient, smtp_account: SmtpAccount, smtp_server: SmtpSink
) -> None:
    payloads = [message(id=f"m{index}", subject=f"case {index}", body=body)
                for index, body in enumerate(BODIES.values())]
    answer = tenant_client.post("/commands/add-messages", {"messages": payloads}, format="json").json()
    assert answer["queued"] == len(payloads)
    services.send_due(account_pk=smtp_account.pk)
    _only_one_transaction(smtp_server, len(BODIES))
    assert smtp_server.connections == 1
    by_subject = {m.subject: m.message for m in smtp_server.messages}
    for index, body in enumerate(BODIES.values()):
        part = by_subject[f"case {index}"].get_body(preferencelist=("plain",))
        assert part is not None
        assert part.get_content() == _crlf(body)


# --- messages given whole (eml) ---------------------------------------------------------

EML_HEAD = b"From: Sender <sender@example.com>\r\nTo: rcpt@example.com\r\nSubject: given whole\r\n"
EML_BODIES = {name: body.encode() for name, body in BODIES.items()}
EML_BODIES["raw 8-bit with a smuggle"] = "caf\u00e9\n.\r\nMAIL FROM:<evil@example.com>\r\n".encode()


def _eml(body: bytes, head: bytes = EML_HEAD) -> str:
    return base64.b64encode(head + b"\r\n" + body).decode()


def _crlf_bytes(data: bytes) -> bytes:
    normal = re.sub(rb"\r\n|\r|\n", b"\r\n", data)
    return normal if normal.endswith(b"\r\n") else normal + b"\r\n"


def _received_body(data: bytes) -> bytes:
    return data.split(b"\r\n\r\n", 1)[1]


@pytest.mark.parametrize("case", list(EML_BODIES))
def test_a_hostile_eml_body_arrives_as_one_message_byte_for_byte(
    tenant_client: APIClient, smtp_account: SmtpAccount, smtp_server: SmtpSink, case: str
) -> None:
    body = EML_BODIES[case]
    payload = {"id": "whole", "eml": _eml(body)}
    answer = tenant_client.post("/commands/add-messages", {"messages": [payload]}, format="json").json()
    assert answer["queued"] == 1, answer
    services.send_due(account_pk=smtp_account.pk)
    _only_one_transaction(smtp_server, 1)
    assert _crlf_bytes(_received_body(smtp_server.messages[0].data)) == _crlf_bytes(body)


@pytest.mark.parametrize("head", [
    EML_HEAD + b".\r\nMAIL FROM:<evil@example.com>\r\n",
    EML_HEAD + b"X-Note: a\n.\nRCPT TO:<victim@example.com>\n",
    EML_HEAD + b"X-Note: a\r.\rDATA\r",
], ids=["dot line in the header", "bare LF dot in a header", "bare CR dot in a header"])
def test_smuggling_in_an_eml_header_section_stays_inside_one_message(
    tenant_client: APIClient, smtp_account: SmtpAccount, smtp_server: SmtpSink, head: bytes
) -> None:
    payload = {"id": "whole", "eml": _eml(b"the body\r\n", head=head)}
    answer = tenant_client.post("/commands/add-messages", {"messages": [payload]}, format="json").json()
    if answer["queued"] == 0:  # refusing such a header section is fine too
        assert answer["rejected"][0]["field"].startswith("messages[0].eml")
        return
    services.send_due(account_pk=smtp_account.pk)
    _only_one_transaction(smtp_server, 1)
    assert smtp_server.messages[0].data.endswith(b"the body\r\n")
