"""The Django email backend end to end: send_mail() → live API → stored message → SMTP sink."""

from __future__ import annotations

import email.message
from email.mime.application import MIMEApplication
from typing import Any

import pytest
from django.core import mail
from django.core.exceptions import ImproperlyConfigured
from django.core.mail import EmailMessage, EmailMultiAlternatives, get_connection, send_mail
from pytest_django.fixtures import SettingsWrapper
from pytest_django.live_server_helper import LiveServer

from delivery import services as delivery_services
from mailproxy_client import AuthenticationError, MessagesRejected, TransportError
from mailproxy_client.django import EmailBackend, message_payload
from queueing.models import Message, Status
from tenants.models import SmtpAccount
from tests.smtp_sink import Received, SmtpSink

pytestmark = pytest.mark.django_db(transaction=True)

BACKEND = "mailproxy_client.django.EmailBackend"
SENDER = "Shop <shop@example.com>"


@pytest.fixture
def configured(settings: SettingsWrapper, live_server: LiveServer, api_key: str,
               smtp_account: SmtpAccount) -> SettingsWrapper:
    settings.EMAIL_BACKEND = BACKEND
    settings.MAIL_PROXY_URL = live_server.url
    settings.MAIL_PROXY_TOKEN = api_key
    settings.MAIL_PROXY_TIMEOUT = 20
    return settings


def deliver(account: SmtpAccount, sink: SmtpSink, count: int = 1) -> list[Received]:
    """Let the proxy send what it queued, as a worker would."""
    delivery_services.send_due(account_pk=account.pk)
    return sink.wait_for(count)


def parts(mail_message: email.message.EmailMessage) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for part in mail_message.walk():
        if part.is_multipart():
            continue
        key = part.get_filename() or part.get_content_type()
        found[key] = part.get_payload(decode=True)
    return found


def test_send_mail_goes_out_over_smtp(configured: SettingsWrapper, smtp_account: SmtpAccount,
                                      smtp_server: SmtpSink) -> None:
    assert send_mail("Order shipped", "Your parcel is on its way.", SENDER, ["buyer@example.com"]) == 1
    row = Message.objects.get()
    assert (row.tenant_id, row.status, row.priority) == ("acme", Status.QUEUED, 2)
    [received] = deliver(smtp_account, smtp_server)
    assert received.mail_from == "shop@example.com"
    assert received.rcpt_tos == ("buyer@example.com",)
    assert received.message["Subject"] == "Order shipped"
    assert received.message["From"] == SENDER
    assert received.message.get_content().strip() == "Your parcel is on its way."
    assert Message.objects.get().status == Status.SENT


def test_send_mail_with_html_message(configured: SettingsWrapper, smtp_account: SmtpAccount,
                                     smtp_server: SmtpSink) -> None:
    send_mail("Hi", "plain words", SENDER, ["a@example.com"], html_message="<p>html words</p>")
    [received] = deliver(smtp_account, smtp_server)
    assert received.message.get_content_type() == "multipart/alternative"
    found = parts(received.message)
    assert found["text/plain"].strip() == b"plain words"
    assert found["text/html"].strip() == b"<p>html words</p>"


def test_multi_alternatives_with_everything(configured: SettingsWrapper, smtp_account: SmtpAccount,
                                            smtp_server: SmtpSink) -> None:
    pdf = b"%PDF-1.4\n\x00\xff\xfe binary \r\n bytes"
    blob = MIMEApplication(b"\x01\x02\x03 raw", "octet-stream")
    blob.add_header("Content-Disposition", "attachment", filename="blob.bin")
    message = EmailMultiAlternatives(
        subject="Grüße aus Köln", body="The plain text.", from_email=SENDER, to=["to@example.com"],
        cc=["Copy <cc@example.com>"], bcc=["hidden@example.com"],
        reply_to=["replies@example.com", "second@example.com"],
        headers={"X-Campaign": "spring", "X-Mail-Proxy-Priority": "high", "X-Mail-Proxy-Batch-Code": "spring-24",
                 "Message-ID": "<order-7@shop.example.com>"},
    )
    message.attach_alternative("<h1>The HTML</h1>", "text/html")
    message.attach("invoice.pdf", pdf, "application/pdf")
    message.attach("notes.txt", "naïve notes", "text/plain")
    message.attach(blob)
    assert message.send() == 1

    row = Message.objects.get()
    assert row.external_id == message.mail_proxy_id  # type: ignore[attr-defined]
    assert len(message.mail_proxy_id) == 32  # type: ignore[attr-defined]
    assert message.mail_proxy_rejection is None  # type: ignore[attr-defined]
    assert (row.priority, row.batch_code, row.message_id) == (1, "spring-24", "<order-7@shop.example.com>")
    assert row.headers == {"X-Campaign": "spring"}

    [received] = deliver(smtp_account, smtp_server)
    sent = received.message
    assert sorted(received.rcpt_tos) == ["cc@example.com", "hidden@example.com", "to@example.com"]
    assert sent["Bcc"] is None
    assert b"hidden@example.com" not in received.data
    assert sent["Subject"] == "Grüße aus Köln"
    assert sent["Cc"] == "Copy <cc@example.com>"
    assert sent["Reply-To"] == "replies@example.com"
    assert sent["X-Campaign"] == "spring"
    assert sent["Message-ID"] == "<order-7@shop.example.com>"
    assert all(sent[name] is None for name in ("X-Mail-Proxy-Priority", "X-Mail-Proxy-Batch-Code"))
    found = parts(sent)
    assert found["text/plain"].strip() == b"The plain text."
    assert found["text/html"].strip() == b"<h1>The HTML</h1>"
    assert found["invoice.pdf"] == pdf
    assert found["notes.txt"] == "naïve notes".encode()
    assert found["blob.bin"] == b"\x01\x02\x03 raw"
    types = {part.get_filename(): part.get_content_type() for part in sent.iter_attachments()}
    assert types == {"invoice.pdf": "application/pdf", "notes.txt": "text/plain",
                     "blob.bin": "application/octet-stream"}


def test_html_body_is_sent_as_html(configured: SettingsWrapper, smtp_account: SmtpAccount,
                                   smtp_server: SmtpSink) -> None:
    message = EmailMessage("News", "<b>bold</b>", SENDER, ["a@example.com"])
    message.content_subtype = "html"
    message.send()
    [received] = deliver(smtp_account, smtp_server)
    assert received.message.get_content_type() == "text/html"
    assert received.message.get_content().strip() == "<b>bold</b>"


def test_from_header_override_keeps_from_email_as_envelope_sender(
    configured: SettingsWrapper, smtp_account: SmtpAccount, smtp_server: SmtpSink
) -> None:
    EmailMessage("Hi", "body", "bounces@example.com", ["a@example.com"], headers={"From": SENDER}).send()
    [received] = deliver(smtp_account, smtp_server)
    assert received.message["From"] == SENDER
    assert received.mail_from == "bounces@example.com"


def test_own_id_header_names_the_message(configured: SettingsWrapper, live_server: LiveServer) -> None:
    message = EmailMessage("Hi", "body", SENDER, ["a@example.com"],
                           headers={"X-Mail-Proxy-Message-Id": "order-42", "X-Mail-Proxy-Account": "main",
                                    "X-Mail-Proxy-Priority": "0"})
    message.send()
    assert message.mail_proxy_id == "order-42"  # type: ignore[attr-defined]
    assert list(Message.objects.values_list("external_id", "priority", "account__external_id", "headers")) == [
        ("order-42", 0, "main", {})]


def test_settings_give_account_priority_and_batch(configured: SettingsWrapper) -> None:
    configured.MAIL_PROXY_ACCOUNT_ID = "main"
    configured.MAIL_PROXY_PRIORITY = "low"
    configured.MAIL_PROXY_BATCH_CODE = "newsletter"
    send_mail("Hi", "body", SENDER, ["a@example.com"])
    assert list(Message.objects.values_list("account__external_id", "priority", "batch_code")) == [
        ("main", 3, "newsletter")]


def test_unknown_account_in_settings_is_a_rejection(configured: SettingsWrapper) -> None:
    configured.MAIL_PROXY_ACCOUNT_ID = "nope"
    with pytest.raises(MessagesRejected) as caught:
        send_mail("Hi", "body", SENDER, ["a@example.com"])
    assert caught.value.rejected[0].reason == "account_id: account 'nope' not found"


def test_one_send_messages_call_is_one_request(configured: SettingsWrapper) -> None:
    messages = [EmailMessage(f"n{i}", "body", SENDER, [f"r{i}@example.com"]) for i in range(3)]
    with get_connection() as connection:
        assert connection.send_messages(messages) == 3
    # One add-messages request is one transaction with one clock reading.
    assert Message.objects.values("created_at").distinct().count() == 1
    assert sorted(Message.objects.values_list("external_id", flat=True)) == sorted(
        m.mail_proxy_id for m in messages)  # type: ignore[attr-defined]


def test_more_than_a_thousand_messages_go_in_chunks(configured: SettingsWrapper) -> None:
    messages = [EmailMessage("bulk", "body", SENDER, [f"r{i}@example.com"]) for i in range(1001)]
    assert get_connection().send_messages(messages) == 1001
    assert Message.objects.count() == 1001
    assert Message.objects.values("created_at").distinct().count() == 2


def test_message_without_recipients_is_skipped(configured: SettingsWrapper) -> None:
    assert get_connection().send_messages([EmailMessage("Hi", "body", SENDER, [])]) == 0
    assert not Message.objects.exists()


def test_rejected_message_raises_listing_it_after_the_others_are_queued(configured: SettingsWrapper) -> None:
    good = EmailMessage("ok", "body", SENDER, ["a@example.com"])
    bad = EmailMessage("bad", "body", SENDER, ["not-an-address"])
    with pytest.raises(MessagesRejected) as caught:
        get_connection().send_messages([good, bad])
    error = caught.value
    assert error.queued == 1
    assert [(item.id, item.reason) for item in error.rejected] == [
        (bad.mail_proxy_id, "to: 'not-an-address' is not a valid address")]  # type: ignore[attr-defined]
    assert bad.mail_proxy_id in str(error)  # type: ignore[attr-defined]
    assert bad.mail_proxy_rejection == "to: 'not-an-address' is not a valid address"  # type: ignore[attr-defined]
    assert list(Message.objects.values_list("external_id", flat=True)) == [good.mail_proxy_id]  # type: ignore


def test_rejected_message_with_fail_silently_counts_what_was_queued(configured: SettingsWrapper) -> None:
    good = EmailMessage("ok", "body", SENDER, ["a@example.com"])
    bad = EmailMessage("bad", "body", SENDER, ["not-an-address"])
    assert get_connection(fail_silently=True).send_messages([good, bad]) == 1
    assert send_mail("bad", "body", SENDER, ["still-bad"], fail_silently=True) == 0
    assert Message.objects.count() == 1


def test_alternative_the_proxy_cannot_carry_is_refused_before_sending(configured: SettingsWrapper) -> None:
    invite = EmailMultiAlternatives("Invite", "see calendar", SENDER, ["a@example.com"])
    invite.attach_alternative("BEGIN:VCALENDAR", "text/calendar")
    with pytest.raises(MessagesRejected) as caught:
        invite.send()
    assert "text/calendar" in caught.value.rejected[0].reason
    assert not Message.objects.exists()


def test_proxy_down_raises_or_is_silent(settings: SettingsWrapper, closed_port: int) -> None:
    settings.EMAIL_BACKEND = BACKEND
    settings.MAIL_PROXY_URL = f"http://127.0.0.1:{closed_port}"
    settings.MAIL_PROXY_TOKEN = "token"
    with pytest.raises(TransportError):
        send_mail("Hi", "body", SENDER, ["a@example.com"])
    assert send_mail("Hi", "body", SENDER, ["a@example.com"], fail_silently=True) == 0


def test_bad_token_raises_authentication_error(configured: SettingsWrapper) -> None:
    configured.MAIL_PROXY_TOKEN = "wrong"
    with pytest.raises(AuthenticationError) as caught:
        send_mail("Hi", "body", SENDER, ["a@example.com"])
    assert caught.value.status == 401
    assert send_mail("Hi", "body", SENDER, ["a@example.com"], fail_silently=True) == 0


def test_missing_settings_are_improperly_configured(settings: SettingsWrapper) -> None:
    settings.EMAIL_BACKEND = BACKEND
    settings.MAIL_PROXY_URL = ""
    with pytest.raises(ImproperlyConfigured):
        get_connection()


def test_backend_arguments_win_over_settings(configured: SettingsWrapper) -> None:
    backend = get_connection(BACKEND, batch_code="from-kwargs", priority=0)
    assert isinstance(backend, EmailBackend)
    backend.send_messages([EmailMessage("Hi", "body", SENDER, ["a@example.com"])])
    row = Message.objects.get()
    assert (row.batch_code, row.priority) == ("from-kwargs", 0)


def test_payload_of_a_django_message() -> None:
    message = EmailMultiAlternatives("S", "text", SENDER, ["a@example.com"], reply_to=['"Doe, J" <j@example.com>'])
    message.attach_alternative("<p>x</p>", "text/html")
    message.attach(None, b"\x00", "application/octet-stream")
    payload = message_payload(message, account_id="main")
    assert payload == {
        "id": message.mail_proxy_id,  # type: ignore[attr-defined]
        "from": SENDER, "to": ["a@example.com"], "subject": "S", "body_text": "text", "body_html": "<p>x</p>",
        "reply_to": '"Doe, J" <j@example.com>', "account_id": "main",
        "attachments": [{"filename": "attachment-1.bin", "storage_path": "base64:AA==",
                         "mime_type": "application/octet-stream"}],
    }
    assert mail.outbox == []
