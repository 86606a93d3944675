"""A bounce of a message the proxy really sent: correlated, reported, suppressed."""

from __future__ import annotations

import pytest

from bounces import services
from bounces.models import Bounce
from delivery import reports
from delivery import services as delivery
from queueing.models import EventType, Message, MessageEvent, Suppression
from queueing.services import enqueue_messages
from tenants.models import SmtpAccount, Tenant
from tests.conftest import message
from tests.smtp_sink import SmtpSink
from tests.tenant_app import TenantApp

pytestmark = pytest.mark.django_db


def dsn_for(original: bytes, recipient: str, status: str, diagnostic: str, action: str = "failed") -> bytes:
    """An RFC 3464 report as a receiving MTA writes it, quoting the original's headers."""
    headers = original.split(b"\r\n\r\n", 1)[0]
    per_recipient = (f"Final-Recipient: rfc822; {recipient}\r\nAction: {action}\r\nStatus: {status}\r\n"
                     f"Diagnostic-Code: smtp; {diagnostic}\r\n")
    return (
        b"From: MAILER-DAEMON@mx.example.net\r\nTo: sender@example.com\r\n"
        b"Subject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        b"--B\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        b"--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\n"
        + per_recipient.encode()
        + b"--B\r\nContent-Type: text/rfc822-headers\r\n\r\n" + headers + b"\r\n--B--\r\n"
    )


@pytest.fixture
def sent(tenant: Tenant, smtp_account: SmtpAccount, smtp_server: SmtpSink) -> tuple[Message, bytes]:
    enqueue_messages(scope=tenant, payloads=[message(id="m", to=["gone@example.com", "full@example.com"])])
    delivery.send_due(account_pk=smtp_account.pk)
    return Message.objects.get(external_id="m"), smtp_server.wait_for(1)[0].data


def test_hard_bounce_is_reported_and_suppresses_the_address(
    tenant: Tenant, sent: tuple[Message, bytes], tenant_app: TenantApp
) -> None:
    stored, data = sent
    raw = dsn_for(data, "gone@example.com", "5.1.1", "550 5.1.1 <gone@example.com>: user unknown")
    assert services.record_bounce(raw) == 1
    bounce = Bounce.objects.get()
    assert (bounce.message, bounce.recipient, bounce.kind) == (stored, "gone@example.com", "hard")
    assert bounce.status == "5.1.1"
    suppression = Suppression.objects.get(tenant=tenant)
    assert suppression.address == "gone@example.com"
    assert suppression.source == "bounce"
    Tenant.objects.filter(pk=tenant.pk).update(client_base_url=tenant_app.url)
    reports.report_tenant(tenant_id=tenant.pk)
    items = [item for call in tenant_app.calls for item in call.items if item["event"] == "bounce"]
    assert len(items) == 1
    item = items[0]
    assert (item["id"], item["pk"], item["bounce_type"], item["bounce_code"], item["recipient"]) == (
        "m", stored.pk, "hard", "5.1.1", "gone@example.com")
    assert "user unknown" in item["bounce_reason"]
    assert item["bounce_ts"] > 0


def test_the_same_bounce_read_twice_is_recorded_once(sent: tuple[Message, bytes]) -> None:
    _, data = sent
    raw = dsn_for(data, "gone@example.com", "5.1.1", "550 user unknown")
    assert services.record_bounce(raw) == 1
    assert services.record_bounce(raw) == 0
    assert MessageEvent.objects.filter(event_type=EventType.BOUNCE).count() == 1


def test_mailbox_full_is_soft_and_does_not_suppress(sent: tuple[Message, bytes]) -> None:
    _, data = sent
    services.record_bounce(dsn_for(data, "full@example.com", "5.2.2", "552 mailbox full"))
    assert Bounce.objects.get().kind == "soft"
    assert not Suppression.objects.exists()


def test_delayed_report_is_recorded_but_is_no_bounce(sent: tuple[Message, bytes]) -> None:
    _, data = sent
    services.record_bounce(dsn_for(data, "full@example.com", "4.4.7", "still trying", action="delayed"))
    assert Bounce.objects.get().kind == "delayed"
    assert not MessageEvent.objects.filter(event_type=EventType.BOUNCE).exists()


def test_a_bounce_of_another_tenants_message_is_not_taken_by_this_tenants_mailbox(
    sent: tuple[Message, bytes], other_tenant: Tenant
) -> None:
    _, data = sent
    assert services.record_bounce(dsn_for(data, "gone@example.com", "5.1.1", "550"), tenant=other_tenant) == 0
    assert not Bounce.objects.exists()


def test_correlation_falls_back_to_the_message_id(sent: tuple[Message, bytes]) -> None:
    stored, data = sent
    without_our_headers = b"\r\n".join(line for line in data.split(b"\r\n")
                                       if not line.lower().startswith((b"x-mail-proxy-id", b"x-genro-mail-id")))
    services.record_bounce(dsn_for(without_our_headers, "gone@example.com", "5.1.1", "550"))
    assert Bounce.objects.get().message == stored


def test_verp_sender_carries_the_message_number_and_matches_a_bare_bounce(
    tenant: Tenant, smtp_account: SmtpAccount, smtp_server: SmtpSink
) -> None:
    Tenant.objects.filter(pk=tenant.pk).update(bounce={"return_path": "bounces@example.com", "verp": True})
    enqueue_messages(scope=tenant, payloads=[message(id="v", to="gone@example.com")])
    delivery.send_due(account_pk=smtp_account.pk)
    stored = Message.objects.get(external_id="v")
    assert smtp_server.wait_for(1)[0].mail_from == f"bounces+{stored.pk}@example.com"
    bare = (  # a bounce that quotes nothing of the original: only its envelope address says which
        f"From: MAILER-DAEMON@mx.example.net\r\nTo: bounces+{stored.pk}@example.com\r\n"
        "Subject: Delivery Status Notification (Failure)\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nDelivery failed.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\n"
        "Final-Recipient: rfc822; gone@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n--B--\r\n"
    ).encode()
    assert services.record_bounce(bare) == 1
    assert Bounce.objects.get().message == stored
