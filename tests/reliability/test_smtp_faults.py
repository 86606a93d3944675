"""The SMTP server misbehaving: 4xx storms, an outage, 5xx at each stage, hangs, cut connections.

Faults come from the scriptable sink (replies, hangs) and from the fault proxy in front of
it (blackhole, cuts). Only one of them may produce a duplicate: the server took the data
and its reply never reached the worker (a hang or a cut after the final dot). The proxy
then cannot know the outcome, retries once, and flags the message `possible_duplicate`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import pytest

from tests.e2e.harness import Stack
from tests.reliability.faultproxy import FaultProxy
from tests.reliability.fleet import all_final, conclude, count_tally, create_account, create_tenant, shared_dsn
from tests.reliability.ledger import ClientLedger, Database, tally
from tests.smtp_sink import SmtpSink
from tests.tenant_app import TenantApp

pytestmark = [pytest.mark.postgres, pytest.mark.reliability, pytest.mark.django_db(transaction=True)]

ACCOUNT_TIMEOUT = 2  # seconds: every hang below is far longer


@contextlib.contextmanager
def sinks(count: int) -> Iterator[list[SmtpSink]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(SmtpSink()) for _ in range(count)]


def test_4xx_storms_then_recovery(make_stack: Callable[..., Stack], sink: SmtpSink,
                                  record: Callable[[str], None]) -> None:
    started = time.monotonic()
    stack = make_stack(GMP_MAX_RETRIES=100)  # the storms outlast the default 5 retries of 1 s
    db = Database(shared_dsn())
    url = stack.start_web()
    key = create_tenant(url, "t0")
    create_account(url, "t0", *sink.address, batch_size=10)
    sink.hang("data", 0.01)
    stack.start_worker("w1", concurrency=2)
    stack.start_worker("w2", concurrency=2)
    stack.start_beat()
    client = ClientLedger()
    client.submit_all(url, key, "t0", [f"m{i}" for i in range(300)])
    stack.wait(lambda: len(sink.messages) >= 20, "the first deliveries")
    storms = [
        ("421 at MAIL", lambda: sink.on_mail(421, "4.3.2 service shutting down")),
        ("450 at RCPT", lambda: sink.on_rcpt("*", 450, "4.2.1 mailbox busy")),
        ("451 after the data", lambda: sink.on_data(451, "4.3.0 local error")),
        ("452 at RCPT", lambda: sink.on_rcpt("*", 452, "4.5.3 too many recipients")),
    ]
    for _, start_storm in storms:
        before = sink.transactions
        start_storm()
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            time.sleep(0.2)
        sink.reset_script()
        sink.hang("data", 0.01)
        assert sink.transactions > before  # the storm was met by real attempts
    stack.wait(all_final(db, ["t0"], 300), "300 final after the storms", timeout=120)
    codes = {event[4].get("smtp_code") for event in db.events(["t0"], "deferred")}
    result = count_tally(db, client, sink)
    assert db.count(["t0"], "sent") == 300
    assert {421, 450, 451, 452} <= codes, codes
    conclude(record, result, bound=0, started=started, extra=f"deferral_codes={sorted(c for c in codes if c)}")


def outage_attempts(stack: Stack, url: str, tenant_id: str, workers: int, seconds: float) -> tuple[int, int]:
    """Connections the sink saw while it dropped every session at the banner, and the messages due."""
    with SmtpSink() as sink:
        sink.drop("banner")  # an outage from the start: nothing is pooled
        key = create_tenant(url, tenant_id)
        create_account(url, tenant_id, *sink.address, batch_size=20)
        fleet = [stack.start_worker(f"{tenant_id}-w{n}") for n in range(workers)]
        client = ClientLedger()
        client.submit_all(url, key, tenant_id, [f"{tenant_id}-m{i}" for i in range(200)])
        time.sleep(seconds)
        attempts = sink.connections
        sink.reset_script()
        db = Database(shared_dsn())
        stack.wait(all_final(db, [tenant_id], 200), f"{tenant_id}: 200 final after the outage", timeout=90)
        result = count_tally(db, client, sink)
        assert (result.lost, result.dup) == (0, 0)
        for process in fleet:
            stack.stop(process)
            stack.processes.remove(process)
        return attempts, result.sent


@pytest.mark.slow
def test_account_backoff_does_not_grow_with_the_number_of_workers(
        make_stack: Callable[..., Stack], record: Callable[[str], None]) -> None:
    started = time.monotonic()
    stack = make_stack(GMP_BACKOFF_MIN_SECONDS=1, GMP_BACKOFF_MAX_SECONDS=4)
    url = stack.start_web()
    stack.start_beat()
    one, sent_one = outage_attempts(stack, url, "solo", workers=1, seconds=20)
    four, sent_four = outage_attempts(stack, url, "fleet", workers=4, seconds=20)
    line = (f"lost=0 dup=0 sent={sent_one + sent_four} elapsed={time.monotonic() - started:.1f}s "
            f"connection_attempts_1_worker={one} connection_attempts_4_workers={four}")
    print(f"\n{line}")
    record(line)
    # 200 messages wait 20 s: without a shared backoff that is hundreds of attempts, and
    # with a backoff per process four times those of one worker. With one probe at a time
    # for the fleet, four workers add at most one attempt each in the outage's first
    # moment (before any of them has recorded it), then probe as one.
    assert one <= 15
    assert four <= one + 3


def test_5xx_at_each_stage_is_reported_and_not_retried(make_stack: Callable[..., Stack],
                                                       record: Callable[[str], None]) -> None:
    started = time.monotonic()
    stack = make_stack()
    db = Database(shared_dsn())
    url = stack.start_web()
    stages = {"mail": 550, "rcpt": 553, "data": 554}
    with sinks(3) as servers, TenantApp() as app:
        key = create_tenant(url, "t0", client_base_url=app.url)
        by_stage = dict(zip(stages, servers, strict=True))
        by_stage["mail"].on_mail(550, "5.7.1 sender refused")
        by_stage["rcpt"].on_rcpt("*", 553, "5.1.3 bad recipient")
        by_stage["data"].on_data(554, "5.6.0 content refused")
        for index, (stage, server) in enumerate(by_stage.items()):
            create_account(url, "t0", *server.address, account_id=stage, is_default=index == 0)
        stack.start_worker("w1", concurrency=2)
        stack.start_beat()
        client = ClientLedger()
        for stage in stages:
            client.submit_all(url, key, "t0", [f"{stage}-{i}" for i in range(5)], account_id=stage)
        stack.wait(all_final(db, ["t0"], 15), "15 final", timeout=60)
        time.sleep(4)  # four retry delays of 1 s: a retried message would show by now
        stack.wait(lambda: len([i for c in app.calls for i in c.items if i["event"] == "error"]) >= 15,
                   "15 error reports", timeout=30)
        reported = {item["id"]: item for call in app.calls for item in call.items if item["event"] == "error"}
        for stage, code in stages.items():
            assert by_stage[stage].transactions == 5, stage  # one MAIL per message: none retried
            for i in range(5):
                assert reported[f"{stage}-{i}"]["smtp_code"] == code, reported[f"{stage}-{i}"]
        assert {row.attempts for row in db.messages(["t0"])} == {1}
        received = [m.message_id for server in servers for m in server.messages]
        assert received == []
        failing = set(client.accepted)
        result = tally(accepted=client.accepted, rows=db.messages(["t0"]), received=received, failing=failing)
    conclude(record, result, bound=0, started=started, extra="errors_reported=15")


def test_hangs_are_bounded_by_the_account_timeout_then_retried(make_stack: Callable[..., Stack],
                                                               record: Callable[[str], None]) -> None:
    """Hangs of 300 s at the banner, after MAIL and after the final dot; all mail out long before."""
    started = time.monotonic()
    stack = make_stack()
    db = Database(shared_dsn())
    url = stack.start_web()
    with sinks(3) as (banner_sink, mail_sink, dot_sink), FaultProxy(banner_sink.address) as proxy:
        proxy.blackhole()  # the banner never comes
        mail_sink.hang("mail", 300, times=1)
        dot_sink.hang("data", 300, times=1)  # the data is taken; its reply never comes
        keys = {}
        for tenant_id, address in (("banner", proxy.address), ("mail", mail_sink.address),
                                   ("dot", dot_sink.address)):
            keys[tenant_id] = create_tenant(url, tenant_id)
            create_account(url, tenant_id, *address, timeout=ACCOUNT_TIMEOUT)
        stack.start_worker("w1", concurrency=2)
        stack.start_worker("w2", concurrency=2)
        stack.start_beat()
        client = ClientLedger()
        submitted = time.monotonic()
        for tenant_id, key in keys.items():
            client.submit_all(url, key, tenant_id, [f"{tenant_id}-{i}" for i in range(5)])
        stack.wait(lambda: proxy.accepted >= 2, "two connections blackholed at the banner", timeout=30)
        proxy.pass_through()
        tenants = list(keys)
        stack.wait(all_final(db, tenants, 15), "15 final", timeout=120)
        took = time.monotonic() - submitted
        received = [m.message_id for server in (banner_sink, mail_sink, dot_sink) for m in server.messages]
        rows = {row.external_id: row for row in db.messages(tenants)}
        timeouts = [e for e in db.events(tenants, "deferred") if "timed out" in str(e[4].get("error", "")).lower()
                    or "timeout" in str(e[4].get("error", "")).lower()]
        result = tally(accepted=client.accepted, rows=list(rows.values()), received=received)
    assert took < 120  # every hang lasts 300 s: each one was cut short by the 2 s timeout
    for tenant_id in ("mail", "dot"):  # one message timed out once, then went out
        assert sorted(row.attempts for row in rows.values() if row.tenant_id == tenant_id) == [1, 1, 1, 1, 2]
    assert [row.possible_duplicate for row in rows.values() if row.tenant_id == "dot" and row.attempts == 2] == [True]
    assert len(timeouts) >= 2, timeouts
    conclude(record, result, bound=1, started=started, extra=f"all_final_after={took:.1f}s")
    assert result.dup == 1  # the hang after the final dot: the server has two copies, flagged


def test_connection_cut_mid_data_and_after_the_final_reply(make_stack: Callable[..., Stack], sink: SmtpSink,
                                                            record: Callable[[str], None]) -> None:
    """Cuts before the final dot never duplicate; a lost final reply is the one flagged duplicate.

    `cutlarge`: 8 MB messages (more than the kernel buffers on both sides hold) cut at 1 MB,
    while the worker is still writing: it knows the dot never left. `cutsmall`: small
    messages cut at byte 300 (about 120 bytes of EHLO, MAIL, RCPT and DATA come first),
    after the worker had written the whole message and its dot into the socket: the worker
    cannot tell this from a lost final reply.
    """
    started = time.monotonic()
    stack = make_stack()
    db = Database(shared_dsn())
    url = stack.start_web()
    with FaultProxy(sink.address) as small, FaultProxy(sink.address) as large, \
            FaultProxy(sink.address) as after_reply:
        small.cut_after_bytes(300, times=3)
        large.cut_after_bytes(1_000_000, times=2)
        after_reply.cut_after_reply(times=2)
        keys = {}
        for tenant_id, proxy in (("cutsmall", small), ("cutlarge", large), ("cutreply", after_reply)):
            keys[tenant_id] = create_tenant(url, tenant_id)
            create_account(url, tenant_id, *proxy.address)
        stack.start_worker("w1", concurrency=2)
        stack.start_beat()
        client = ClientLedger()
        client.submit_all(url, keys["cutsmall"], "cutsmall", [f"cutsmall-{i}" for i in range(40)])
        client.submit_all(url, keys["cutreply"], "cutreply", [f"cutreply-{i}" for i in range(40)])
        for i in range(4):
            client.submit_all(url, keys["cutlarge"], "cutlarge", [f"cutlarge-{i}"], body="y" * 8_000_000)
        stack.wait(all_final(db, list(keys), 84), "84 final", timeout=120)
        cuts = (small.cuts, large.cuts, after_reply.cuts)

    def part(tenant_id: str) -> tuple[int, set[str]]:
        mine = ClientLedger(accepted={k for k in client.accepted if k[0] == tenant_id})
        flagged = {row.external_id for row in db.messages([tenant_id]) if row.possible_duplicate}
        return count_tally(db, mine, sink).dup, flagged

    (small_dup, small_flagged), (large_dup, large_flagged) = part("cutsmall"), part("cutlarge")
    result = count_tally(db, client, sink)
    assert cuts == (3, 2, 2)
    assert (large_dup, large_flagged) == (0, set())  # the dot never left: nothing delivered, nothing flagged
    assert small_dup == 0  # nothing delivered twice; flagged as possible duplicates, conservatively
    conclude(record, result, bound=2, started=started,
             extra=f"cuts={cuts} flagged_small={len(small_flagged)} flagged_large={len(large_flagged)}")
    assert result.dup == 2  # each lost final reply: one extra copy, flagged
