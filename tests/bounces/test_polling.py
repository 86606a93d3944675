"""The pollers against a real IMAP server (Dovecot): bounce and PEC mailboxes, cursors, crashes."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from xml.sax.saxutils import escape

import pytest
from django.utils import timezone

from bounces import services as bounces
from bounces.models import Bounce, MailboxCursor
from pec import services as pec
from queueing.models import EventType, Message, MessageEvent, Status
from queueing.services import enqueue_messages
from tenants import crypto
from tenants.models import SmtpAccount, Tenant
from tests.bounces.test_bounce_flow import dsn_for
from tests.conftest import message
from tests.factories import SmtpAccountFactory
from tests.imap_server import ImapServer

pytestmark = pytest.mark.django_db

PASSWORD = "mailbox-pw"
_names = itertools.count()
PEC_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "pec" / "java-pec-parser"


@pytest.fixture(scope="module")
def imap() -> Iterator[ImapServer]:
    with ImapServer() as server:
        yield server


@pytest.fixture
def mailbox_user(imap: ImapServer) -> str:
    name = f"poll{next(_names)}"
    imap.add_user(name, PASSWORD)
    return name


def with_bounce_mailbox(tenant: Tenant, imap: ImapServer, user: str, **extra: object) -> None:
    Tenant.objects.filter(pk=tenant.pk).update(
        bounce={"enabled": True, "imap_host": imap.host, "imap_port": imap.port, "imap_user": user,
                "security": "none", "poll_interval": 60, **extra},
        bounce_imap_password_encrypted=crypto.encrypt(PASSWORD))


def sent_messages(tenant: Tenant, account: SmtpAccount, count: int) -> list[Message]:
    enqueue_messages(scope=tenant, payloads=[message(id=f"m{i}", to=f"user{i}@example.com") for i in range(count)])
    Message.objects.update(status=Status.SENT, sent_at=timezone.now())
    return list(Message.objects.order_by("id"))


def original_of(stored: Message) -> bytes:
    return (f"Message-ID: {stored.message_id}\r\nX-Mail-Proxy-ID: {stored.pk}\r\nSubject: {stored.subject}\r\n"
            f"\r\nbody\r\n").encode()


def test_bounces_are_read_reported_once_and_the_mail_is_moved(
    tenant: Tenant, account: SmtpAccount, imap: ImapServer, mailbox_user: str
) -> None:
    with_bounce_mailbox(tenant, imap, mailbox_user, processed_folder="Processed")
    stored = sent_messages(tenant, account, 3)
    for item in stored:
        imap.append(mailbox_user, "INBOX", dsn_for(original_of(item), item.to[0], "5.1.1", "550 user unknown"))
    assert bounces.poll_bounces() == 3
    assert sorted(Bounce.objects.values_list("recipient", flat=True)) == [m.to[0] for m in stored]
    assert MessageEvent.objects.filter(event_type=EventType.BOUNCE).count() == 3
    assert imap.messages(mailbox_user, "INBOX") == []
    moved = imap.messages(mailbox_user, "Processed")
    assert len(moved) == 3
    assert all("\\Seen" in flags for _, flags in moved)
    assert bounces.poll_bounces(force=True) == 0  # nothing new


def test_a_crash_in_the_middle_of_a_mailbox_reports_each_bounce_once(
    tenant: Tenant, account: SmtpAccount, imap: ImapServer, mailbox_user: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_bounce_mailbox(tenant, imap, mailbox_user)
    stored = sent_messages(tenant, account, 5)
    for item in stored:
        imap.append(mailbox_user, "INBOX", dsn_for(original_of(item), item.to[0], "5.1.1", "550 user unknown"))
    real = bounces.record_bounce
    calls = itertools.count()

    def dies_at_the_third(raw: bytes, *, tenant: Tenant | None = None) -> int:
        if next(calls) == 2:
            raise SystemExit("worker killed")  # after 2 committed, before the cursor moved past the 3rd
        return real(raw, tenant=tenant)

    monkeypatch.setattr(bounces, "record_bounce", dies_at_the_third)
    with pytest.raises(SystemExit):
        bounces.poll_bounces()
    monkeypatch.setattr(bounces, "record_bounce", real)
    assert MailboxCursor.objects.get().last_uid == 2
    bounces.poll_bounces(force=True)
    assert MessageEvent.objects.filter(event_type=EventType.BOUNCE).count() == 5
    assert Bounce.objects.count() == 5


def test_uidvalidity_change_rescans_without_duplicates(
    tenant: Tenant, account: SmtpAccount, imap: ImapServer, mailbox_user: str
) -> None:
    with_bounce_mailbox(tenant, imap, mailbox_user)
    stored = sent_messages(tenant, account, 2)
    imap.append(mailbox_user, "INBOX", dsn_for(original_of(stored[0]), stored[0].to[0], "5.1.1", "550"))
    bounces.poll_bounces()
    imap.reset_uidvalidity(mailbox_user, "INBOX")
    imap.append(mailbox_user, "INBOX", dsn_for(original_of(stored[1]), stored[1].to[0], "5.1.1", "550"))
    bounces.poll_bounces(force=True)
    assert Bounce.objects.count() == 2
    assert MessageEvent.objects.filter(event_type=EventType.BOUNCE).count() == 2
    cursor = MailboxCursor.objects.get()
    assert cursor.uidvalidity == imap.uidvalidity(mailbox_user, "INBOX")


def test_a_wrong_mailbox_password_is_shown_not_raised(
    tenant: Tenant, imap: ImapServer, mailbox_user: str
) -> None:
    with_bounce_mailbox(tenant, imap, mailbox_user)
    Tenant.objects.filter(pk=tenant.pk).update(bounce_imap_password_encrypted=crypto.encrypt("wrong"))
    assert bounces.poll_bounces() == 0
    error = MailboxCursor.objects.get().last_error
    assert error
    assert "wrong" not in error


def test_pec_receipts_in_the_pec_mailbox_become_events(
    tenant: Tenant, imap: ImapServer, mailbox_user: str
) -> None:
    account = SmtpAccountFactory(tenant=tenant, external_id="pec", is_pec=True, imap_host=imap.host,
                                 imap_port=imap.port, imap_user=mailbox_user, imap_security="none",
                                 imap_password_encrypted=crypto.encrypt(PASSWORD))
    now = timezone.now()
    stored = Message.objects.create(tenant=tenant, account=account, external_id="pec-1", from_addr="a@pec.it",
                                    to=["rec@fakepec.it"], subject="Test PEC", status=Status.SENT, sent_at=now,
                                    next_attempt_at=now,
                                    message_id="<SN05IE$951DEC16C1CFD3E4FD8FF1B1D24A99AE@fakepec.it>")
    imap.append(mailbox_user, "INBOX", (PEC_FIXTURES / "accettazione.eml").read_bytes())
    assert pec.poll_receipts() == 1
    assert list(MessageEvent.objects.filter(message=stored).values_list("event_type", flat=True)) == [
        EventType.PEC_ACCEPTANCE]


def acceptance_receipt(msgid: str, recipient: str) -> bytes:
    """An acceptance receipt as a PEC provider writes it: X-Ricevuta and a daticert.xml."""
    daticert = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<postacert tipo="accettazione" errore="nessuno">'
        f"<intestazione><mittente>sender@pec.example.it</mittente><destinatari tipo=\"certificato\">{recipient}"
        "</destinatari><risposte>sender@pec.example.it</risposte><oggetto>Hello</oggetto></intestazione>"
        "<dati><gestore-emittente>Example PEC S.p.A.</gestore-emittente>"
        '<data zona="+0100"><giorno>03/12/2026</giorno><ora>10:15:30</ora></data>'
        f"<identificativo>opec.1@pec.example.it</identificativo><msgid>{escape(msgid)}</msgid></dati></postacert>"
    )
    return (
        "From: posta-certificata@pec.example.it\r\nTo: sender@pec.example.it\r\n"
        f"Subject: ACCETTAZIONE: Hello\r\nX-Ricevuta: accettazione\r\nX-Riferimento-Message-ID: {msgid}\r\n"
        'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="P"\r\n\r\n'
        "--P\r\nContent-Type: text/plain; charset=UTF-8\r\n\r\nRicevuta di accettazione\r\n"
        '--P\r\nContent-Type: application/xml; name="daticert.xml"\r\n'
        'Content-Disposition: attachment; filename="daticert.xml"\r\n\r\n'
        f"{daticert}\r\n--P--\r\n"
    ).encode()


def test_pec_message_end_to_end_acceptance_then_delivery_reach_the_tenant(
    tenant: Tenant, imap: ImapServer, mailbox_user: str, smtp_server: object, tenant_app: object
) -> None:
    from datetime import datetime

    from delivery import reports
    from delivery import services as delivery

    corpus = Path(__file__).resolve().parents[1] / "fixtures" / "pec" / "go-pec" / "avvenuta-consegna_anonymised.eml"
    msgid = "<CZPXCJRZKQDRVYXFAZYUIAWNACDAAHEVAEXAKN@example.com>"  # what the corpus delivery receipt certifies
    account = SmtpAccountFactory(
        tenant=tenant, external_id="pec", is_pec=True, host=smtp_server.host, port=smtp_server.port,  # type: ignore[attr-defined]
        user="", password_encrypted="", security="none", imap_host=imap.host, imap_port=imap.port,
        imap_user=mailbox_user, imap_security="none", imap_password_encrypted=crypto.encrypt(PASSWORD))
    Tenant.objects.filter(pk=tenant.pk).update(client_base_url=tenant_app.url)  # type: ignore[attr-defined]
    enqueue_messages(scope=tenant, payloads=[message(id="pec-1", to="dest@example.example.com", message_id=msgid)])
    delivery.send_due(account_pk=account.pk)
    assert smtp_server.wait_for(1)[0].message_id == msgid  # type: ignore[attr-defined]

    imap.append(mailbox_user, "INBOX", acceptance_receipt(msgid, "dest@example.example.com"))
    pec.poll_receipts()
    imap.append(mailbox_user, "INBOX", corpus.read_bytes())
    pec.poll_receipts(force=True)
    reports.report_tenant(tenant_id=tenant.pk, force=True)
    items = [item for call in tenant_app.calls for item in call.items]  # type: ignore[attr-defined]
    pec_items = [item for item in items if item["event"].startswith("pec_")]
    assert [item["event"] for item in pec_items] == ["pec_acceptance", "pec_delivery"]
    assert pec_items[0]["pec_ts"] == datetime.fromisoformat("2026-12-03T10:15:30+01:00").timestamp()
    assert pec_items[1]["pec_ts"] == datetime.fromisoformat("2021-05-13T14:35:30+02:00").timestamp()
    assert all(item["id"] == "pec-1" for item in pec_items)
