"""Workers that die: SIGKILL of pool processes and of whole worker nodes, SIGTERM mid-batch.

A killed process may have handed one message to the server without recording it: that
message's lease runs out, it is reclaimed flagged `possible_duplicate` and sent again.
So each killed process permits at most one duplicate, always flagged. A SIGTERM is a
graceful stop and permits none.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable

import pytest

from tests.e2e.harness import Process, Stack
from tests.reliability.fleet import all_final, conclude, count_tally, create_tenants, shared_dsn
from tests.reliability.ledger import ClientLedger, Database
from tests.smtp_sink import SmtpSink

pytestmark = [pytest.mark.postgres, pytest.mark.reliability, pytest.mark.django_db(transaction=True)]


def kill_one_child(process: Process) -> int:
    """SIGKILL one pool process of a worker node (its main process forks a new one); how many died."""
    for child in process.children()[:1]:
        with contextlib.suppress(ProcessLookupError):  # it may have been replaced already
            os.kill(child, signal.SIGKILL)
            return 1
    return 0


def submit_round_robin(client: ClientLedger, url: str, tenants: list[tuple[str, str]], per_tenant: int) -> None:
    for tenant_id, key in tenants:
        client.submit_all(url, key, tenant_id, [f"{tenant_id}-m{i}" for i in range(per_tenant)])


def test_repeated_sigkill_of_worker_processes_during_1000_sends(
        make_stack: Callable[..., Stack], sink: SmtpSink, record: Callable[[str], None]) -> None:
    started = time.monotonic()
    stack = make_stack()
    db = Database(shared_dsn())
    url = stack.start_web()
    tenants = create_tenants(url, sink.address, 4)
    sink.hang("data", 0.01)  # 10 ms per message: the kills land in the middle of batches
    victim = stack.start_worker("w1", concurrency=2)
    stack.start_worker("w2", concurrency=2)
    stack.start_beat()
    client = ClientLedger()
    submit_round_robin(client, url, tenants, 250)
    killed = 0
    for round_ in range(6):
        stack.wait(lambda n=round_: len(sink.messages) >= 60 * (n + 1), f"deliveries before kill {round_ + 1}",
                   timeout=60)
        killed += kill_one_child(victim)
        time.sleep(1.5)  # the node forks a replacement; a child killed while starting takes the node down
    # and the node itself, twice, each time replaced by a new one
    for round_ in range(2):
        stack.kill(victim)
        killed += 3  # its main process and two pool processes
        victim = stack.start_worker(f"w1-{round_}", concurrency=2)
        stack.wait(lambda n=round_: len(sink.messages) >= 500 + 100 * n, "deliveries after the node kill",
                   timeout=90)
    stack.wait(all_final(db, [t for t, _ in tenants], 1000), "1000 final", timeout=240)
    result = count_tally(db, client, sink)
    assert db.count([t for t, _ in tenants], "sent") == 1000
    conclude(record, result, bound=killed, started=started, extra=f"kills={killed} flagged={result.flagged}")
    # A killed process leaves one message it may have been sending; the rest of its claim
    # was never tried and goes back unflagged.
    assert result.flagged <= killed


def test_sigkill_of_whole_worker_nodes(make_stack: Callable[..., Stack], sink: SmtpSink,
                                      record: Callable[[str], None]) -> None:
    """SIGKILL to the process group: the main process and its pool children die together."""
    started = time.monotonic()
    stack = make_stack()
    db = Database(shared_dsn())
    url = stack.start_web()
    tenants = create_tenants(url, sink.address, 2)
    sink.hang("data", 0.02)
    first = stack.start_worker("w1", concurrency=2)
    second = stack.start_worker("w2", concurrency=2)
    stack.start_beat()
    client = ClientLedger()
    submit_round_robin(client, url, tenants, 150)
    stack.wait(lambda: len(sink.messages) >= 40, "the first deliveries")
    stack.kill(first)
    stack.start_worker("w3", concurrency=2)
    stack.wait(lambda: len(sink.messages) >= 120, "deliveries after the first node kill", timeout=60)
    stack.kill(second)
    stack.start_worker("w4", concurrency=2)
    stack.wait(all_final(db, [t for t, _ in tenants], 300), "300 final", timeout=120)
    result = count_tally(db, client, sink)
    conclude(record, result, bound=4, started=started, extra=f"nodes_killed=2 flagged={result.flagged}")
    assert result.flagged <= 4  # two pool processes per node, one message in flight each


def terminate(stack: Stack, process: Process, *, group: bool) -> int:
    """SIGTERM to the main process (as Docker does) or to the whole group (as systemd does)."""
    if group:
        os.killpg(process.popen.pid, signal.SIGTERM)
    else:
        os.kill(process.popen.pid, signal.SIGTERM)
    try:
        process.popen.wait(timeout=float(stack.env["GMP_BATCH_SECONDS"]) + 4 * 2 + 20)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{process.name} still running after SIGTERM\n{process.tail()}") from None
    stack.processes.remove(process)
    return process.popen.returncode


def test_sigterm_during_a_batch_sends_nothing_twice(make_stack: Callable[..., Stack], sink: SmtpSink,
                                                    record: Callable[[str], None]) -> None:
    started = time.monotonic()
    stack = make_stack()
    db = Database(shared_dsn())
    url = stack.start_web()
    tenants = create_tenants(url, sink.address, 2, batch_size=20)
    sink.hang("data", 0.2)  # each message sits accepted but unanswered: SIGTERM lands mid-transaction
    first = stack.start_worker("w1", concurrency=2)
    second = stack.start_worker("w2", concurrency=1)
    stack.start_beat()
    client = ClientLedger()
    submit_round_robin(client, url, tenants, 60)
    stack.wait(lambda: len(sink.messages) >= 10, "the first deliveries")
    codes = [terminate(stack, first, group=False)]  # docker stop
    stack.start_worker("w3", concurrency=2)
    stack.wait(lambda: len(sink.messages) >= 50, "deliveries after the first SIGTERM", timeout=60)
    codes.append(terminate(stack, second, group=True))  # systemd's control-group stop
    stack.start_worker("w4", concurrency=1)
    stack.wait(all_final(db, [t for t, _ in tenants], 120), "120 final", timeout=120)
    result = count_tally(db, client, sink)
    conclude(record, result, bound=0, started=started, extra=f"exit_codes={codes}")
    assert codes == [0, 0]
