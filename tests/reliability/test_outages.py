"""PostgreSQL and Redis outages, on a private cluster and a private Redis.

The shared servers (5432, 6379) are in use by other test runs: these scenarios start
their own on free ports (tests/reliability/servers.py), migrate the private database
with the product's migrations, point every process of the Stack at them, and read the
ledger from the private database with psycopg.

A client keeps submitting through every outage. What it may see: a quick JSON 5xx while
the database is down (never a hang, never an HTML page); 200 throughout a Redis outage,
because accepting mail needs only the database. What the SMTP server may see afterwards:
every accepted message once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from tests.e2e.harness import Stack
from tests.reliability.fleet import Submitter, all_final, conclude, count_tally, create_account, create_tenant
from tests.reliability.ledger import Answer, ClientLedger, Database
from tests.reliability.servers import PrivatePostgres, PrivateRedis, migrate
from tests.reliability.windows import busiest, overshoots
from tests.smtp_sink import SmtpSink

pytestmark = [pytest.mark.postgres, pytest.mark.reliability, pytest.mark.slow]

ANSWER_BOUND = 10.0  # seconds: no add-messages request may take longer, outage or not
OUTAGE = 20.0
TRANSACTION_ALLOWANCE = 1.0  # as in test_rate_limits: arrival trails the token by one transaction


@pytest.fixture(scope="module")
def private() -> Iterator[tuple[PrivatePostgres, PrivateRedis]]:
    postgres = PrivatePostgres().init()
    redis_server = PrivateRedis().start()
    try:
        migrate(postgres.dsn(), redis_server.url())
        yield postgres, redis_server
    finally:
        redis_server.destroy()
        postgres.destroy()


def during(answers: list[Answer], start: float, end: float) -> list[Answer]:
    return [answer for answer in answers if start <= answer.at <= end]


def describe(answers: list[Answer]) -> str:
    return ", ".join(sorted({str(answer.status) for answer in answers}))


def test_postgres_restart_and_a_20_second_stop(private: tuple[PrivatePostgres, PrivateRedis], sink: SmtpSink,
                                               make_stack: Callable[..., Stack],
                                               record: Callable[[str], None]) -> None:
    started = time.monotonic()
    postgres, redis_server = private
    redis_server.client().flushall()  # our private one: nothing of an earlier scenario
    stack = make_stack(DATABASE_URL=postgres.dsn(), REDIS_URL=redis_server.url())
    db = Database(postgres.dsn())
    url = stack.start_web()
    key = create_tenant(url, "pg")
    create_account(url, "pg", *sink.address)
    sink.hang("data", 0.02)  # sends are in flight when the database goes
    stack.start_worker("w1", concurrency=2)
    stack.start_worker("w2", concurrency=2)
    stack.start_beat()
    client = ClientLedger()
    with Submitter(client, url, key, "pg"):
        stack.wait(lambda: len(sink.messages) >= 30, "the first deliveries")
        crash = time.monotonic()
        postgres.restart("immediate")  # a crash and recovery mid-run
        crash_end = time.monotonic()
        stack.wait(lambda: len(client.answers) > 5 and client.answers[-1].status == 200,
                   "the API accepting again after the crash", timeout=60)
        stopped = time.monotonic()
        postgres.stop("fast")
        time.sleep(OUTAGE)
        postgres.start()
        back = time.monotonic()
        stack.wait(lambda: client.answers[-1].status == 200, "the API accepting again after the outage",
                   timeout=60)
        time.sleep(3)
    stack.wait(all_final(db, ["pg"], len(client.accepted)), "every accepted message final", timeout=180)

    answers = list(client.answers)
    outage = during(answers, stopped + 1, back - 1)
    failed = [answer for answer in answers if answer.status != 200]
    slowest = max(answer.seconds for answer in answers)
    result = count_tally(db, client, sink)
    line_extra = (f"requests={len(answers)} accepted={len(client.accepted)} during_outage={len(outage)} "
                  f"outage_statuses={describe(outage)} slowest_answer={slowest:.1f}s "
                  f"crash_restart={crash_end - crash:.1f}s")
    assert outage, "the client kept asking during the outage"
    assert slowest < ANSWER_BOUND, "an answer took too long (a hang)"
    # 503 with Retry-After: the database is away, the request stored nothing, try again.
    assert all(answer.status == 503 for answer in outage), describe(outage)
    assert all(answer.json_body and answer.body.get("ok") is False for answer in failed), \
        [answer.body for answer in failed if not answer.json_body][:3]
    assert db.count(["pg"], "sent") == len(client.accepted)
    conclude(record, result, bound=0, started=started, extra=line_extra)


def test_redis_stopped_flushed_and_paused(private: tuple[PrivatePostgres, PrivateRedis], sink: SmtpSink,
                                          make_stack: Callable[..., Stack], record: Callable[[str], None]) -> None:
    started = time.monotonic()
    postgres, redis_server = private
    redis_server.client().flushall()
    stack = make_stack(DATABASE_URL=postgres.dsn(), REDIS_URL=redis_server.url())
    db = Database(postgres.dsn())
    url = stack.start_web()
    key = create_tenant(url, "rd")
    create_account(url, "rd", *sink.address, account_id="free")
    create_account(url, "rd", *sink.address, account_id="lim", is_default=False, limit_per_minute=20)
    sink.hang("data", 0.02)
    stack.start_worker("w1", concurrency=2)
    stack.start_worker("w2", concurrency=2)
    stack.start_beat()
    client = ClientLedger()
    # 20 go at once, the other 15 when the first tokens come back, a minute later: after the
    # restart and the FLUSHALL, so the buckets refilled from the database must hold them back.
    client.submit_all(url, key, "rd", [f"lim-{i}" for i in range(35)], account_id="lim")
    phases: dict[str, tuple[float, float]] = {}
    resumed: dict[str, int] = {}

    def resume(after: str) -> None:
        count = len(sink.messages)
        stack.wait(lambda: len(sink.messages) >= count + 10, f"sending resumed after {after}", timeout=90)
        resumed[after] = len(sink.messages) - count

    with Submitter(client, url, key, "rd", accounts=("free",)):
        stack.wait(lambda: len(sink.messages) >= 20, "the first deliveries")
        begin = time.monotonic()
        redis_server.stop()
        time.sleep(OUTAGE)
        redis_server.start()  # empty: no persistence
        phases["stop"] = (begin, time.monotonic())
        resume("the restart")
        begin = time.monotonic()
        redis_server.flushall()
        phases["flushall"] = (begin, time.monotonic())
        resume("FLUSHALL")
        begin = time.monotonic()
        redis_server.pause(5000)
        time.sleep(5)
        phases["pause"] = (begin, time.monotonic())
        resume("CLIENT PAUSE")
    stack.wait(all_final(db, ["rd"], len(client.accepted)), "every accepted message final", timeout=180)

    answers = list(client.answers)
    not_accepted = {name: [a for a in during(answers, *span) if a.status != 200] for name, span in phases.items()}
    lim_pk = db.account_pk("rd", "lim")
    lim_ids = {row.message_id for row in db.messages(["rd"]) if row.account_pk == lim_pk}
    lim_times = [message.received_at for message in sink.messages if message.message_id in lim_ids]
    result = count_tally(db, client, sink)
    extra = (f"requests={len(answers)} refused_during={ {k: len(v) for k, v in not_accepted.items()} } "
             f"resumed={resumed} limited_busiest_60s={busiest(lim_times, 60)}/20 "
             f"slowest_answer={max(a.seconds for a in answers):.1f}s")
    assert not_accepted == {"stop": [], "flushall": [], "pause": []}  # accepting needs only the database
    assert max(answer.seconds for answer in answers) < ANSWER_BOUND
    assert overshoots(lim_times, {60.0: 20}, allowance=TRANSACTION_ALLOWANCE) == []
    assert len(lim_times) == 35
    conclude(record, result, bound=0, started=started, extra=extra)
