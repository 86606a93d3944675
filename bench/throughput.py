"""Benchmark of delivery: N messages through gunicorn, beat and Celery workers to a local SMTP sink.

On a fresh PostgreSQL database and Redis db 12 (flushed), measures the enqueue rate, the delivery
rate (first half, second half, overall) from the sink's timestamps, enqueue → SMTP latency per
message, the latency of single `immediate` messages, the workers' peak RSS, the SMTP connections
used, and a bare smtplib loop over one connection to the same sink as the physical limit. A tenant
application in a thread receives the delivery reports: the report lag (event → acknowledged) of the
bulk run and of the single messages, and the report requests made. Checks that every message arrived
exactly once and every event was reported (exit 1 if not). Prints a Markdown table.

    .venv/bin/python bench/throughput.py [-n 5000] [--workers 2] [--timeout 300] [--keep]

The PostgreSQL server is taken from DATABASE_URL (its database name is ignored: the benchmark
creates, and drops, its own) or defaults to postgres@127.0.0.1:5432; Redis from REDIS_URL's host.
"""

from __future__ import annotations

import argparse
import base64
import collections
import json
import multiprocessing
import os
import re
import secrets
import shutil
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import redis
import requests
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432"
MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(\S+)", re.MULTILINE | re.IGNORECASE)
SENDER, RCPT = "Sender <sender@example.com>", "rcpt1@example.com"
MESSAGE = {"from": SENDER, "to": [RCPT], "subject": "Hello", "body": "Hi"}


class BenchError(Exception):
    """A process or request failed: the numbers would mean nothing."""


class Sink:
    """aiosmtpd in a thread: records (time.time(), Message-ID) of each accepted message, counts connections."""

    def __init__(self) -> None:
        self.received: list[tuple[float, str]] = []
        self.connections = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        found = MESSAGE_ID.search(envelope.original_content or b"")
        self.received.append((time.time(), found.group(1).decode() if found else ""))
        return "250 2.0.0 OK"

    def start(self) -> Controller:
        sink = self

        class CountingSMTP(SMTP):
            def connection_made(self, transport: Any) -> None:
                super().connection_made(transport)
                sink.connections += 1

        class SinkController(Controller):
            def factory(self) -> SMTP:
                return CountingSMTP(self.handler, **self.SMTP_kwargs)

        controller = SinkController(self, hostname="127.0.0.1", port=free_port(), server_hostname="sink.bench")
        controller.start()
        self.clear()  # forget the controller's own probe connection
        return controller

    def clear(self) -> None:
        self.received, self.connections = [], 0


class TenantApp:
    """The tenant's application in a thread: answers every report POST with 200, counts requests and items."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.port = 0
        self.requests = 0
        self.empty = 0  # requests without items (heartbeats)
        self.copies: collections.Counter[str] = collections.Counter()  # event_id → times received

    def snapshot(self) -> tuple[int, int, int]:
        """Requests, requests without items, items received so far."""
        with self.lock:
            return self.requests, self.empty, self.copies.total()

    def start(self) -> ThreadingHTTPServer:
        app = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    items = json.loads(body or b"{}").get("delivery_report") or []
                except (ValueError, AttributeError):
                    items = []
                with app.lock:
                    app.requests += 1
                    app.empty += not items
                    app.copies.update(str(item.get("event_id")) for item in items if isinstance(item, dict))
                answer = b'{"ok": true, "queued": 0}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self.port = int(server.server_address[1])
        threading.Thread(target=server.serve_forever, name="tenant-app", daemon=True).start()
        return server


def drop_database(server: str, name: str, *, recreate: bool = False) -> None:
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if recreate:
            conn.execute(f'CREATE DATABASE "{name}"')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def healthy(base: str) -> bool:
    try:
        return requests.get(f"{base}/health", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def workers_ready(env: dict[str, str], names: list[str]) -> bool:
    result = subprocess.run([sys.executable, "-m", "celery", "-A", "mailproxy", "inspect", "ping", "-j", "-t", "1"],
                            cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    start = result.stdout.find("{")
    return start >= 0 and all(name in json.loads(result.stdout[start:]) for name in names)


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def peak_rss_mb(pid: int) -> float:
    """The largest VmHWM of a process and its children (a Celery worker's pool), in MB."""
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False).stdout.split()
    status = [Path(f"/proc/{each}/status").read_text() for each in [pid, *map(int, children)]]
    return max(int(line.split()[1]) / 1024 for text in status for line in text.splitlines()
               if line.startswith("VmHWM:"))


def bare_loop(port: int, count: int) -> float:
    """Messages/s of building (as delivery.mime.build_envelope does) and sending over one connection."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo()
        started = time.perf_counter()
        for index in range(count):
            mail = EmailMessage()
            mail["From"], mail["To"], mail["Subject"] = SENDER, RCPT, "Hello"
            mail["Date"] = format_datetime(datetime.now(UTC))
            mail["Message-ID"] = f"<{secrets.token_hex(16)}@example.com>"
            mail["X-Mail-Proxy-ID"] = mail["X-Genro-Mail-ID"] = str(index)
            mail.set_content("Hi", subtype="plain", cte="quoted-printable")
            client.sendmail("sender@example.com", [RCPT], mail.as_bytes(policy=SMTP_POLICY))
        return count / (time.perf_counter() - started)


@dataclass
class Fleet:
    """The running system as the benchmark sees it: the API, the database, the sink, the processes."""

    base: str
    db: psycopg.Connection[tuple[Any, ...]]
    sink: Sink
    tenant: TenantApp
    procs: dict[str, subprocess.Popen[bytes]]
    session: requests.Session = field(default_factory=requests.Session)

    def wait(self, condition: Any, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise BenchError(f"{name} exited with code {proc.returncode}")
            if time.monotonic() > deadline:
                raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.005)

    def post(self, path: str, body: dict[str, Any]) -> None:
        response = self.session.post(f"{self.base}{path}", json=body, timeout=60)
        if response.status_code != 200 or response.json().get("queued", 0) != len(body.get("messages", [])):
            raise BenchError(f"POST {path} answered {response.status_code}: {response.text[:500]}")

    def put(self, path: str, body: dict[str, Any]) -> None:
        response = self.session.put(f"{self.base}{path}", json=body, timeout=60)
        if response.status_code != 200 or not response.json().get("ok"):
            raise BenchError(f"PUT {path} answered {response.status_code}: {response.text[:500]}")

    def scalar(self, sql: str, *params: object) -> Any:
        row = self.db.execute(sql, params).fetchone()
        return None if row is None else row[0]

    def settled(self, condition: Any, what: str, timeout: float) -> bool:
        """As wait, but a timeout is an answer (False), not an error; a process that exited still is."""
        try:
            self.wait(condition, what, timeout)
        except BenchError:
            if any(proc.poll() is not None for proc in self.procs.values()):
                raise
            return False
        return True


def rates(times: list[float]) -> tuple[float, float, float]:
    """Messages/s over the first half, the second half and the whole of the sorted arrival times."""
    if len(times) < 4:
        return 0.0, 0.0, 0.0
    half = len(times) // 2
    return (half / (times[half] - times[0]), (len(times) - 1 - half) / (times[-1] - times[half]),
            (len(times) - 1) / (times[-1] - times[0]))


UNREPORTED = "SELECT count(*) FROM queueing_messageevent WHERE reported_at IS NULL"
REPORT_LAG = ("SELECT EXTRACT(EPOCH FROM reported_at - occurred_at)::float8 FROM queueing_messageevent "
              "WHERE event_type = 'sent' AND reported_at IS NOT NULL")
REPORT_WAIT = 30  # seconds, per single message: above GMP_RING_SECONDS (20) and a report sweep (1)


def immediate_latencies(fleet: Fleet, count: int = 20) -> tuple[list[float], int]:
    """Milliseconds from the HTTP answer to the sink's receipt, one immediate message at a time (the next
    once the previous one's report is acknowledged); and how many reports took over REPORT_WAIT."""
    latencies, late = [], 0
    reported = "SELECT reported_at IS NOT NULL FROM queueing_messageevent WHERE external_id = %s"
    for k in range(1, count + 1):
        mid = f"<imm-{k}@example.com>"
        fleet.post("/commands/add-messages", {"messages": [
            {**MESSAGE, "id": f"imm-{k}", "priority": "immediate", "message_id": mid}]})
        answered = time.time()
        fleet.wait(lambda mid=mid: any(m == mid for _, m in fleet.sink.received[-3:]), f"immediate {mid}", 10)
        latencies.append((next(at for at, m in reversed(fleet.sink.received) if m == mid) - answered) * 1000)
        fleet.wait(lambda k=k: fleet.scalar("SELECT status FROM queueing_message WHERE external_id = %s",
                                            f"imm-{k}") == "sent", f"immediate {mid} recorded", 10)
        late += not fleet.settled(lambda k=k: fleet.scalar(reported, f"imm-{k}"), f"report of {mid}", REPORT_WAIT)
        time.sleep(0.2)  # the worker is idle again and the queue empty
    return latencies, late


def check_ledger(fleet: Fleet) -> int:
    """Print the sink's missing, duplicated and unknown Message-IDs; the number missing."""
    copies = collections.Counter(mid for _, mid in fleet.sink.received)
    expected = [mid for (mid,) in fleet.db.execute("SELECT message_id FROM queueing_message")]
    missing = [mid for mid in expected if copies[mid] == 0]
    duplicated = sorted(f"{mid} (x{n})" for mid, n in copies.items() if n > 1)
    unknown = sorted(set(copies) - set(expected))
    print(f"ledger: {len(expected):,} messages stored, {len(fleet.sink.received):,} received, {len(missing)} "
          f"missing, {len(duplicated)} duplicated, {len(unknown)} unknown")
    for label, items in (("missing", missing), ("duplicated", duplicated), ("unknown", unknown)):
        if items:
            print(f"  {label}: {', '.join(items[:20])}{' …' if len(items) > 20 else ''}")
    return len(missing)


def check_reports(fleet: Fleet) -> bool:
    """Wait for every event to be acknowledged; print the tenant's ledger; whether each was reported."""
    fleet.settled(lambda: fleet.scalar(UNREPORTED) == 0, "every event reported", 60)
    unreported = fleet.scalar(UNREPORTED)
    requests_made, empty, items = fleet.tenant.snapshot()
    with fleet.tenant.lock:
        copies = collections.Counter(fleet.tenant.copies)
    expected = [str(pk) for (pk,) in fleet.db.execute("SELECT id FROM queueing_messageevent")]
    missing = [pk for pk in expected if copies[pk] == 0]
    duplicated = sorted(f"{pk} (x{n})" for pk, n in copies.items() if n > 1)
    print(f"reports: {len(expected):,} events, {unreported} unreported; the tenant received {requests_made} "
          f"requests ({empty} without items), {items:,} items, {len(missing)} events missing, "
          f"{len(duplicated)} duplicated")
    for label, pks in (("missing", missing), ("duplicated", duplicated)):
        if pks:
            print(f"  {label} event_id: {', '.join(pks[:20])}{' …' if len(pks) > 20 else ''}")
    return unreported == 0 and items >= len(expected) and not missing


def run(args: argparse.Namespace, fleet: Fleet, env: dict[str, str], port: int,
        bare_rate: float) -> tuple[list[str], bool, bool]:
    """The measurements, as the table for README.md; whether every message arrived; whether every event
    was reported."""
    fleet.wait(lambda: healthy(fleet.base), "web /health", 30)
    names = [f"w{i}@{socket.gethostname()}" for i in range(1, args.workers + 1)]
    fleet.wait(lambda: workers_ready(env, names), "the workers to answer a ping", 60)
    fleet.session.headers["X-API-Token"] = env["GMP_API_TOKEN"]
    fleet.post("/account", {"id": "main", "host": "127.0.0.1", "port": port, "security": "none", "timeout": 10,
                            "batch_size": 50})
    fleet.put("/tenant/default", {"client_base_url": f"http://127.0.0.1:{fleet.tenant.port}"})

    started = time.time()
    for first in range(1, args.n + 1, 1000):
        batch = [{**MESSAGE, "id": f"m-{i}"} for i in range(first, min(first + 1000, args.n + 1))]
        fleet.post("/commands/add-messages", {"messages": batch})
    enqueue_rate = args.n / (time.time() - started)
    print(f"enqueue: {args.n:,} messages in requests of 1,000, {enqueue_rate:,.0f} msg/s")

    sent = "SELECT count(*) FROM queueing_message WHERE status = 'sent'"
    try:
        fleet.wait(lambda: len(fleet.sink.received) >= args.n, f"{args.n:,} messages at the sink", args.timeout)
        fleet.wait(lambda: fleet.scalar(sent) == args.n, "every message recorded as sent", 30)
        complete = True
    except BenchError as exc:
        print(f"delivery incomplete: {exc} ({len(fleet.sink.received):,} received, {fleet.scalar(sent):,} "
              "recorded as sent)", file=sys.stderr)
        complete = False
    bulk, connections = list(fleet.sink.received), fleet.sink.connections
    if len(bulk) < 4:
        raise BenchError(f"{len(bulk)} messages reached the SMTP sink")
    times = sorted(at for at, _ in bulk)
    first_half, second_half, overall = rates(times)
    print(f"delivery: {len(bulk):,} messages, first half {first_half:,.0f} msg/s, second half {second_half:,.0f} "
          f"msg/s, overall {overall:,.0f} msg/s; first message {times[0] - started:.2f} s, last "
          f"{times[-1] - started:.1f} s after the first request; {connections} SMTP connections")
    created = dict(fleet.db.execute("SELECT message_id, extract(epoch FROM created_at)::float8 FROM queueing_message"))
    latency = sorted(at - created[mid] for at, mid in bulk if mid in created)

    settled = fleet.settled(lambda: fleet.scalar(UNREPORTED) == 0, "every event of the bulk run reported", 60)
    bulk_requests, bulk_empty, bulk_items = fleet.tenant.snapshot()
    events = fleet.scalar("SELECT count(*) FROM queueing_messageevent")
    lags = sorted(lag for (lag,) in fleet.db.execute(REPORT_LAG))
    bulk_lag = "none acknowledged" if not lags else (
        f"{statistics.median(lags):.2f} s / "
        f"{statistics.quantiles(lags, n=100, method='inclusive')[98] if len(lags) > 1 else lags[0]:.2f} s")
    print(f"reports, bulk run: {events:,} events, {fleet.scalar(UNREPORTED):,} unreported"
          f"{'' if settled else ' after 60 s'}; {bulk_requests} requests ({bulk_empty} without items), "
          f"{bulk_items:,} items; lag event → acknowledged p50 / p99 {bulk_lag}"
          f"{f', max {lags[-1]:.2f} s' if lags else ''}")

    immediate, late = immediate_latencies(fleet) if complete else ([0.0], 0)
    print(f"immediate, HTTP answer → SMTP: p50 {statistics.median(immediate):.1f} ms, max {max(immediate):.1f} ms")
    rss = {name: peak_rss_mb(proc.pid) for name, proc in fleet.procs.items() if name.startswith("worker")}
    print("peak RSS per worker: " + ", ".join(f"{name} {mb:.0f} MB" for name, mb in rss.items()))
    complete = check_ledger(fleet) == 0 and complete
    reported = check_reports(fleet)
    singles = sorted(lag * 1000 for (lag,) in fleet.db.execute(f"{REPORT_LAG} AND external_id LIKE 'imm-%'"))
    single_lag = f"{statistics.median(singles):.0f} ms / {max(singles):.0f} ms" if singles else "none acknowledged"
    print(f"immediate, sent → report acknowledged: p50 / max {single_lag} over {len(singles)} messages"
          f"{f', {late} acknowledged after more than {REPORT_WAIT} s' if late else ''}; "
          f"{sum(lag > 1000 for lag in singles)} over 1 s")

    version = str(fleet.scalar("SELECT version()")).split(" on ")[0]
    p99 = statistics.quantiles(latency, n=100, method="inclusive")[98]
    return [
        f"{version}, {args.workers} workers, {os.cpu_count()} CPUs, {datetime.now(UTC):%Y-%m-%d}",
        "",
        "| measure | result | target |",
        "|---|---|---|",
        f"| enqueue rate | {enqueue_rate:,.0f} msg/s | — |",
        f"| delivery rate, {args.workers} workers | {overall:,.0f} msg/s ({100 * overall / bare_rate:.0f} % of "
        "bare smtplib) | ≥ 50 % |",
        f"| second half vs first half | {100 * second_half / first_half:.0f} % | ≥ 90 % |",
        f"| enqueue → SMTP accepted, p50 / p99 | {statistics.median(latency):.1f} s / {p99:.1f} s | — |",
        f"| immediate message, request → SMTP, p50 / max | {statistics.median(immediate):.0f} ms / "
        f"{max(immediate):.0f} ms | ≤ 100 ms p50 |",
        f"| worker peak RSS | {max(rss.values()):.0f} MB | ≤ 150 MB |",
        f"| SMTP connections for {args.n:,} messages | {connections} | a handful |",
        f"| bare smtplib loop | {bare_rate:,.0f} msg/s | — |",
        f"| report lag (event → acknowledged), bulk run, p50 / p99 | {bulk_lag} | — |",
        f"| report lag, single immediate messages, p50 / max | {single_lag} | ≤ 1 s p50 |",
        f"| report requests for {events:,} events | {bulk_requests - bulk_empty}"
        f"{f' (+ {bulk_empty} without events)' if bulk_empty else ''} | — |",
    ], complete, reported


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=5000, help="messages of the bulk run (default 5000)")
    parser.add_argument("--workers", type=int, default=2, help="Celery worker processes, -c 1 each (default 2)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds allowed for delivery (default 300)")
    parser.add_argument("--database", default="mailproxy_throughput", help="database to create and drop")
    parser.add_argument("--keep", action="store_true", help="keep the database and the process logs")
    args = parser.parse_args()
    if args.n < 4 or args.workers < 1:
        parser.error("-n must be at least 4, --workers at least 1")

    server_url = os.environ.get("DATABASE_URL", DEFAULT_SERVER + "/x").rsplit("/", 1)[0]
    db_url = f"{server_url}/{args.database}"
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0").rsplit("/", 1)[0] + "/12"
    work = Path(tempfile.mkdtemp(prefix="mailproxy-throughput-"))
    env = {
        **{k: v for k, v in os.environ.items() if k != "DEBUG"},
        "DATABASE_URL": db_url, "REDIS_URL": redis_url, "GMP_API_TOKEN": secrets.token_urlsafe(32),
        "MAIL_PROXY_ENCRYPTION_KEY": base64.b64encode(os.urandom(32)).decode(),
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50)[:50], "GMP_DATA_DIR": str(work),
        "DJANGO_SETTINGS_MODULE": "mailproxy.settings", "PYTHONUNBUFFERED": "1",
        "GMP_ALLOWED_HOSTS": "127.0.0.1",  # the tenant application below listens on loopback
        "GMP_API_RATE": "off",  # the per-token API throttle would cap the enqueue requests
    }
    celery = [sys.executable, "-m", "celery", "-A", "mailproxy"]
    web_port = free_port()
    commands = {
        "web": [sys.executable, "-m", "gunicorn", "mailproxy.wsgi:application", "--bind", f"127.0.0.1:{web_port}",
                "--workers", "2", "--threads", "2"],
        "beat": [*celery, "beat", "-l", "WARNING", "-s", str(work / "beat-schedule")],
        **{f"worker{i}": [*celery, "worker", "-l", "WARNING", "-c", "1", "-n", f"w{i}@%h", "--without-gossip",
                          "--without-mingle", "--without-heartbeat"] for i in range(1, args.workers + 1)},
    }
    procs: dict[str, subprocess.Popen[bytes]] = {}
    sink, tenant = Sink(), TenantApp()
    controller: Controller | None = None
    tenant_server: ThreadingHTTPServer | None = None
    try:
        drop_database(server_url, args.database, recreate=True)
        redis.Redis.from_url(redis_url).flushdb()
        subprocess.run([sys.executable, "manage.py", "migrate", "--no-input", "-v", "0"], cwd=ROOT, env=env,
                       check=True)
        controller = sink.start()
        bare_count = min(args.n, 2000)
        # In a process of its own, as a worker is, and before the fleet starts: nothing else competes.
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            bare_rate = pool.apply(bare_loop, (controller.port, bare_count))
        print(f"bare smtplib loop: {bare_count:,} messages over one connection, {bare_rate:,.0f} msg/s")
        sink.clear()
        tenant_server = tenant.start()
        for name, argv in commands.items():
            with (work / f"{name}.log").open("wb") as log:
                procs[name] = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                               start_new_session=True)
        with psycopg.connect(db_url, autocommit=True) as db:
            fleet = Fleet(base=f"http://127.0.0.1:{web_port}", db=db, sink=sink, tenant=tenant, procs=procs)
            table, complete, reported = run(args, fleet, env, controller.port, bare_rate)
    except (BenchError, subprocess.CalledProcessError, requests.RequestException, OSError) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        for name in procs:
            print(f"--- {name} log (end) ---\n" + (work / f"{name}.log").read_text(errors="replace")[-2000:],
                  file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        for proc in procs.values():
            stop_group(proc)
        if controller is not None:
            controller.stop()
        if tenant_server is not None:
            tenant_server.shutdown()
            tenant_server.server_close()
        if args.keep:
            print(f"kept the database {args.database} and the logs in {work}")
        else:
            drop_database(server_url, args.database)
            shutil.rmtree(work, ignore_errors=True)
    print()
    print("\n".join(table))
    if not complete:
        print("\nFAILED: some messages never reached the SMTP server", file=sys.stderr)
    if not reported:
        print("\nFAILED: some events were never reported to the tenant", file=sys.stderr)
    return 0 if complete and reported else 1


if __name__ == "__main__":
    sys.exit(main())
