"""The cost of one dispatch claim with many messages waiting, for bench/compare.py.

In-process, with Django set up against the benchmark database (the fleet stopped: nothing else
claims). An account `main` has `due` messages ready to send; around them the table holds a
background of waiting rows, first 10,000 then 1,000,000 (inserted with one
`INSERT … SELECT generate_series`), in three layouts:

- `same_account_due`: `main` itself has the backlog, due now, queued before the due messages (a
  big campaign being sent): the claim should take the first 50 of it in (priority, id) order.
- `other_account_due`: another tenant's account has the backlog, due now (a big campaign of
  someone else). The claim of `main` should not see it; the sweep that looks for accounts with
  due work does.
- `same_account_future`: `main` itself has the backlog, deferred to tomorrow, queued before the
  due messages (lower ids, same priority). Those rows are in the index the claim walks
  (account, priority, id over queued/deferred rows), ahead of the due ones.

Each measurement runs what a worker runs per batch, `queueing.lifecycle.claim_due(account=main,
limit=50)`, inside a transaction that is rolled back, so every repetition claims the same 50;
and the three statements of beat's sweep (`dispatch.dispatch_due`): reclaiming expired leases,
expiring overdue messages and finding the due accounts. EXPLAIN ANALYZE of the claim's SELECT
tells which index it walked and how many rows it read to find its 50.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from queueing import dispatch, lifecycle
from tenants.models import SmtpAccount, Tenant

DUE_ID_BASE = 50_000_000  # above any background id: the due rows come last in (priority, id) order

INSERT = """
INSERT INTO queueing_message (id, tenant_id, account_id, external_id, status, priority, batch_code,
    from_addr, "to", cc, bcc, reply_to, return_path, subject, body, content_type, body_text, body_html,
    headers, attachments, raw_eml, message_id, created_at, updated_at, next_attempt_at, attempts,
    last_error, refused, possible_duplicate, deferred_reason, sent_at)
SELECT n, %(tenant)s, %(account)s, %(prefix)s || n, %(status)s, 2, '', 'sender@example.com',
    '["rcpt1@example.com"]', '[]', '[]', '', '', 'Hello ' || n, 'Hi', 'plain', '', '', '{}', '[]', '',
    '<' || %(prefix)s || n || '@example.com>', now(), now(), now() + %(offset)s::interval, %(attempts)s, '',
    '[]', false, '', CASE WHEN %(status)s = 'sent' THEN now() END
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS n
"""


def _insert(*, tenant: str, account: int, prefix: str, first: int, last: int, offset: str,
            status: str = "queued") -> float:
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(INSERT, {"tenant": tenant, "account": account, "prefix": prefix, "first": first,
                                "last": last, "offset": offset, "status": status,
                                "attempts": 1 if status == "sent" else 0})
    return time.perf_counter() - started


def _rolled_back(work: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds of `work()` inside a transaction that is then rolled back; and its result."""
    with transaction.atomic():
        started = time.perf_counter()
        result = work()
        elapsed = time.perf_counter() - started
        transaction.set_rollback(True)
    return elapsed, result


def _timed(work: Callable[[], Any], repeats: int, budget: float = 3.0) -> dict[str, float]:
    """Median and range over `repeats` runs, fewer (at least 3) when they take over `budget` seconds."""
    _rolled_back(work)  # warm: plan cache, buffers
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < repeats and (len(times) < 3 or time.perf_counter() - started < budget):
        times.append(_rolled_back(work)[0] * 1000)
    times.sort()
    return {"median_ms": round(statistics.median(times), 3), "min_ms": round(times[0], 3),
            "max_ms": round(times[-1], 3), "runs": len(times)}


def _plan_summary(plan: dict[str, Any]) -> dict[str, Any]:
    """The nodes of an EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) plan that read rows."""
    nodes: list[dict[str, Any]] = []

    def walk(node: dict[str, Any]) -> None:
        if "Scan" in node["Node Type"]:
            nodes.append({key: node[key] for key in ("Node Type", "Relation Name", "Index Name", "Actual Rows",
                                                     "Actual Loops", "Rows Removed by Filter") if key in node})
        for child in node.get("Plans", []):
            walk(child)

    top = plan["Plan"]
    walk(top)
    # Rows of queueing_message the scans produced or filtered out: the claim's work, whatever the load.
    read = sum((node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)) * node.get("Actual Loops", 1)
               for node in nodes if node.get("Relation Name") == "queueing_message")
    return {"execution_ms": round(plan["Execution Time"], 3), "rows_read": read,
            "shared_buffers": top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0), "scans": nodes}


def plan_text(summary: dict[str, Any]) -> str:
    """How the claim found its rows, in a few words: the scans of queueing_message and the rows they read."""
    scans = [f"{scan['Node Type']}{' on ' + scan['Index Name'] if 'Index Name' in scan else ''}: "
             f"{scan['Actual Rows'] * scan.get('Actual Loops', 1):,} rows"
             for scan in summary["scans"] if scan.get("Relation Name") == "queueing_message"
             or scan.get("Index Name", "").startswith(("message_", "queueing_message"))]
    return "; ".join(scans) or "no scan of queueing_message"


def _explain_claim(account: SmtpAccount) -> dict[str, Any]:
    """EXPLAIN ANALYZE of the SELECT … FOR UPDATE SKIP LOCKED that claim_due runs."""
    with CaptureQueriesContext(connection) as captured:
        _rolled_back(lambda: lifecycle.claim_due(account=account, limit=account.batch_size, lease_seconds=120))
    select = next(q["sql"] for q in captured.captured_queries if "FOR UPDATE" in q["sql"])
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + select)
        raw = cursor.fetchone()[0]
        transaction.set_rollback(True)
    plan = (json.loads(raw) if isinstance(raw, str) else raw)[0]
    return _plan_summary(plan)


def _claim_size(account: SmtpAccount) -> int:
    return len(_rolled_back(lambda: lifecycle.claim_due(account=account, limit=account.batch_size,
                                                         lease_seconds=120))[1].message_ids)


def measure(*, sizes: list[int], due: int, repeats: int, layouts: list[str],
            log: Callable[[str], None]) -> dict[str, Any]:
    """Claim and sweep timings per layout and background size (see the module docstring)."""
    main = SmtpAccount.objects.select_related("tenant").get(tenant_id="default", external_id="main")
    SmtpAccount.objects.filter(pk=main.pk).update(batch_size=50, paused_until=None)
    main.refresh_from_db()
    bulk_tenant, _ = Tenant.objects.get_or_create(pk="bulk", defaults={"name": "bulk"})
    bulk, _ = SmtpAccount.objects.get_or_create(tenant=bulk_tenant, external_id="bulk",
                                                defaults={"host": main.host, "port": main.port,
                                                          "security": main.security})
    known: dict[str, dict[str, Any]] = {
        "same_account_due": {"tenant": "default", "account": main.pk, "offset": "-1 minute"},
        "other_account_due": {"tenant": bulk_tenant.pk, "account": bulk.pk, "offset": "-1 minute"},
        "same_account_future": {"tenant": "default", "account": main.pk, "offset": "1 day"},
        "same_account_sent": {"tenant": "default", "account": main.pk, "offset": "-1 hour", "status": "sent"},
    }
    results: dict[str, Any] = {"due_rows_of_main": due, "claim_limit": main.batch_size, "repeats": repeats,
                               "layouts": {}}
    for layout in layouts:
        where = known[layout]
        with connection.cursor() as cursor:
            cursor.execute("TRUNCATE queueing_messageevent, queueing_message CASCADE")
        _insert(tenant="default", account=main.pk, prefix="due-", first=DUE_ID_BASE + 1, last=DUE_ID_BASE + due,
                offset="-1 minute")
        stages: list[dict[str, Any]] = []
        inserted = 0
        for size in sizes:
            seconds = _insert(prefix="bg-", first=inserted + 1, last=size, **where)
            inserted = size
            with connection.cursor() as cursor:
                cursor.execute("VACUUM ANALYZE queueing_message")  # the steady state autovacuum reaches
            claimed = _claim_size(main)
            stage: dict[str, Any] = {
                "background_rows": size, "insert_seconds": round(seconds, 1), "claimed": claimed,
                "claim": _timed(lambda: lifecycle.claim_due(account=main, limit=main.batch_size,
                                                            lease_seconds=120), repeats),
                "claim_plan": _explain_claim(main),
                "sweep_due_accounts": _timed(dispatch.due_accounts, repeats),
                "sweep_expire_overdue": _timed(lifecycle.expire_overdue, repeats),
                "sweep_reclaim_leases": _timed(lifecycle.reclaim_expired_leases, repeats),
            }
            stages.append(stage)
            log(f"claim, {layout}, {size:,} background rows (inserted in {seconds:.1f} s): claim_due median "
                f"{stage['claim']['median_ms']:.2f} ms ({claimed} claimed; {plan_text(stage['claim_plan'])}); "
                f"sweep: due_accounts {stage['sweep_due_accounts']['median_ms']:.1f} ms, expire_overdue "
                f"{stage['sweep_expire_overdue']['median_ms']:.1f} ms, reclaim "
                f"{stage['sweep_reclaim_leases']['median_ms']:.2f} ms")
        first, last = stages[0], stages[-1]
        sweep = ("sweep_due_accounts", "sweep_expire_overdue", "sweep_reclaim_leases")
        results["layouts"][layout] = {
            "stages": stages,
            "claim_ratio": round(last["claim"]["median_ms"] / first["claim"]["median_ms"], 2),
            # Rows the claim's SELECT read: the work itself, whatever else the machine is doing.
            "claim_rows_read_ratio": round(last["claim_plan"]["rows_read"] / max(1, first["claim_plan"]["rows_read"]),
                                           2),
            "sweep_ratio": round(sum(last[k]["median_ms"] for k in sweep)
                                 / sum(first[k]["median_ms"] for k in sweep), 2),
        }
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE queueing_messageevent, queueing_message CASCADE")
    return results
