"""Delivery reports end to end: real web, workers and beat; a tenant application over HTTP."""

from __future__ import annotations

import threading
import time

import pytest
import requests

from queueing.models import MessageEvent, Status
from tests.e2e.harness import Stack
from tests.e2e.test_fleet import all_sent, make_tenants, submit
from tests.smtp_sink import SmtpSink
from tests.tenant_app import Answer, Call, TenantApp

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def with_app(stack: Stack, sink: SmtpSink, app: TenantApp) -> tuple[str, str]:
    """A tenant whose reports go to `app`; the web, one worker (2 processes) and beat running."""
    [(tenant, key)] = make_tenants(sink, 1)
    type(tenant).objects.filter(pk=tenant.pk).update(client_base_url=app.url)
    url = stack.start_web()
    stack.start_worker("w1", concurrency=2)
    stack.start_beat()
    return url, key


def sent_reports(app: TenantApp) -> dict[str, float]:
    return {item["id"]: call.received_at for call in list(app.calls) for item in call.items
            if item["event"] == "sent"}


def test_report_arrives_within_two_seconds_of_the_send(stack: Stack, sink: SmtpSink) -> None:
    with TenantApp() as app:
        url, key = with_app(stack, sink, app)
        lags = []
        for index in range(5):
            submit(url, key, [f"m{index}"], priority="immediate")
            accepted = sink.wait_for(index + 1)[-1].received_at
            stack.wait(lambda i=index: f"m{i}" in sent_reports(app), f"report of m{index}", timeout=10)
            lags.append(sent_reports(app)[f"m{index}"] - accepted)
        print(f"SMTP accepted -> report received: {[round(lag, 3) for lag in lags]}")
        assert max(lags) < 2


def test_seed_client_flow_drains_its_outbox_in_four_calls(stack: Stack, sink: SmtpSink) -> None:
    """The app answers `queued: n` and then submits its outbox two messages at a time."""
    with TenantApp() as app:
        url, key = with_app(stack, sink, app)
        outbox = [f"app-{i}" for i in range(5)]
        draining: list[int] = []

        def on_sync(call: Call) -> Answer:
            if draining and draining[-1] == 0:
                return Answer()  # drained: later calls only carry reports
            batch, outbox[:] = outbox[:2], outbox[2:]
            draining.append(len(outbox) + len(batch))
            if batch:
                threading.Timer(0.05, submit, args=(url, key, batch)).start()
            return Answer(body={"ok": True, "queued": len(outbox) + len(batch)})

        app.hook = on_sync
        requests.post(f"{url}/commands/run-now", headers={"X-API-Token": key}, timeout=5)
        stack.wait(lambda: len(sent_reports(app)) == 5, "a sent report for each of the 5 messages", timeout=30)
        assert draining == [5, 3, 1, 0]  # four sync calls until the tenant had nothing more to send
        assert all_sent(5)


def test_slow_tenant_does_not_delay_a_fast_one(stack: Stack, sink: SmtpSink) -> None:
    with TenantApp() as slow, TenantApp() as fast:
        slow.default = Answer(delay=8)
        (slow_tenant, slow_key), (fast_tenant, fast_key) = make_tenants(sink, 2)
        type(slow_tenant).objects.filter(pk=slow_tenant.pk).update(client_base_url=slow.url)
        type(fast_tenant).objects.filter(pk=fast_tenant.pk).update(client_base_url=fast.url)
        url = stack.start_web()
        stack.start_worker("w1", concurrency=2)
        stack.start_worker("w2", concurrency=2)
        stack.start_beat()
        submit(url, slow_key, ["slow-1"], priority="immediate")
        slow.wait_for_calls(1, timeout=10)  # the slow tenant is now holding a worker
        started = time.time()
        submit(url, fast_key, ["fast-1"], priority="immediate")
        stack.wait(lambda: "fast-1" in sent_reports(fast), "the fast tenant's report", timeout=10)
        assert sent_reports(fast)["fast-1"] - started < 3


def test_worker_killed_mid_report_loses_nothing(stack: Stack, sink: SmtpSink) -> None:
    with TenantApp() as app:
        app.plan = [Answer(delay=30)]  # the first call hangs: the worker is killed during it
        [(tenant, key)] = make_tenants(sink, 1)
        type(tenant).objects.filter(pk=tenant.pk).update(client_base_url=app.url)
        url = stack.start_web()
        worker = stack.start_worker("w1")
        stack.start_beat()
        submit(url, key, [f"m{i}" for i in range(10)])
        stack.wait(lambda: all_sent(10), "10 sent")
        app.wait_for_calls(1, timeout=10)
        stack.kill(worker)
        stack.start_worker("w2")
        stack.wait(lambda: len(sent_reports(app)) == 10 and not MessageEvent.objects.filter(
            reported_at__isnull=True).exists(), "every report acknowledged after the kill", timeout=60)
        assert MessageEvent.objects.filter(event_type="sent").count() == 10
        assert not MessageEvent.objects.filter(message__status=Status.ERROR).exists()


