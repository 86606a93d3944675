"""Two beat processes at once (a failed-over scheduler that was not really dead).

Every sweep is then rung twice. The ring is a conditional UPDATE, claims are SKIP LOCKED
with leases, the report run holds a sync lease: nothing may be sent or reported twice.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

import pytest

from tests.e2e.harness import Stack
from tests.reliability.fleet import all_final, conclude, count_tally, create_tenants, shared_dsn
from tests.reliability.ledger import ClientLedger, Database
from tests.smtp_sink import SmtpSink
from tests.tenant_app import TenantApp

pytestmark = [pytest.mark.postgres, pytest.mark.reliability, pytest.mark.django_db(transaction=True)]


def test_two_beats_send_and_report_nothing_twice(make_stack: Callable[..., Stack], sink: SmtpSink,
                                                 record: Callable[[str], None]) -> None:
    started = time.monotonic()
    stack = make_stack()
    db = Database(shared_dsn())
    url = stack.start_web()
    with TenantApp() as app:
        tenants = create_tenants(url, sink.address, 3, tenant={"client_base_url": app.url}, batch_size=10)
        sink.hang("data", 0.01)
        stack.start_worker("w1", concurrency=2)
        stack.start_worker("w2", concurrency=2)
        stack.start_beat("beat-a")
        stack.start_beat("beat-b")
        client = ClientLedger()
        for tenant_id, key in tenants:
            client.submit_all(url, key, tenant_id, [f"{tenant_id}-m{i}" for i in range(150)])
        ids = [tenant_id for tenant_id, _ in tenants]
        stack.wait(all_final(db, ids, 450), "450 final", timeout=120)
        stack.wait(lambda: all(event[5] is not None for event in db.events(ids)), "every event reported",
                   timeout=60)
        reported = collections.Counter(item["event_id"] for call in app.calls for item in call.items)
    both_ran = all("Sending due task" in process.log.read_text(errors="replace")
                   for process in stack.processes if process.name.startswith("beat"))
    result = count_tally(db, client, sink)
    reports_dup = sum(count - 1 for count in reported.values())
    assert both_ran
    assert len(reported) == len(db.events(ids))
    assert reports_dup == 0
    conclude(record, result, bound=0, started=started, extra=f"reports_dup={reports_dup}")
