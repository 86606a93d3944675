"""The scriptable SMTP sink, driven with the standard library's smtplib (no database)."""

from __future__ import annotations

import smtplib
import socket
import time
from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY

import pytest

from tests.smtp_sink import Received, SmtpSink

SENDER = "sender@example.com"
RCPT = "rcpt@example.com"


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as running:
        yield running


def client(sink: SmtpSink, timeout: float = 2.0) -> smtplib.SMTP:
    # local_hostname avoids socket.getfqdn(), which can be slow without DNS.
    return smtplib.SMTP(sink.host, sink.port, local_hostname="client.test", timeout=timeout)


def mail(message_id: str = "<m1@example.com>", subject: str = "Hello") -> bytes:
    message = EmailMessage()
    message["From"] = SENDER
    message["To"] = RCPT
    message["Subject"] = subject
    message["Message-ID"] = message_id
    message.set_content("Hi there\n.leading dot\n")
    return message.as_bytes(policy=SMTP_POLICY)  # CRLF line endings, as on the wire


def test_accepts_and_records_the_message(sink: SmtpSink) -> None:
    before = time.time()
    with client(sink) as smtp:
        refused = smtp.sendmail(SENDER, [RCPT, "other@example.com"], mail())
    assert refused == {}

    [received] = sink.wait_for(1)
    assert isinstance(received, Received)
    assert received.mail_from == SENDER
    assert received.rcpt_tos == (RCPT, "other@example.com")
    assert received.message_id == "<m1@example.com>"
    assert received.message["Subject"] == "Hello"
    assert received.message.get_content().splitlines() == ["Hi there", ".leading dot"]
    assert b"\r\n.leading dot\r\n" in received.data  # dot-stuffing undone, CRLF kept
    assert before <= received.received_at <= time.time()
    assert received.auth_login is None
    assert sink.connections == 1
    assert sink.transactions == 1


def test_wait_for_reports_what_arrived(sink: SmtpSink) -> None:
    with client(sink) as smtp:
        smtp.sendmail(SENDER, [RCPT], mail("<only@example.com>"))
    start = time.monotonic()
    with pytest.raises(AssertionError, match=r"expected 2 message\(s\).*got 1.*only@example.com"):
        sink.wait_for(2, timeout=0.1)
    assert time.monotonic() - start < 1.0

    sink.clear()
    assert sink.messages == []
    assert sink.connections == 0


def test_on_rcpt_550_always(sink: SmtpSink) -> None:
    sink.on_rcpt("gone@example.com", 550, "5.1.1 no such user")
    with client(sink) as smtp:
        for _ in range(2):
            with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
                smtp.sendmail(SENDER, ["gone@example.com"], mail())
            assert refused.value.recipients == {"gone@example.com": (550, b"5.1.1 no such user")}
        partly = smtp.sendmail(SENDER, ["Gone@Example.com", RCPT], mail())
    assert partly == {"Gone@Example.com": (550, b"5.1.1 no such user")}
    [received] = sink.wait_for(1)
    assert received.rcpt_tos == (RCPT,)


def test_on_rcpt_451_once_then_accepted(sink: SmtpSink) -> None:
    sink.on_rcpt(RCPT, 451, "4.3.0 try later", times=1)
    with client(sink) as smtp:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            smtp.sendmail(SENDER, [RCPT], mail())
        assert refused.value.recipients[RCPT][0] == 451
        assert smtp.sendmail(SENDER, [RCPT], mail()) == {}
    assert len(sink.wait_for(1)) == 1


def test_rules_apply_in_order_of_registration(sink: SmtpSink) -> None:
    sink.on_rcpt(RCPT, 451, "4.3.0 try later", times=1)
    sink.on_rcpt("*", 550, "5.7.1 nobody today")
    codes = []
    with client(sink) as smtp:
        smtp.ehlo()
        for _ in range(3):
            smtp.mail(SENDER)
            codes.append(smtp.rcpt(RCPT)[0])
            smtp.rset()
        sink.reset_script()
        smtp.mail(SENDER)
        codes.append(smtp.rcpt(RCPT)[0])
    assert codes == [451, 550, 550, 250]


def test_on_mail_421(sink: SmtpSink) -> None:
    sink.on_mail(421, "4.7.0 too many connections")
    smtp = client(sink)
    with pytest.raises(smtplib.SMTPSenderRefused) as refused:
        smtp.sendmail(SENDER, [RCPT], mail())
    assert refused.value.smtp_code == 421
    assert refused.value.smtp_error == b"4.7.0 too many connections"
    assert sink.transactions == 1
    assert sink.messages == []


def test_on_data_552_is_not_recorded(sink: SmtpSink) -> None:
    sink.on_data(552, "5.3.4 message too big", times=1)
    with client(sink) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as rejected:
            smtp.sendmail(SENDER, [RCPT], mail())
        assert rejected.value.smtp_code == 552
        assert sink.messages == []
        smtp.sendmail(SENDER, [RCPT], mail("<m2@example.com>"))
    assert [m.message_id for m in sink.wait_for(1)] == ["<m2@example.com>"]


def test_hang_at_mail_times_the_client_out(sink: SmtpSink) -> None:
    sink.hang("mail", 5.0)
    smtp = client(sink, timeout=0.5)
    start = time.monotonic()
    with pytest.raises((socket.timeout, smtplib.SMTPServerDisconnected)):
        smtp.sendmail(SENDER, [RCPT], mail())
    assert 0.4 < time.monotonic() - start < 1.5
    assert sink.messages == []


def test_hang_does_not_block_other_connections(sink: SmtpSink) -> None:
    sink.hang("mail", 5.0, times=1)
    stalled = client(sink)
    try:
        stalled.ehlo()
        stalled.putcmd("mail", f"FROM:<{SENDER}>")  # the sink now sleeps on this connection
        start = time.monotonic()
        with client(sink, timeout=1.0) as other:
            other.sendmail(SENDER, [RCPT], mail())
        assert time.monotonic() - start < 0.5
    finally:
        stalled.close()  # not QUIT: its reply would queue behind the stalled MAIL
    assert len(sink.messages) == 1


def test_hang_at_banner(sink: SmtpSink) -> None:
    sink.hang("banner", 5.0, times=1)
    with pytest.raises((socket.timeout, smtplib.SMTPServerDisconnected)):
        client(sink, timeout=0.3)
    with client(sink) as smtp:  # the next connection is greeted at once
        assert smtp.noop()[0] == 250
    assert sink.connections == 2


def test_hang_at_data_records_the_message_but_loses_the_reply(sink: SmtpSink) -> None:
    sink.hang("data", 5.0)
    smtp = client(sink, timeout=0.5)
    with pytest.raises((socket.timeout, smtplib.SMTPServerDisconnected)):
        smtp.sendmail(SENDER, [RCPT], mail())
    assert len(sink.messages) == 1


def test_drop_at_mail(sink: SmtpSink) -> None:
    sink.drop("mail", times=1)
    with pytest.raises(smtplib.SMTPServerDisconnected):
        client(sink).sendmail(SENDER, [RCPT], mail())
    with client(sink) as smtp:
        smtp.sendmail(SENDER, [RCPT], mail())
    assert len(sink.wait_for(1)) == 1
    assert sink.transactions == 2


def test_drop_at_data_is_not_recorded(sink: SmtpSink) -> None:
    sink.drop("data")
    with pytest.raises(smtplib.SMTPServerDisconnected):
        client(sink).sendmail(SENDER, [RCPT], mail())
    assert sink.messages == []


def test_drop_after_data_records_the_message(sink: SmtpSink) -> None:
    sink.drop("after_data", times=1)
    with pytest.raises(smtplib.SMTPServerDisconnected):
        client(sink).sendmail(SENDER, [RCPT], mail())
    [received] = sink.wait_for(1)
    assert received.message_id == "<m1@example.com>"


def test_drop_after_reply(sink: SmtpSink) -> None:
    sink.drop("after_reply", times=1)
    smtp = client(sink)
    assert smtp.sendmail(SENDER, [RCPT], mail()) == {}
    assert len(sink.messages) == 1
    with pytest.raises(smtplib.SMTPServerDisconnected):
        smtp.noop()


def test_stop_refuses_new_and_breaks_open_connections(sink: SmtpSink) -> None:
    pooled = client(sink)
    assert pooled.noop()[0] == 250
    sink.stop()
    assert not sink.running
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(sink.address, timeout=1.0)
    with pytest.raises(smtplib.SMTPServerDisconnected):
        pooled.noop()
    sink.stop()  # idempotent


def test_restart_on_the_same_port(sink: SmtpSink) -> None:
    port = sink.port
    with client(sink) as smtp:
        smtp.sendmail(SENDER, [RCPT], mail())
    sink.stop()

    with SmtpSink(port=port) as again, client(again) as smtp:
        smtp.sendmail(SENDER, [RCPT], mail("<m2@example.com>"))
        assert [m.message_id for m in again.wait_for(1)] == ["<m2@example.com>"]

    sink.start()  # the same instance comes back on its port, ledger kept
    assert sink.port == port
    with client(sink) as smtp:
        smtp.sendmail(SENDER, [RCPT], mail("<m3@example.com>"))
    assert [m.message_id for m in sink.wait_for(2)] == ["<m1@example.com>", "<m3@example.com>"]


def test_start_fails_loudly(sink: SmtpSink) -> None:
    with pytest.raises(RuntimeError, match="already running"):
        sink.start()
    with pytest.raises(OSError, match="in use"):
        SmtpSink(port=sink.port).start()


def test_auth_required(sink: SmtpSink) -> None:
    sink.auth("user", "secret")
    with client(sink) as smtp:
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            smtp.sendmail(SENDER, [RCPT], mail())
        assert refused.value.smtp_code == 530
    with client(sink) as smtp:
        with pytest.raises(smtplib.SMTPAuthenticationError) as denied:
            smtp.login("user", "wrong")
        assert denied.value.smtp_code == 535
    with client(sink) as smtp:
        smtp.login("user", "secret")
        smtp.sendmail(SENDER, [RCPT], mail())
    [received] = sink.wait_for(1)
    assert received.auth_login == "user"

    sink.set_password("rotated")
    with client(sink) as smtp, pytest.raises(smtplib.SMTPAuthenticationError):
        smtp.login("user", "secret")
    with client(sink) as smtp:
        smtp.login("user", "rotated")


def test_connections_and_transactions(sink: SmtpSink) -> None:
    for _ in range(2):
        with client(sink) as smtp:
            smtp.noop()
    assert sink.connections == 2

    sink.clear()
    with client(sink) as smtp:
        smtp.sendmail(SENDER, [RCPT], mail())
        smtp.rset()
        smtp.sendmail(SENDER, [RCPT], mail("<m2@example.com>"))
    assert len(sink.wait_for(2)) == 2
    assert sink.connections == 1
    assert sink.transactions == 2


def test_invalid_script_is_rejected(sink: SmtpSink) -> None:
    with pytest.raises(ValueError, match="stage"):
        sink.drop("helo")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reply code"):
        sink.on_mail(99, "nope")
    with pytest.raises(ValueError, match="times"):
        sink.on_data(451, "later", times=0)
