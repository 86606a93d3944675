"""PEC receipts of a message sent through a PEC account become its events, with certified times."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from django.test import override_settings
from django.utils import timezone

from pec import services
from pec.models import PecReceiptRecord
from queueing.models import EventType, Message, MessageEvent, Status
from tenants.models import SmtpAccount, Tenant
from tests.factories import SmtpAccountFactory

pytestmark = pytest.mark.django_db

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "pec" / "java-pec-parser"
MSGID = "<SN05IE$951DEC16C1CFD3E4FD8FF1B1D24A99AE@fakepec.it>"  # what both corpus receipts certify


@pytest.fixture
def pec_account(tenant: Tenant) -> SmtpAccount:
    return SmtpAccountFactory(tenant=tenant, external_id="pec", is_pec=True, is_default=False)


def sent_message(tenant: Tenant, account: SmtpAccount, **fields: object) -> Message:
    now = timezone.now()
    return Message.objects.create(tenant=tenant, account=account, external_id="pec-1", from_addr="a@pec.it",
                                  to=["rec@fakepec.it"], subject="Test PEC", message_id=MSGID, status=Status.SENT,
                                  sent_at=now, next_attempt_at=now, **fields)


def test_acceptance_receipt_is_an_event_with_the_certified_time(tenant: Tenant, pec_account: SmtpAccount) -> None:
    stored = sent_message(tenant, pec_account)
    raw = (FIXTURES / "accettazione.eml").read_bytes()
    assert services.record_receipt(raw, account=pec_account) == 1
    event = MessageEvent.objects.get(message=stored)
    assert event.event_type == EventType.PEC_ACCEPTANCE
    assert event.details["pec_event"] == "accettazione"
    assert event.details["pec_ts"] == datetime.fromisoformat("2024-11-15T18:20:38+01:00").timestamp()
    assert bytes(PecReceiptRecord.objects.get().raw) == raw
    assert services.record_receipt(raw, account=pec_account) == 0  # read again: nothing new


def test_non_delivery_is_a_pec_error_with_the_reason(tenant: Tenant, pec_account: SmtpAccount) -> None:
    stored = sent_message(tenant, pec_account)
    services.record_receipt((FIXTURES / "errore-consegna_no-dest.eml").read_bytes(), account=pec_account)
    event = MessageEvent.objects.get(message=stored)
    assert event.event_type == EventType.PEC_ERROR
    assert "indirizzo non valido" in event.details["pec_details"]


def test_receipts_are_listed_and_downloadable(tenant: Tenant, pec_account: SmtpAccount, tenant_client: object) -> None:
    sent_message(tenant, pec_account)
    raw = (FIXTURES / "accettazione.eml").read_bytes()
    services.record_receipt(raw, account=pec_account)
    listed = tenant_client.get("/messages/pec-1/receipts").json()["receipts"]  # type: ignore[attr-defined]
    assert [(r["n"], r["receipt_type"], r["event"]) for r in listed] == [(1, "accettazione", "pec_acceptance")]
    download = tenant_client.get("/messages/pec-1/receipts/1")  # type: ignore[attr-defined]
    assert download.status_code == 200
    assert download["Content-Type"] == "message/rfc822"
    assert download.content == raw
    assert tenant_client.get("/messages/pec-1/receipts/2").status_code == 404  # type: ignore[attr-defined]


@override_settings(GMP_PEC_ACCEPTANCE_TIMEOUT=60, GMP_PEC_DELIVERY_TIMEOUT=120)
def test_missing_receipts_time_out_once(tenant: Tenant, pec_account: SmtpAccount) -> None:
    stored = sent_message(tenant, pec_account)
    assert services.check_timeouts() == 0
    Message.objects.filter(pk=stored.pk).update(sent_at=timezone.now() - timedelta(seconds=90))
    assert services.check_timeouts() == 1  # acceptance
    assert services.check_timeouts() == 0
    Message.objects.filter(pk=stored.pk).update(sent_at=timezone.now() - timedelta(seconds=200))
    assert services.check_timeouts() == 1  # delivery, for the one recipient
    timeouts = MessageEvent.objects.filter(message=stored, event_type=EventType.PEC_TIMEOUT)
    assert sorted(e.details["pec_event"] for e in timeouts) == ["accettazione", "avvenuta-consegna"]
    assert services.check_timeouts() == 0


@override_settings(GMP_PEC_ACCEPTANCE_TIMEOUT=60, GMP_PEC_DELIVERY_TIMEOUT=120)
def test_only_recipients_without_a_delivery_receipt_time_out(tenant: Tenant, pec_account: SmtpAccount) -> None:
    stored = sent_message(tenant, pec_account, cc=["other@fakepec.it"])
    MessageEvent.objects.create(tenant=tenant, message=stored, external_id=stored.external_id,
                                event_type=EventType.PEC_ACCEPTANCE, occurred_at=timezone.now(), details={})
    MessageEvent.objects.create(tenant=tenant, message=stored, external_id=stored.external_id,
                                event_type=EventType.PEC_DELIVERY, occurred_at=timezone.now(),
                                details={"recipient": "rec@fakepec.it"})
    Message.objects.filter(pk=stored.pk).update(sent_at=timezone.now() - timedelta(seconds=200))
    assert services.check_timeouts() == 1
    late = MessageEvent.objects.get(message=stored, event_type=EventType.PEC_TIMEOUT)
    assert late.details["recipient"] == "other@fakepec.it"
