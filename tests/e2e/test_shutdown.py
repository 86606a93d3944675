"""Graceful shutdown with real processes: SIGTERM while a batch is being sent.

`docker stop`, `docker compose down` and Kubernetes send SIGTERM to the container's main
process only (PID 1, or the child of the init that compose's `init: true` puts there).
For a Celery worker that is a warm shutdown: it takes no new task, lets the running ones
finish and exits. The product's side of the contract (SPEC §19): the SMTP transaction in
progress is completed and recorded, and the messages the batch did not get to are given
back, so nothing is left `sending` under a lease nobody will renew. A message the SMTP
server has but the database does not call `sent` would be sent again by the next
worker: a duplicate.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time

import pytest
import requests

from queueing.models import Message, Status
from tenants.models import Tenant
from tenants.services import create_api_key
from tests.e2e.harness import Process, Stack, free_port
from tests.factories import SmtpAccountFactory
from tests.smtp_sink import SmtpSink

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

TOTAL = 50
DATA_REPLY_DELAY = 0.3  # every message sits accepted but unanswered this long: SIGTERM lands mid-transaction
ACCOUNT_TIMEOUT = 2


def make_account(sink: SmtpSink) -> str:
    tenant = Tenant.objects.create(id="t0")
    SmtpAccountFactory(tenant=tenant, external_id="main", host=sink.host, port=sink.port, user="",
                       password_encrypted="", security="none", timeout=ACCOUNT_TIMEOUT)
    return create_api_key(tenant=tenant).raw


def submit(url: str, key: str, ids: list[str]) -> None:
    messages = [{"id": i, "from": "app@example.com", "to": f"{i}@example.com", "subject": i, "body": "x"}
                for i in ids]
    answer = requests.post(f"{url}/commands/add-messages", json={"messages": messages},
                           headers={"X-API-Token": key}, timeout=30).json()
    assert answer["queued"] == len(messages), answer


def grace_seconds(stack: Stack) -> float:
    """What a stop_grace_period must cover: the batch's budget and the transaction at its end."""
    return float(stack.env["GMP_BATCH_SECONDS"]) + 2 * ACCOUNT_TIMEOUT + 10


def terminate_main_process(stack: Stack, process: Process) -> float:
    """SIGTERM to the main process alone, as Docker does; seconds until it exited."""
    started = time.monotonic()
    os.kill(process.popen.pid, signal.SIGTERM)
    try:
        process.popen.wait(timeout=grace_seconds(stack))
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{process.name} still running {grace_seconds(stack)} s after SIGTERM\n"
                             f"{process.tail()}") from None
    stack.processes.remove(process)  # exited on purpose: `wait` must not fail on it
    return time.monotonic() - started


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def assert_nothing_half_done(sink: SmtpSink) -> None:
    """Every message the server received is recorded sent; none is left under a lease."""
    received = {message.message_id for message in sink.messages}
    statuses = dict(Message.objects.values_list("message_id", "status"))
    assert received <= set(statuses)
    not_recorded = {message_id: statuses[message_id] for message_id in received
                    if statuses[message_id] != Status.SENT}
    assert not_recorded == {}, "received by the server but not recorded sent (a future duplicate)"
    assert not Message.objects.filter(status=Status.SENDING).exists()
    assert not Message.objects.filter(lease_token__isnull=False).exists()
    assert not Message.objects.filter(possible_duplicate=True).exists()
    # The batch was really interrupted: the messages it did not reach wait for the next worker.
    assert Message.objects.exclude(status=Status.SENT).count() > 0
    assert set(Message.objects.exclude(status=Status.SENT).values_list("status", flat=True)) <= {
        Status.QUEUED, Status.DEFERRED}


def assert_every_message_once(stack: Stack, sink: SmtpSink) -> None:
    stack.wait(lambda: Message.objects.filter(status=Status.SENT).count() == TOTAL, f"{TOTAL} sent", timeout=90)
    copies = collections.Counter(message.message_id for message in sink.messages)
    message_ids = set(Message.objects.values_list("message_id", flat=True))
    lost = sum(1 for message_id in message_ids if copies[message_id] == 0)
    duplicated = sum(1 for message_id in message_ids if copies[message_id] > 1)
    assert (lost, duplicated, sum(copies.values())) == (0, 0, TOTAL)
    assert not Message.objects.filter(possible_duplicate=True).exists()


def test_sigterm_finishes_the_smtp_transaction_and_gives_the_batch_back(stack: Stack, sink: SmtpSink) -> None:
    key = make_account(sink)
    sink.hang("data", DATA_REPLY_DELAY)
    url = stack.start_web()
    worker = stack.start_worker("w1")
    stack.start_beat()
    submit(url, key, [f"m{i}" for i in range(TOTAL)])
    stack.wait(lambda: len(sink.messages) >= 3, "the first deliveries")
    assert Message.objects.filter(status=Status.SENDING).exists()  # a batch holds its lease

    took = terminate_main_process(stack, worker)

    log = worker.log.read_text(errors="replace")
    print(f"worker exited after {took:.1f} s with {worker.popen.returncode}; received={len(sink.messages)}")
    assert "Warm shutdown" in log
    assert worker.popen.returncode == 0, worker.tail()
    assert len(sink.messages) < TOTAL
    assert_nothing_half_done(sink)

    stack.start_worker("w2")
    assert_every_message_once(stack, sink)


def test_sigterm_to_the_single_container_stops_its_worker_gracefully(stack: Stack, sink: SmtpSink) -> None:
    """The image's default command (`manage.py serve`) as PID 1: it passes SIGTERM on to its worker."""
    key = make_account(sink)
    sink.hang("data", DATA_REPLY_DELAY)
    port = free_port()
    # The image has /data; with DATABASE_URL set, settings create no data folder themselves.
    (stack.workdir / "data").mkdir(exist_ok=True)
    serve = stack._spawn("serve", [sys.executable, "manage.py", "serve", "--host", "127.0.0.1", "--port", str(port),
                                   "--concurrency", "1"])
    url = f"http://127.0.0.1:{port}"
    stack.wait(lambda: requests.get(f"{url}/health", timeout=1).status_code == 200, "serve /health", timeout=60)
    stack.wait(lambda: " ready." in serve.log.read_text(errors="replace"), "the embedded worker ready", timeout=60)
    submit(url, key, [f"m{i}" for i in range(TOTAL)])
    stack.wait(lambda: len(sink.messages) >= 3, "the first deliveries")
    children = serve.children()  # the worker and gunicorn, each in a session of its own
    assert len(children) == 2

    try:
        took = terminate_main_process(stack, serve)
    finally:
        leftovers = [pid for pid in children if alive(pid)]
        for pid in leftovers:
            os.killpg(pid, signal.SIGKILL)

    print(f"serve exited after {took:.1f} s with {serve.popen.returncode}; received={len(sink.messages)}")
    assert leftovers == []  # its worker and gunicorn ended before it did
    assert "Warm shutdown" in serve.log.read_text(errors="replace")
    assert len(sink.messages) < TOTAL
    assert_nothing_half_done(sink)

    stack.start_worker("w2")
    stack.start_beat()
    assert_every_message_once(stack, sink)
