"""End to end with real processes: gunicorn, Celery workers and beat, PostgreSQL, Redis, SMTP.

Each test ends with the two numbers of the invariants: `lost` (accepted but never
delivered: must be 0) and `dup` (delivered more than once: only messages the proxy
itself flagged `possible_duplicate` may be).
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import time
from typing import Any

import pytest
import redis
import requests
from django.conf import settings

from queueing.models import EventType, Message, MessageEvent, Status
from tenants.models import SmtpAccount, Tenant
from tenants.services import create_api_key
from tests.e2e.harness import Stack
from tests.factories import SmtpAccountFactory
from tests.smtp_sink import SmtpSink

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def make_tenants(sink: SmtpSink, count: int, **account: Any) -> list[tuple[Tenant, str]]:
    made = []
    for index in range(count):
        tenant = Tenant.objects.create(id=f"t{index}")
        SmtpAccountFactory(tenant=tenant, external_id="main", host=sink.host, port=sink.port, user="",
                           password_encrypted="", security="none", timeout=2, **account)
        made.append((tenant, create_api_key(tenant=tenant).raw))
    return made


def submit(url: str, key: str, ids: list[str], **fields: Any) -> None:
    for start in range(0, len(ids), 500):
        messages = [{"id": i, "from": "app@example.com", "to": f"{i}@example.com", "subject": i, "body": "x",
                     **fields} for i in ids[start:start + 500]]
        answer = requests.post(f"{url}/commands/add-messages", json={"messages": messages},
                               headers={"X-API-Token": key}, timeout=30).json()
        assert answer["queued"] == len(messages), answer


def ledger(sink: SmtpSink) -> tuple[int, int]:
    """(lost, unexplained duplicates) from the SMTP server's ledger against the database."""
    copies = collections.Counter(received.message_id for received in sink.messages)
    rows = list(Message.objects.values_list("message_id", "possible_duplicate"))
    lost = sum(1 for message_id, _ in rows if copies[message_id] == 0)
    dup = sum(1 for message_id, flagged in rows if copies[message_id] > 1 and not flagged)
    return lost, dup


def all_sent(total: int) -> bool:
    return Message.objects.filter(status=Status.SENT).count() == total


def test_immediate_message_over_http_is_delivered_without_run_now(stack: Stack, sink: SmtpSink) -> None:
    [(_, key)] = make_tenants(sink, 1)
    url = stack.start_web()
    stack.start_worker("w1")
    started = time.monotonic()
    submit(url, key, ["hello"], priority="immediate")
    received = sink.wait_for(1, timeout=10)[0]
    assert time.monotonic() - started < 5  # the doorbell, not a sweep (there is no beat)
    assert received.rcpt_tos == ("hello@example.com",)
    stack.wait(lambda: all_sent(1), "the outcome recorded")
    listed = requests.get(f"{url}/messages/hello", headers={"X-API-Token": key}, timeout=5).json()["message"]
    assert listed["status"] == "sent"
    assert [event["type"] for event in listed["events"]] == ["sent"]


def test_beat_sweep_delivers_normal_priority_mail(stack: Stack, sink: SmtpSink) -> None:
    [(_, key)] = make_tenants(sink, 1)
    url = stack.start_web()
    stack.start_worker("w1")
    stack.start_beat()
    submit(url, key, [f"m{i}" for i in range(120)])
    stack.wait(lambda: all_sent(120), "120 sent", timeout=60)
    assert ledger(sink) == (0, 0)
    assert sink.connections <= 4  # pooled: a handful of sessions, not one per message


def test_rate_limit_holds_across_four_worker_processes(stack: Stack, sink: SmtpSink) -> None:
    [(tenant, key)] = make_tenants(sink, 1, limit_per_minute=5)
    url = stack.start_web()
    stack.start_worker("w1", concurrency=2)
    stack.start_worker("w2", concurrency=2)
    stack.start_beat()
    submit(url, key, [f"m{i}" for i in range(40)])
    time.sleep(66)
    times = sorted(received.received_at for received in sink.messages)
    busiest = max(sum(1 for t in times if start <= t < start + 60) for start in times)
    print(f"sent={len(times)} busiest 60 s window={busiest}")
    assert busiest <= 5
    assert len(times) >= 6  # the second minute's tokens were used: sending resumed, not stalled
    limited = MessageEvent.objects.filter(tenant=tenant, event_type=EventType.DEFERRED,
                                          details__deferred_reason="rate_limit")
    assert limited.exists()
    assert not Message.objects.filter(status=Status.ERROR).exists()


def test_sigkill_of_worker_processes_loses_nothing(stack: Stack, sink: SmtpSink) -> None:
    tenants = make_tenants(sink, 4)
    sink.hang("data", 0.02)  # 20 ms per message: the kills land in the middle of batches
    url = stack.start_web()
    victim = stack.start_worker("w1", concurrency=2)
    stack.start_worker("w2", concurrency=2)
    stack.start_beat()
    for index, (_, key) in enumerate(tenants):
        submit(url, key, [f"t{index}-m{i}" for i in range(100)])
    for _ in range(3):
        time.sleep(1.5)
        for child in victim.children()[:1]:
            signal_child(child)
    stack.wait(lambda: all_sent(400), "400 sent after the kills", timeout=90)
    lost, dup = ledger(sink)
    print(f"lost={lost} dup={dup} copies={len(sink.messages)}")
    assert (lost, dup) == (0, 0)


def signal_child(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it may have been replaced already
        os.kill(pid, signal.SIGKILL)


def test_redis_flushed_mid_run_loses_nothing(stack: Stack, sink: SmtpSink) -> None:
    tenants = make_tenants(sink, 4)
    sink.hang("data", 0.02)
    url = stack.start_web()
    stack.start_worker("w1", concurrency=2)
    stack.start_beat()
    for index, (_, key) in enumerate(tenants):
        submit(url, key, [f"t{index}-m{i}" for i in range(50)])
    time.sleep(1)
    redis.Redis.from_url(settings.REDIS_URL).flushdb()  # queued tasks and buckets gone
    stack.wait(lambda: all_sent(200), "200 sent after the flush", timeout=60)
    assert ledger(sink) == (0, 0)


def test_smtp_server_down_for_20_seconds_delays_mail_and_loses_none(stack: Stack, sink: SmtpSink) -> None:
    [(_, key)] = make_tenants(sink, 1)
    sink.hang("data", 0.02)
    url = stack.start_web()
    stack.start_worker("w1", concurrency=2)
    stack.start_beat()
    submit(url, key, [f"m{i}" for i in range(150)])
    stack.wait(lambda: len(sink.messages) >= 20, "the first deliveries")
    sink.stop()
    time.sleep(20)
    assert Message.objects.filter(status=Status.SENT).count() < 150
    attempts_during_outage = SmtpAccount.objects.get().backoff_seconds
    sink.start()
    stack.wait(lambda: all_sent(150), "150 sent after the server came back", timeout=60)
    assert ledger(sink) == (0, 0)
    assert attempts_during_outage > 0  # the account was backing off, as a whole
    assert not Message.objects.filter(status=Status.ERROR).exists()
