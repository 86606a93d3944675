"""The tenant's callback down for the whole run, then back: every report arrives.

The rule of delivery/reports.py: the event row is the outbox, an event is acknowledged
only by a 2xx JSON answer to the request that carried it, and it keeps its `event_id`
across retries. So the tenant sees an event twice only when it received a request whose
answer never made it back (timeout, cut): at least once, never lost.
"""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Callable

import pytest

from tests.e2e.harness import Stack
from tests.reliability.faultproxy import FaultProxy
from tests.reliability.fleet import all_final, conclude, count_tally, create_account, create_tenant, shared_dsn
from tests.reliability.ledger import ClientLedger, Database
from tests.smtp_sink import SmtpSink
from tests.tenant_app import TenantApp

pytestmark = [pytest.mark.postgres, pytest.mark.reliability, pytest.mark.django_db(transaction=True)]


def test_tenant_callback_down_for_the_whole_run_then_back(make_stack: Callable[..., Stack], sink: SmtpSink,
                                                           record: Callable[[str], None]) -> None:
    started = time.monotonic()
    # Short report backoff, so the test sees several retries during the outage.
    stack = make_stack(GMP_REPORT_BACKOFF_MIN_SECONDS=1, GMP_REPORT_BACKOFF_MAX_SECONDS=3, GMP_REPORT_TIMEOUT=2)
    db = Database(shared_dsn())
    url = stack.start_web()
    with TenantApp() as app, FaultProxy(("127.0.0.1", app.port)) as proxy:
        proxy.blackhole()  # accepted, never answered: every call times out
        key = create_tenant(url, "t0", client_base_url=proxy.url)
        create_account(url, "t0", *sink.address)
        stack.start_worker("w1", concurrency=2)
        stack.start_beat()
        client = ClientLedger()
        client.submit_all(url, key, "t0", [f"m{i}" for i in range(100)])
        stack.wait(all_final(db, ["t0"], 100), "100 sent while the tenant is unreachable", timeout=60)
        stack.wait(lambda: proxy.accepted >= 3, "report calls into the blackhole", timeout=30)
        proxy.refuse()  # then the port closed altogether
        time.sleep(6)
        assert app.calls == []  # nothing got through
        assert all(event[5] is None for event in db.events(["t0"]))  # nothing acknowledged

        # Then the calls get through but their answers come back too late: the tenant has
        # the events, the proxy does not know it, and sends them again (at least once).
        proxy.latency(4, direction="down")
        app.wait_for_calls(1, timeout=30)
        time.sleep(2 + 1.5)  # past the report timeout: that call's answer is held beyond it
        lost_answers = len(app.calls)  # an upper bound: the last of them may yet be answered in time
        proxy.pass_through()
        stack.wait(lambda: all(event[5] is not None for event in db.events(["t0"])), "every event acknowledged",
                   timeout=60)
        calls = list(app.calls)

    events = db.events(["t0"])
    seen = collections.Counter(item["event_id"] for call in calls for item in call.items)
    copies: dict[int, set[str]] = collections.defaultdict(set)
    for call in calls:
        for item in call.items:
            copies[item["event_id"]].add(json.dumps(item, sort_keys=True))
    resent_early = {item["event_id"] for call in calls[:lost_answers] for item in call.items}
    reports_lost = len({event[0] for event in events} - set(seen))
    reports_dup = sum(count - 1 for count in seen.values())
    assert reports_lost == 0
    assert len(events) == 100
    assert {event[3] for event in events} == {"sent"}
    assert all(len(versions) == 1 for versions in copies.values())  # a resent event is the same event
    # Seen twice only if carried by a call whose answer was lost, and at most once more per such call.
    assert {event_id for event_id, count in seen.items() if count > 1} <= resent_early
    assert max(seen.values()) <= 1 + lost_answers
    assert reports_dup >= 1  # the at-least-once path was really taken
    result = count_tally(db, client, sink)
    conclude(record, result, bound=0, started=started,
             extra=f"reports_lost={reports_lost} reports_dup={reports_dup} (answers lost: {lost_answers})")
