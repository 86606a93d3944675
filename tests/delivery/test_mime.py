"""The message bytes: the direct writer of one-part messages against the email package."""

from __future__ import annotations

from email import message_from_bytes
from email.message import EmailMessage
from email.policy import SMTP
from email.policy import default as default_policy
from typing import Any

import pytest

from delivery.mime import addr_spec, build_envelope
from queueing.models import ContentType, Message
from tenants.models import Tenant

BODIES = [
    "Hi there",
    "",
    "\n",
    "line one\nline two\n",
    "windows\r\nline ends\r\nand a lone\rcarriage return",
    "trailing spaces   \nand a tab\t\nend",
    ".\n..\nFrom the start of a line\n.lone dot above",
    "x" * 300,
    "word " * 200,
    "Grüße, 日本語, emoji 📨, a soft hyphen\u00ad and a NBSP\u00a0here",
    "=3D already looks encoded =\n=",
    "form\x0cfeed, vertical\x0btab, unit\x1fseparator, next line\x85, line sep\u2028para\u2029end",
]


def make(**fields: Any) -> Message:
    values: dict[str, Any] = {
        "pk": 4242, "tenant": Tenant(id="t", name="t"), "external_id": "x", "from_addr": "sender@example.com",
        "to": ["rcpt@example.com"], "cc": [], "bcc": [], "subject": "Hello", "body": "Hi there",
        "content_type": ContentType.PLAIN, "body_text": "", "body_html": "", "headers": {}, "attachments": [],
        "raw_eml": None, "message_id": "<abc.1@example.com>", "reply_to": "", "return_path": "", "refused": [],
    }
    values.update(fields)
    return Message(**values)


def by_the_email_package(message: Message, date: str) -> bytes:
    """The message as EmailMessage and its content manager write it."""
    mail = EmailMessage()
    mail["From"] = message.from_addr
    if message.to:
        mail["To"] = ", ".join(message.to)
    if message.cc:
        mail["Cc"] = ", ".join(message.cc)
    if message.reply_to:
        mail["Reply-To"] = message.reply_to
    mail["Subject"] = message.subject
    mail["Date"] = date
    mail["Message-ID"] = message.message_id
    mail["X-Mail-Proxy-ID"] = mail["X-Genro-Mail-ID"] = str(message.pk)
    for name, value in message.headers.items():
        mail[name] = value
    html = message.content_type == ContentType.HTML and not message.body_text
    text = message.body_text or message.body
    mail.set_content(text, subtype="html" if html else "plain", cte="quoted-printable")
    return mail.as_bytes(policy=SMTP)


def date_of(data: bytes) -> str:
    return str(message_from_bytes(data, policy=default_policy)["Date"])


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("content_type", [ContentType.PLAIN, ContentType.HTML])
def test_a_one_part_message_is_written_as_the_email_package_writes_it(body: str, content_type: str) -> None:
    message = make(body=body, content_type=content_type, cc=["c@example.com", "Dee <d@example.com>"],
                   reply_to="reply@example.com",
                   headers={"X-Campaign": "spring", "List-Unsubscribe": "<mailto:u@x.io>"})
    data = build_envelope(message).data
    assert data == by_the_email_package(message, date_of(data))


@pytest.mark.parametrize("body_text", ["plain alternative only", "Grüße\n" * 40])
def test_body_text_alone_is_one_part_too(body_text: str) -> None:
    message = make(body="", body_text=body_text)
    data = build_envelope(message).data
    assert data == by_the_email_package(message, date_of(data))


@pytest.mark.parametrize("fields", [
    {"subject": "Grüße aus München"},  # encoded word
    {"subject": "a long subject " * 8},  # folded
    {"from_addr": "Jürgen Müller <j@example.com>"},
    {"to": [f"recipient{i}@example.com" for i in range(6)]},
    {"headers": {"X-Note": "naïve"}},
])
def test_headers_to_encode_or_fold_go_through_the_email_package(fields: dict[str, Any]) -> None:
    message = make(**fields)
    data = build_envelope(message).data
    assert data == by_the_email_package(message, date_of(data))
    assert all(len(line) <= 78 for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"))
    assert data.split(b"\r\n\r\n", 1)[0].isascii()


def test_a_second_unique_header_is_refused_as_before() -> None:
    with pytest.raises(ValueError, match="at most 1"):
        build_envelope(make(headers={"Sender": "a@example.com", "sender": "b@example.com"}))


def test_bare_and_named_addresses_give_their_addr_spec() -> None:
    assert addr_spec("a.b+c@example.com") == "a.b+c@example.com"
    assert addr_spec("Dee <d@example.com>") == "d@example.com"
    assert addr_spec('"Doe, J" <j@example.com>') == "j@example.com"
    assert addr_spec(" a@example.com ") == "a@example.com"
