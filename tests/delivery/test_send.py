"""Sending one account's due messages to a real SMTP server on loopback."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.test import override_settings
from django.utils import timezone

from delivery import services, smtp
from queueing.models import EventType, Message, MessageEvent, Status
from queueing.services import enqueue_messages
from tenants import crypto
from tenants.models import SmtpAccount, Tenant
from tenants.services import save_account
from tests.conftest import message
from tests.smtp_sink import SmtpSink

pytestmark = pytest.mark.django_db

FAST_RETRIES = override_settings(GMP_RETRY_DELAYS=[0], GMP_MAX_RETRIES=3)


def enqueue(tenant: Tenant, *payloads: dict[str, Any]) -> None:
    result = enqueue_messages(scope=tenant, payloads=list(payloads))
    assert not result.rejected, result.rejected


def send(account: SmtpAccount) -> services.SendSummary:
    return services.send_due(account_pk=account.pk)


def row(external_id: str) -> Message:
    return Message.objects.get(external_id=external_id)


def events(external_id: str) -> list[str]:
    return list(MessageEvent.objects.filter(external_id=external_id).order_by("id")
                .values_list("event_type", flat=True))


@pytest.fixture(params=[True, False], ids=["pipelining", "one-command-at-a-time"])
def smtp_server(request: pytest.FixtureRequest) -> Iterator[SmtpSink]:
    """Every test here against a server that offers PIPELINING and one that does not."""
    with SmtpSink(pipelining=request.param) as sink:
        yield sink


@pytest.fixture(autouse=True)
def _own_attachment_cache(tmp_path: Any) -> Iterator[None]:
    # Each test fetches for itself: a document cached by an earlier test is not fetched again.
    with override_settings(GMP_CACHE_DIR=str(tmp_path / "attachment-cache")):
        yield


@pytest.fixture(autouse=True)
def _fresh_pool() -> Any:
    smtp.pool.close_all()
    yield
    smtp.pool.close_all()


def test_message_is_delivered_with_the_proxy_headers(
    tenant: Tenant, smtp_account: SmtpAccount, smtp_server: SmtpSink
) -> None:
    enqueue(tenant, message(id="m1", to=["a@example.com"], cc=["c@example.com"], bcc=["hidden@example.com"],
                            subject="Grüße", reply_to="reply@example.com", headers={"X-Campaign": "spring"}))
    summary = send(smtp_account)
    assert (summary.claimed, summary.sent) == (1, 1)
    received = smtp_server.wait_for(1)[0]
    stored = row("m1")
    mail = received.message
    assert received.mail_from == "sender@example.com"
    assert sorted(received.rcpt_tos) == ["a@example.com", "c@example.com", "hidden@example.com"]
    assert mail["X-Mail-Proxy-ID"] == mail["X-Genro-Mail-ID"] == str(stored.pk)
    assert mail["Message-ID"] == stored.message_id
    assert mail["Subject"] == "Grüße"
    assert mail["Bcc"] is None
    assert b"hidden@example.com" not in received.data
    assert mail["Date"] is not None
    assert mail["X-Campaign"] == "spring"
    assert mail.get_content().strip() == "Hi there"
    assert stored.status == Status.SENT
    assert stored.sent_at is not None
    assert stored.attempts == 1
    assert events("m1") == [EventType.SENT]
    assert MessageEvent.objects.get(external_id="m1").details["sent_ts"] == pytest.approx(
        stored.sent_at.timestamp())


def test_text_and_html_go_as_multipart_alternative(
    tenant: Tenant, smtp_account: SmtpAccount, smtp_server: SmtpSink
) -> None:
    enqueue(tenant, message(id="alt", body=..., body_text="plain words", body_html="<p>html words</p>"))
    send(smtp_account)
    mail = smtp_server.wait_for(1)[0].message
    assert mail.get_content_type() == "multipart/alternative"
    parts = {part.get_content_type(): part.get_content() for part in mail.iter_parts()}
    assert parts["text/plain"].strip() == "plain words"
    assert parts["text/html"].strip() == "<p>html words</p>"


def test_return_path_is_the_envelope_sender(tenant: Tenant, smtp_account: SmtpAccount, smtp_server: SmtpSink) -> None:
    enqueue(tenant, message(id="rp", return_path="bounces@example.com"))
    send(smtp_account)
    assert smtp_server.wait_for(1)[0].mail_from == "bounces@example.com"


def test_base64_attachment_is_attached(tenant: Tenant, smtp_account: SmtpAccount, smtp_server: SmtpSink) -> None:
    enqueue(tenant, message(id="att", attachments=[{"filename": "résumé.txt", "storage_path": "base64:SGVsbG8="}]))
    send(smtp_account)
    mail = smtp_server.wait_for(1)[0].message
    attachment = next(mail.iter_attachments())
    assert attachment.get_filename() == "résumé.txt"
    assert attachment.get_content() == "Hello"


def test_priority_first_then_fifo(tenant: Tenant, smtp_account: SmtpAccount, smtp_server: SmtpSink) -> None:
    enqueue(tenant, message(id="low-1", priority=3), message(id="med-1"), message(id="imm-1", priority=0),
            message(id="low-2", priority=3), message(id="high-1", priority=1), message(id="imm-2", priority=0))
    send(smtp_account)
    order = [Message.objects.get(message_id=r.message_id).external_id for r in smtp_server.wait_for(6)]
    assert order == ["imm-1", "imm-2", "high-1", "med-1", "low-1", "low-2"]


def test_deferred_message_waits_for_its_time(tenant: Tenant, smtp_account: SmtpAccount, smtp_server: SmtpSink) -> None:
    enqueue(tenant, message(id="later", deferred_ts=time.time() + 3600), message(id="now"))
    send(smtp_account)
    assert len(smtp_server.wait_for(1)) == 1
    assert (row("later").status, row("now").status) == (Status.QUEUED, Status.SENT)
    Message.objects.filter(external_id="later").update(next_attempt_at=timezone.now())
    send(smtp_account)
    assert len(smtp_server.wait_for(2)) == 2


@FAST_RETRIES
def test_451_once_then_delivered(tenant: Tenant, smtp_account: SmtpAccount, smtp_server: SmtpSink) -> None:
    smtp_server.on_rcpt("rcpt@example.com", 451, "4.3.0 try later", times=1)
    enqueue(tenant, message(id="m"))
    send(smtp_account)
    stored = row("m")
    assert (stored.status, stored.attempts, stored.smtp_code) == (Status.DEFERRED, 1, 451)
    send(smtp_account)
    assert len(smtp_server.wait_for(1)) == 1
    assert row("m").status == Status.SENT
    assert events("m") == [EventType.DEFERRED, EventType.SENT]
    deferred = MessageEvent.objects.filter(external_id="m", event_type=EventType.DEFERRED).get()
    assert deferred.details["deferred_reason"] == "smtp"
    assert deferred.details["attempts"] == 1


def test_550_fails_after_one_attempt(tenant: Tenant, smtp_account: SmtpAccount, smtp_server: SmtpSink) -> None:
    smtp_server.on_rcpt("rcpt@example.com", 550, "5.1.1 no such user")
    enqueue(tenant, message(id="m"))
    send(smtp_account)
    stored = row("m")
    assert (stored.status, stored.attempts, stored.smtp_code) == (Status.ERROR, 1, 550)
    assert "no such user" in stored.last_error
    error = MessageEvent.objects.get(external_id="m")
    assert (error.event_type, error.details["smtp_code"]) == (EventType.ERROR, 550)
    assert smtp_server.messages == []


@pytest.mark.parametrize(("stage", "code"), [("mail", 553), ("data", 554), ("data", 552)])
def test_5xx_at_other_stages_is_permanent(
    tenant: Tenant, smtp_account: SmtpAccount, smtp_server: SmtpSink, stage: str, code: int
) -> None:
    getattr(smtp_server, f"on_{stage}")(code, "5.0.0 no")
    enqueue(tenant, message(id="m"))
    send(smtp_account)
    assert (row("m").status, row("m").smtp_code, row("m").attempts) == (Status.ERROR, code, 1)


@FAST_RETRIES
def test_temporary_forever_is_retried_exactly_max_retries_then_fails(
    tenant: Tenant, smtp_account: SmtpAccount, smtp_server: SmtpSink
) -> None:
    smtp_server.on_mail(451, "4.7.1 greylisted")
    enqueue(tenant, message(id="m"))
    for _ in range(10):
        send(smtp_account)
    stored = row("m")
    assert stored.status == Status.ERROR
    assert stored.attempts == 4  # the first attempt and GMP_MAX_RETRIES=3 retries
    assert stored.last_error.startswith("retries exhausted after 4 attempts: 451")
    assert events("m") == [EventType.DEFERRED] * 3 + [EventType.ERROR]


def test_retry_delay_follows_the_schedule_with_jitter(
    tenant: Tenant, smtp_account: SmtpAccount, smtp_server: SmtpSink
) -> None:
    smtp_server.on_mail(451, "4.7.1 later")
    enqueue(tenant, message(id="m"))
    with override_settings(GMP_RETRY_DELAYS=[100, 1000]):
        before = timezone.now()
        send(smtp_account)
    delay = (row("m").next_attempt_at - before).total_seconds()
    assert 90 - 1 <= delay <= 110 + 1


def test_partial_refusal_is_sent_with_the_refused_listed(
    tenant: Tenant, smtp_account: SmtpAccount, smtp_server: SmtpSink
) -> None:
    smtp_server.on_rcpt("gone@example.com", 550, "5.1.1 unknown")
    enqueue(tenant, message(id="m", to=["ok@example.com", "gone@example.com"]))
    send(smtp_account)
    received = smtp_server.wait_for(1)[0]
    assert received.rcpt_tos == ("ok@example.com",)
    stored = row("m")
    assert stored.status == Status.SENT
    sent = MessageEvent.objects.get(external_id="m", event_type=EventType.SENT)
    assert sent.details["refused"] == [
        {"recipient": "gone@example.com", "code": 550, "reason": "550 5.1.1 unknown"}
    ]


@FAST_RETRIES
def test_recipient_deferred_with_4xx_is_retried_alone(
    tenant: Tenant, smtp_account: SmtpAccount, smtp_server: SmtpSink
) -> None:
    smtp_server.on_rcpt("slow@example.com", 452, "4.2.2 mailbox busy", times=1)
    enqueue(tenant, message(id="m", to=["ok@example.com", "slow@example.com"]))
    send(smtp_account)
    assert row("m").status == Status.DEFERRED
    assert row("m").pending_recipients == ["slow@example.com"]
    send(smtp_account)
    copies = smtp_server.wait_for(2)
    assert [c.rcpt_tos for c in copies] == [("ok@example.com",), ("slow@example.com",)]
    assert row("m").status == Status.SENT
    assert events("m") == [EventType.DEFERRED, EventType.SENT]


def test_auth_failure_pauses_the_account_and_mail_goes_once_fixed(
    tenant: Tenant, smtp_server: SmtpSink
) -> None:
    smtp_server.auth("mailer", "right")
    account = save_account(tenant=tenant, data={
        "id": "main", "host": smtp_server.host, "port": smtp_server.port, "security": "none", "user": "mailer",
        "password": "wrong", "is_default": True,
    }).account
    enqueue(tenant, message(id="m"))
    send(account)
    account.refresh_from_db()
    assert account.account_error.startswith("authentication failed: 535")
    assert account.paused_until is not None
    stored = row("m")
    assert (stored.status, stored.attempts) == (Status.DEFERRED, 0)
    assert MessageEvent.objects.get(external_id="m").details["deferred_reason"] == "auth"
    assert send(account).claimed == 0  # paused: no new attempt with the same credentials

    save_account(tenant=tenant, data={"id": "main", "host": smtp_server.host, "password": "right"})
    account.refresh_from_db()
    assert (account.account_error, account.paused_until) == ("", None)
    Message.objects.filter(external_id="m").update(next_attempt_at=timezone.now())
    send(account)
    assert len(smtp_server.wait_for(1)) == 1
    assert row("m").status == Status.SENT
    assert crypto.decrypt(account.password_encrypted) == "right"


def test_unreachable_server_backs_off_the_account_without_using_attempts(
    tenant: Tenant, smtp_account: SmtpAccount, smtp_server: SmtpSink
) -> None:
    smtp_server.stop()
    enqueue(tenant, message(id="a"), message(id="b"))
    send(smtp_account)
    smtp_account.refresh_from_db()
    assert smtp_account.unreachable_since is not None
    assert smtp_account.backoff_seconds == 5
    assert smtp_account.paused_until > timezone.now()
    assert [(m.status, m.attempts) for m in Message.objects.order_by("id")] == [(Status.DEFERRED, 0)] * 2
    assert send(smtp_account).claimed == 0  # nobody probes before the backoff is over

    SmtpAccount.objects.filter(pk=smtp_account.pk).update(paused_until=timezone.now())
    Message.objects.update(next_attempt_at=timezone.now())
    send(smtp_account)
    smtp_account.refresh_from_db()
    assert smtp_account.backoff_seconds == 10  # doubled
    assert MessageEvent.objects.filter(event_type=EventType.DEFERRED).count() == 2  # one per message, not per probe

    smtp_server.start()
    SmtpAccount.objects.filter(pk=smtp_account.pk).update(paused_until=timezone.now())
    Message.objects.update(next_attempt_at=timezone.now())
    send(smtp_account)
    assert len(smtp_server.wait_for(2)) == 2
    smtp_account.refresh_from_db()
    assert (smtp_account.unreachable_since, smtp_account.backoff_seconds) == (None, 0)


def test_during_an_outage_one_worker_at_a_time_probes_the_server(
    tenant: Tenant, smtp_account: SmtpAccount, smtp_server: SmtpSink
) -> None:
    SmtpAccount.objects.filter(pk=smtp_account.pk).update(backoff_seconds=5, paused_until=timezone.now(),
                                                          unreachable_since=timezone.now())
    smtp_account.refresh_from_db()
    assert services._take_probe(smtp_account) is None  # this worker probes
    held_until = services._take_probe(smtp_account)  # a second worker meanwhile: held
    assert held_until is not None
    assert held_until - timezone.now() > timedelta(seconds=smtp_account.timeout)
    # A worker that failed at the same moment keeps the pause it finds: no doubling per worker.
    assert services._back_off(smtp_account, "refused", probing=False) == held_until
    assert SmtpAccount.objects.get(pk=smtp_account.pk).backoff_seconds == 5
    assert services._back_off(smtp_account, "refused", probing=True) > held_until
    assert SmtpAccount.objects.get(pk=smtp_account.pk).backoff_seconds == 10


def test_outside_an_outage_every_worker_connects(tenant: Tenant, smtp_account: SmtpAccount) -> None:
    assert services._take_probe(smtp_account) is None
    assert services._take_probe(smtp_account) is None
    assert SmtpAccount.objects.get(pk=smtp_account.pk).paused_until is None


def test_a_batch_claimed_while_another_worker_probes_waits_for_the_probe(
    tenant: Tenant, smtp_account: SmtpAccount, smtp_server: SmtpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    enqueue(tenant, message(id="a"), message(id="b"))
    SmtpAccount.objects.filter(pk=smtp_account.pk).update(backoff_seconds=5, paused_until=timezone.now(),
                                                          unreachable_since=timezone.now())
    claim_due = services.lifecycle.claim_due
    probes: list[object] = []

    def claim_then_other_worker_probes(**kwargs: Any) -> Any:
        claim = claim_due(**kwargs)
        probes.append(services._take_probe(SmtpAccount.objects.get(pk=smtp_account.pk)))
        return claim

    monkeypatch.setattr(services.lifecycle, "claim_due", claim_then_other_worker_probes)
    summary = send(smtp_account)
    assert probes == [None]  # the other worker got the probe
    assert (summary.claimed, summary.sent, summary.released) == (2, 0, 2)
    assert smtp_server.connections == 0  # this worker did not try the server
    held = SmtpAccount.objects.get(pk=smtp_account.pk).paused_until
    assert [(m.status, m.attempts, m.next_attempt_at) for m in Message.objects.order_by("id")] == [
        (Status.DEFERRED, 0, held)] * 2

    # The probe reaches the server: what waited for it is due at once, not when the hold ends.
    monkeypatch.setattr(services.lifecycle, "claim_due", claim_due)
    smtp_account.refresh_from_db()
    services._reachable_again(smtp_account)
    assert all(m.next_attempt_at <= timezone.now() for m in Message.objects.all())
    assert send(smtp_account).sent == 2
    assert len(smtp_server.wait_for(2)) == 2


def test_unreachable_beyond_the_queue_lifetime_fails(
    tenant: Tenant, smtp_account: SmtpAccount, smtp_server: SmtpSink
) -> None:
    smtp_server.stop()
    enqueue(tenant, message(id="old"))
    Message.objects.update(created_at=timezone.now() - timedelta(days=6))
    send(smtp_account)
    stored = row("old")
    assert stored.status == Status.ERROR
    assert stored.last_error.startswith("server unreachable since ")


@FAST_RETRIES
@pytest.mark.parametrize("stage", ["after_data", "data"])
def test_connection_cut_after_the_final_dot_is_retried_once_flagged(
    tenant: Tenant, smtp_account: SmtpAccount, smtp_server: SmtpSink, stage: str
) -> None:
    # Whether the server kept the copy ("after_data") or not ("data"), the client cannot tell.
    smtp_server.drop(stage, times=1)
    enqueue(tenant, message(id="m"))
    send(smtp_account)
    stored = row("m")
    assert (stored.status, stored.possible_duplicate) == (Status.DEFERRED, True)
    send(smtp_account)
    copies = smtp_server.wait_for(2 if stage == "after_data" else 1)
    assert {copy.message_id for copy in copies} == {stored.message_id}
    sent = MessageEvent.objects.get(external_id="m", event_type=EventType.SENT)
    assert sent.details["possible_duplicate"] is True


@FAST_RETRIES
def test_connection_cut_before_the_data_went_is_a_plain_retry(
    tenant: Tenant, smtp_account: SmtpAccount, smtp_server: SmtpSink
) -> None:
    smtp_server.drop("mail", times=1)
    enqueue(tenant, message(id="m"))
    send(smtp_account)
    assert (row("m").status, row("m").possible_duplicate) == (Status.DEFERRED, False)
    send(smtp_account)
    assert len(smtp_server.wait_for(1)) == 1
    assert row("m").status == Status.SENT


@FAST_RETRIES
def test_server_hanging_at_mail_times_out_and_is_retried(
    tenant: Tenant, smtp_account: SmtpAccount, smtp_server: SmtpSink
) -> None:
    SmtpAccount.objects.filter(pk=smtp_account.pk).update(timeout=1)
    smtp_server.hang("mail", 3, times=1)
    enqueue(tenant, message(id="m"))
    started = time.monotonic()
    send(smtp_account)
    assert time.monotonic() - started < 2.5
    assert row("m").status == Status.DEFERRED
    send(smtp_account)
    assert row("m").status == Status.SENT


def test_connections_are_reused_across_messages(
    tenant: Tenant, smtp_account: SmtpAccount, smtp_server: SmtpSink
) -> None:
    enqueue(tenant, *[message(id=f"m{i}") for i in range(30)])
    send(smtp_account)
    enqueue(tenant, *[message(id=f"n{i}") for i in range(30)])
    send(smtp_account)
    assert len(smtp_server.wait_for(60)) == 60
    assert smtp_server.connections == 1


def test_batch_size_bounds_one_run(tenant: Tenant, smtp_account: SmtpAccount, smtp_server: SmtpSink) -> None:
    SmtpAccount.objects.filter(pk=smtp_account.pk).update(batch_size=3)
    enqueue(tenant, *[message(id=f"m{i}") for i in range(5)])
    assert send(smtp_account).sent == 3
    assert send(smtp_account).sent == 2


def test_running_the_same_send_twice_sends_once(
    tenant: Tenant, smtp_account: SmtpAccount, smtp_server: SmtpSink
) -> None:
    enqueue(tenant, message(id="once"))
    send(smtp_account)
    send(smtp_account)
    assert len(smtp_server.messages) == 1


def test_suspended_tenant_and_batch_are_held_then_released(
    tenant: Tenant, smtp_account: SmtpAccount, smtp_server: SmtpSink
) -> None:
    from queueing.services import activate_sending, suspend_sending

    enqueue(tenant, message(id="camp", batch_code="promo"), message(id="plain"))
    suspend_sending(tenant=tenant, batch_code="promo")
    send(smtp_account)
    assert [r.message.get("Subject") for r in smtp_server.wait_for(1)] == ["Hello"]
    assert row("camp").status == Status.HELD
    suspend_sending(tenant=tenant)
    tenant.refresh_from_db()
    enqueue(tenant, message(id="later"))
    send(smtp_account)
    assert len(smtp_server.messages) == 1
    activate_sending(tenant=tenant)
    send(smtp_account)
    assert len(smtp_server.messages) == 2  # "later"; the batch stays held
    activate_sending(tenant=tenant, batch_code="promo")
    send(smtp_account)
    assert len(smtp_server.wait_for(3)) == 3


def test_inactive_tenant_sends_nothing(tenant: Tenant, smtp_account: SmtpAccount, smtp_server: SmtpSink) -> None:
    enqueue(tenant, message(id="m"))
    Tenant.objects.filter(pk=tenant.pk).update(active=False)
    send(smtp_account)
    assert smtp_server.messages == []
    assert row("m").status == Status.QUEUED


def test_expired_message_is_not_sent(tenant: Tenant, smtp_account: SmtpAccount, smtp_server: SmtpSink) -> None:
    from queueing import lifecycle

    enqueue(tenant, message(id="m", expires_ts=time.time() + 60))
    Message.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    send(smtp_account)
    assert smtp_server.messages == []
    assert lifecycle.expire_overdue() == 1
    assert row("m").status == Status.EXPIRED
    assert events("m") == [EventType.EXPIRED]


def test_dead_workers_lease_is_reclaimed_and_flagged(
    tenant: Tenant, smtp_account: SmtpAccount, smtp_server: SmtpSink
) -> None:
    from queueing import lifecycle

    enqueue(tenant, message(id="m"))
    claim = lifecycle.claim_due(account=smtp_account, limit=10, lease_seconds=60)
    assert claim.message_ids
    assert send(smtp_account).claimed == 0  # leased to the (dead) worker
    Message.objects.update(lease_until=timezone.now() - timedelta(seconds=1))
    assert lifecycle.reclaim_expired_leases() == 1
    send(smtp_account)
    assert len(smtp_server.wait_for(1)) == 1
    assert MessageEvent.objects.get(external_id="m").details["possible_duplicate"] is True
    # the dead worker's late write cannot change anything any more
    assert lifecycle.record_sent(claim=claim, message=row("m"), refused=[]) is False


def test_rate_limited_messages_wait_for_the_exact_token_time(
    tenant: Tenant, smtp_account: SmtpAccount, smtp_server: SmtpSink
) -> None:
    SmtpAccount.objects.filter(pk=smtp_account.pk).update(limit_per_minute=2)
    enqueue(tenant, *[message(id=f"m{i}") for i in range(5)])
    started = time.time()
    summary = send(smtp_account)
    assert (summary.sent, summary.released) == (2, 3)
    waiting = Message.objects.filter(status=Status.DEFERRED).order_by("id")
    assert [m.external_id for m in waiting] == ["m2", "m3", "m4"]
    for row_ in waiting:
        assert row_.attempts == 0
        assert started + 59 <= row_.next_attempt_at.timestamp() <= time.time() + 61
    limited = MessageEvent.objects.filter(event_type=EventType.DEFERRED, details__deferred_reason="rate_limit")
    assert limited.count() == 3
    assert send(smtp_account).claimed == 0  # nothing is due before the token comes back


def test_rate_limit_reject_behaviour_fails_the_message(
    tenant: Tenant, smtp_account: SmtpAccount, smtp_server: SmtpSink
) -> None:
    SmtpAccount.objects.filter(pk=smtp_account.pk).update(limit_per_minute=1, limit_behavior="reject")
    enqueue(tenant, message(id="a"), message(id="b"))
    send(smtp_account)
    assert dict(Message.objects.values_list("external_id", "status")) == {"a": "sent", "b": "error"}
    assert row("b").last_error == "rate limit exceeded"


def test_tenant_rate_limit_spans_its_accounts(tenant: Tenant, smtp_server: SmtpSink) -> None:
    Tenant.objects.filter(pk=tenant.pk).update(rate_limits={"per_hour": 3})
    accounts = [SmtpAccount.objects.create(tenant=tenant, external_id=name, host=smtp_server.host,
                                           port=smtp_server.port, security="none", timeout=5)
                for name in ("a", "b")]
    enqueue(tenant, *[message(id=f"{a.external_id}{i}", account_id=a.external_id) for a in accounts
                      for i in range(3)])
    for account in accounts:
        send(account)
    assert len(smtp_server.messages) == 3


@override_settings(GMP_RATE_LIMITER="redis", REDIS_URL="redis://127.0.0.1:1/0")
def test_rate_limiter_unreachable_pauses_limited_accounts_only(tenant: Tenant, smtp_server: SmtpSink) -> None:
    limited = SmtpAccount.objects.create(tenant=tenant, external_id="limited", host=smtp_server.host,
                                         port=smtp_server.port, security="none", timeout=5, limit_per_hour=100)
    free = SmtpAccount.objects.create(tenant=tenant, external_id="free", host=smtp_server.host,
                                      port=smtp_server.port, security="none", timeout=5)
    enqueue(tenant, message(id="l", account_id="limited"), message(id="f", account_id="free"))
    send(limited)
    send(free)
    assert dict(Message.objects.values_list("external_id", "status")) == {"l": "queued", "f": "sent"}
    assert row("l").attempts == 0


def test_renewing_a_lease_extends_only_what_the_claim_still_holds(
    tenant: Tenant, smtp_account: SmtpAccount
) -> None:
    from queueing import lifecycle

    enqueue(tenant, message(id="kept"), message(id="stolen"))
    claim = lifecycle.claim_due(account=smtp_account, limit=10, lease_seconds=5)
    first = {m.external_id: m.lease_until for m in Message.objects.all()}
    Message.objects.filter(external_id="stolen").update(lease_token=None, status=Status.QUEUED)
    held = lifecycle.renew_lease(claim=claim, message_ids=claim.message_ids, lease_seconds=300)
    assert held == {row("kept").pk}
    assert row("kept").lease_until > first["kept"] + timedelta(seconds=200)
    assert row("stolen").lease_until == first["stolen"]


@pytest.mark.django_db(transaction=True)  # outside a transaction, as in a worker: PostgreSQL's one-statement path
def test_sent_outcome_and_event_are_written_together_outside_a_transaction(smtp_server: SmtpSink) -> None:
    from tests.factories import SmtpAccountFactory, TenantFactory

    tenant = TenantFactory(id="solo")
    account = SmtpAccountFactory(tenant=tenant, host=smtp_server.host, port=smtp_server.port, user="",
                                 password_encrypted="", security="none")
    enqueue(tenant, message(id="m", to=["a@example.com", "gone@example.com"]))
    smtp_server.on_rcpt("gone@example.com", 550, "5.1.1 unknown")
    send(account)
    stored = row("m")
    assert (stored.status, stored.attempts, stored.lease_token, stored.smtp_code) == (Status.SENT, 1, None, 250)
    assert stored.refused == [{"recipient": "gone@example.com", "code": 550, "reason": "550 5.1.1 unknown"}]
    sent = MessageEvent.objects.get(message=stored)
    assert (sent.event_type, sent.tenant_id, sent.external_id) == (EventType.SENT, "solo", "m")
    assert sent.details["refused"] == stored.refused
    assert sent.details["sent_ts"] == pytest.approx(stored.sent_at.timestamp())


def test_url_attachment_is_fetched_and_attached(
    tenant: Tenant, smtp_account: SmtpAccount, smtp_server: SmtpSink, files: Any
) -> None:
    url = files.route("/invoice.pdf", b"%PDF-1.4 invoice")
    enqueue(tenant, message(id="m", attachments=[{"filename": "invoice.pdf", "storage_path": url}]))
    send(smtp_account)
    attachment = next(smtp_server.wait_for(1)[0].message.iter_attachments())
    assert (attachment.get_filename(), attachment.get_content_type()) == ("invoice.pdf", "application/pdf")
    assert attachment.get_content() == b"%PDF-1.4 invoice"


@FAST_RETRIES
def test_attachment_server_error_defers_and_404_fails_naming_the_file(
    tenant: Tenant, smtp_account: SmtpAccount, smtp_server: SmtpSink, files: Any
) -> None:
    flaky = files.route("/flaky.pdf", b"", status=503)
    gone = files.route("/gone.pdf", b"", status=404)
    enqueue(tenant, message(id="flaky", attachments=[{"filename": "flaky.pdf", "storage_path": flaky}]),
            message(id="gone", attachments=[{"filename": "gone.pdf", "storage_path": gone}]))
    send(smtp_account)
    assert (row("flaky").status, row("gone").status) == (Status.DEFERRED, Status.ERROR)
    assert "gone.pdf" in row("gone").last_error
    assert smtp_server.messages == []


def test_large_attachment_is_offloaded_and_linked_in_the_body(
    tenant: Tenant, smtp_account: SmtpAccount, smtp_server: SmtpSink, tmp_path: Any
) -> None:
    big = base64.b64encode(b"x" * (2 * 1024 * 1024)).decode()
    Tenant.objects.filter(pk=tenant.pk).update(large_file_config={
        "enabled": True, "max_size_mb": 1, "action": "rewrite", "storage_url": f"file://{tmp_path}",
        "public_base_url": "https://mail.example.com"})
    tenant.refresh_from_db()
    enqueue(tenant, message(id="m", attachments=[{"filename": "big.bin", "storage_path": f"base64:{big}"},
                                                 {"filename": "small.txt", "storage_path": "base64:SGk="}]))
    send(smtp_account)
    mail = smtp_server.wait_for(1)[0].message
    assert [a.get_filename() for a in mail.iter_attachments()] == ["small.txt"]
    body = mail.get_body(("plain",)).get_content()
    assert "big.bin" in body
    assert "https://mail.example.com/files/" in body
    assert row("m").status == Status.SENT


def test_large_attachment_rejected_by_the_tenant_policy(
    tenant: Tenant, smtp_account: SmtpAccount, smtp_server: SmtpSink
) -> None:
    big = base64.b64encode(b"x" * (2 * 1024 * 1024)).decode()
    Tenant.objects.filter(pk=tenant.pk).update(large_file_config={"enabled": True, "max_size_mb": 1,
                                                                  "action": "reject"})
    enqueue(tenant, message(id="m", attachments=[{"filename": "big.bin", "storage_path": f"base64:{big}"}]))
    send(smtp_account)
    assert row("m").status == Status.ERROR
    assert row("m").last_error == "attachment big.bin is 2.0 MB, over the tenant limit of 1.0 MB"
    assert smtp_server.messages == []


def test_every_fetch_mode_arrives_byte_identical(
    tenant: Tenant, smtp_account: SmtpAccount, smtp_server: SmtpSink, files: Any, tmp_path: Any
) -> None:
    payload = bytes(range(256)) * 40  # binary, every byte value
    (tmp_path / "local.bin").write_bytes(payload)
    url = files.route("/remote.bin", payload)
    files.route("/mail-proxy/attachments", payload)  # the tenant's endpoint
    Tenant.objects.filter(pk=tenant.pk).update(client_base_url=files.url)
    tenant.refresh_from_db()
    encoded = base64.b64encode(payload).decode()
    with override_settings(GMP_ATTACHMENT_BASE_DIRS=[str(tmp_path)]):
        enqueue(tenant, message(id="m", attachments=[
            {"filename": "inline.bin", "storage_path": f"base64:{encoded}"},
            {"filename": "local.bin", "storage_path": str(tmp_path / "local.bin")},
            {"filename": "remote.bin", "storage_path": url},
            {"filename": "Übersicht 2026.pdf", "storage_path": "doc_id=7", "fetch_mode": "endpoint"},
        ]))
        send(smtp_account)
    mail = smtp_server.wait_for(1)[0].message
    attached = {part.get_filename(): part for part in mail.iter_attachments()}
    assert sorted(attached) == sorted(["inline.bin", "local.bin", "remote.bin", "Übersicht 2026.pdf"])
    assert all(part.get_content() == payload for part in attached.values())
    assert attached["Übersicht 2026.pdf"].get_content_type() == "application/pdf"
    assert json.loads(files.last("/mail-proxy/attachments").body) == {"storage_path": "doc_id=7"}


def test_the_same_document_in_many_messages_is_fetched_once(
    tenant: Tenant, smtp_account: SmtpAccount, smtp_server: SmtpSink, files: Any
) -> None:
    url = files.route("/logo.png", b"\x89PNG logo")
    enqueue(tenant, *[message(id=f"m{i}", attachments=[{"filename": "logo.png", "storage_path": url}])
                      for i in range(20)])
    send(smtp_account)
    assert len(smtp_server.wait_for(20)) == 20
    assert files.count("/logo.png") == 1


def test_rewritten_attachment_link_works_then_expires(
    tenant: Tenant, smtp_account: SmtpAccount, smtp_server: SmtpSink, tmp_path: Any, api_client: Any
) -> None:
    import re

    from delivery.models import StoredFile

    content = b"y" * (2 * 1024 * 1024 + 5)
    Tenant.objects.filter(pk=tenant.pk).update(large_file_config={
        "enabled": True, "max_size_mb": 1, "action": "rewrite", "storage_url": f"file://{tmp_path}",
        "public_base_url": "http://testserver", "file_ttl_days": 1})
    enqueue(tenant, message(id="m", body=..., body_text="see below", body_html="<p>see below</p>",
                            attachments=[{"filename": "big.bin",
                                          "storage_path": "base64:" + base64.b64encode(content).decode()}]))
    send(smtp_account)
    mail = smtp_server.wait_for(1)[0].message
    html = mail.get_body(("html",)).get_content()
    link = re.search(r'href="(http://testserver/files/[^"]+)"', html)
    assert link, html
    path = link.group(1).removeprefix("http://testserver")
    assert path in mail.get_body(("plain",)).get_content()
    download = api_client.get(path)
    assert download.status_code == 200
    assert b"".join(download.streaming_content) == content
    StoredFile.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert api_client.get(path).status_code == 404


class _CountedWrites:
    """The client socket, counting the writes that reach the server (one per round trip)."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self.writes = 0

    def sendall(self, data: bytes) -> None:
        self.writes += 1
        self._sock.sendall(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def test_with_pipelining_a_message_takes_two_writes_whatever_its_recipients(
    tenant: Tenant, smtp_account: SmtpAccount, smtp_server: SmtpSink
) -> None:
    recipients = ["a@example.com", "b@example.com", "c@example.com"]
    enqueue(tenant, message(id="m", to=recipients[:1], cc=recipients[1:]))
    pooled = smtp.pool.acquire(smtp_account)
    counted = _CountedWrites(pooled.client.sock)
    pooled.client.sock = counted
    smtp.pool.release(smtp_account, pooled)
    assert send(smtp_account).sent == 1
    assert sorted(smtp_server.wait_for(1)[0].rcpt_tos) == recipients
    # MAIL + 3 RCPT + DATA in one write, then the data; one at a time: 5 commands, then the data.
    assert counted.writes == (2 if smtp_server.pipelining else 6)


def test_refusals_in_a_pipelined_session_leave_the_connection_usable(
    tenant: Tenant, smtp_account: SmtpAccount, smtp_server: SmtpSink
) -> None:
    smtp_server.on_mail(550, "5.7.1 sender refused", times=1)
    smtp_server.on_rcpt("gone@example.com", 550, "5.1.1 unknown", times=1)
    smtp_server.on_data(554, "5.6.0 content refused", times=1)
    enqueue(tenant, message(id="mail-refused"), message(id="nobody", to=["gone@example.com"]),
            message(id="data-refused"), message(id="fine"))
    summary = send(smtp_account)
    assert (summary.sent, summary.failed) == (1, 3)
    assert [m.subject for m in smtp_server.messages] == ["Hello"]
    assert [row(i).status for i in ("mail-refused", "nobody", "data-refused", "fine")] == [
        Status.ERROR, Status.ERROR, Status.ERROR, Status.SENT]
    assert row("mail-refused").last_error == "550 5.7.1 sender refused"
    assert row("nobody").last_error == "every recipient refused: 550 5.1.1 unknown"
    assert row("data-refused").last_error == "554 5.6.0 content refused"
    assert smtp_server.connections == 1  # every reply read in order: the session stayed in step
