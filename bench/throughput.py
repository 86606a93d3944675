"""Benchmark of delivery: N messages through gunicorn, beat and Celery workers to a local SMTP sink.

On a fresh PostgreSQL database and Redis db 12 (flushed), measures the enqueue rate, the delivery
rate (first half, second half, overall) from the sink's timestamps, enqueue → SMTP latency per
message, the latency of single `immediate` messages, the workers' peak RSS, the SMTP connections
used, and a bare smtplib loop over one connection to the same sink as the physical limit. Checks
that every message arrived exactly once (exit 1 if any is missing). Prints a Markdown table.

    .venv/bin/python bench/throughput.py [-n 5000] [--workers 2] [--timeout 300] [--keep]

The PostgreSQL server is taken from DATABASE_URL (its database name is ignored) or defaults to
postgres@127.0.0.1:5432; Redis from REDIS_URL's host (db 12 is always used).
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
import time
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import format_datetime
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


class BenchError(Exception):
    """A process or request failed: the numbers would mean nothing."""


class Sink:
    """aiosmtpd in a thread: records (time.time(), Message-ID) of every accepted message, counts connections."""

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
        self.clear()  # the controller's own probe connection
        return controller

    def clear(self) -> None:
        self.received, self.connections = [], 0


def drop_database(server: str, name: str, *, recreate: bool = False) -> None:
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if recreate:
            conn.execute(f'CREATE DATABASE "{name}"')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], pct: int) -> float:
    return statistics.quantiles(sorted(values), n=100, method="inclusive")[pct - 1]


def wait_for(condition: Any, what: str, timeout: float, procs: dict[str, subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise BenchError(f"{name} exited with code {proc.returncode}")
        time.sleep(0.05)
    raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")


def healthy(base: str) -> bool:
    try:
        return requests.get(f"{base}/health", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def workers_ready(env: dict[str, str], names: list[str]) -> bool:
    result = subprocess.run([sys.executable, "-m", "celery", "-A", "mailproxy", "inspect", "ping", "-j", "-t", "1"],
                            cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    start = result.stdout.find("{")
    replies = json.loads(result.stdout[start:]) if start >= 0 else {}
    return all(name in replies for name in names)


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def peak_rss_mb(pid: int) -> float:
    """Largest VmHWM of the process and its children (the pool's processes), in MB."""
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False).stdout.split()
    peaks = []
    for each in [pid, *map(int, children)]:
        for line in Path(f"/proc/{each}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peaks.append(int(line.split()[1]) / 1024)
    return max(peaks)


def bare_message(index: int) -> EmailMessage:
    """What delivery.mime.build_envelope makes of a bench message, with the same headers and body."""
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = SENDER, RCPT, "Hello"
    mail["Date"] = format_datetime(datetime.now(UTC))
    mail["Message-ID"] = f"<{secrets.token_hex(16)}@example.com>"
    mail["X-Mail-Proxy-ID"] = mail["X-Genro-Mail-ID"] = str(index)
    mail.set_content("Hi", subtype="plain", cte="quoted-printable")
    return mail


def bare_loop(port: int, count: int) -> float:
    """Messages/s of building and sending `count` messages over one smtplib connection."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo()
        started = time.perf_counter()
        for index in range(count):
            client.sendmail("sender@example.com", [RCPT], bare_message(index).as_bytes(policy=SMTP_POLICY))
        return count / (time.perf_counter() - started)


def post(session: requests.Session, url: str, body: dict[str, Any]) -> dict[str, Any]:
    response = session.post(url, json=body, timeout=60)
    if response.status_code != 200:
        raise BenchError(f"POST {url} answered {response.status_code}: {response.text[:500]}")
    answer: dict[str, Any] = response.json()
    if "messages" in body and answer.get("queued") != len(body["messages"]):
        raise BenchError(f"queued {answer.get('queued')} of {len(body['messages'])}: {answer.get('rejected')}")
    return answer


def run(args: argparse.Namespace, sink: Sink, base: str, token: str, db_url: str, env: dict[str, str],
        procs: dict[str, subprocess.Popen[bytes]], port: int, bare_rate: float) -> tuple[list[str], int]:
    names = [f"w{i}@{socket.gethostname()}" for i in range(1, args.workers + 1)]
    wait_for(lambda: healthy(base), "web /health", 30, procs)
    wait_for(lambda: workers_ready(env, names), "workers to answer ping", 60, procs)
    session = requests.Session()
    session.headers["X-API-Token"] = token
    post(session, f"{base}/account", {"id": "main", "host": "127.0.0.1", "port": port, "security": "none",
                                      "timeout": 10, "batch_size": 50})

    message = {"from": SENDER, "to": [RCPT], "subject": "Hello", "body": "Hi"}
    started = time.time()
    for first in range(0, args.n, 1000):
        chunk = [{**message, "id": f"m-{i}"} for i in range(first + 1, min(first + 1000, args.n) + 1)]
        post(session, f"{base}/commands/add-messages", {"messages": chunk})
    enqueue_rate = args.n / (time.time() - started)
    print(f"enqueue: {args.n:,} messages in requests of 1,000, {enqueue_rate:,.0f} msg/s")

    conn = psycopg.connect(db_url, autocommit=True)
    def count_sent() -> int:
        row = conn.execute("SELECT count(*) FROM queueing_message WHERE status = 'sent'").fetchone()
        return int(row[0]) if row else 0
    try:
        wait_for(lambda: len(sink.received) >= args.n, f"{args.n} messages at the sink", args.timeout, procs)
        wait_for(lambda: count_sent() == args.n, "every message recorded as sent", 30, procs)
    except BenchError as exc:
        print(f"delivery incomplete: {exc}; {len(sink.received)} at the sink, {count_sent()} sent", file=sys.stderr)
    bulk, connections = list(sink.received), sink.connections

    times = sorted(at for at, _ in bulk)
    half = len(times) // 2
    rate: dict[str, float] = collections.defaultdict(float)
    if len(times) >= 4:
        rate = {"first": half / (times[half] - times[0]), "second": (len(times) - 1 - half) / (times[-1] - times[half]),
                "all": (len(times) - 1) / (times[-1] - times[0])}
        print(f"delivery: {len(times):,} messages, first half {rate['first']:,.0f} msg/s, second half "
              f"{rate['second']:,.0f} msg/s, overall {rate['all']:,.0f} msg/s; first request → last message "
              f"{times[-1] - started:.1f} s, first message {times[0] - started:.2f} s after the first request")
    created = dict(conn.execute("SELECT message_id, extract(epoch FROM created_at)::float8 FROM queueing_message"))
    latency = [at - created[mid] for at, mid in bulk if mid in created]

    immediate, from_start = [], []
    for k in range(1, 21):
        mid = f"<imm-{k}@example.com>"
        before = time.time()
        post(session, f"{base}/commands/add-messages", {"messages": [
            {**message, "id": f"imm-{k}", "priority": "immediate", "message_id": mid}]})
        returned = time.time()
        wait_for(lambda mid=mid: any(m == mid for _, m in sink.received[-3:]), f"immediate {mid}", 10, procs)
        at = next(at for at, m in reversed(sink.received) if m == mid)
        immediate.append((at - returned) * 1000)
        from_start.append((at - before) * 1000)
        wait_for(lambda n=args.n + k: count_sent() == n, f"immediate {mid} recorded", 10, procs)
        time.sleep(0.2)
    print(f"immediate, HTTP answer → SMTP: p50 {statistics.median(immediate):.1f} ms, max {max(immediate):.1f} ms "
          f"(from the request's start: p50 {statistics.median(from_start):.1f} ms, max {max(from_start):.1f} ms)")

    rss = {name: peak_rss_mb(procs[name].pid) for name in procs if name.startswith("worker")}
    print("peak RSS per worker: " + ", ".join(f"{name} {mb:.0f} MB" for name, mb in rss.items()))

    copies = collections.Counter(mid for _, mid in sink.received)
    expected = [mid for (mid,) in conn.execute("SELECT message_id FROM queueing_message")]
    missing = [mid for mid in expected if copies[mid] == 0]
    duplicates = {mid: n for mid, n in copies.items() if n > 1}
    strangers = set(copies) - set(expected)
    print(f"ledger: {len(expected):,} messages, {len(sink.received):,} received, {len(missing)} missing, "
          f"{len(duplicates)} duplicated, {len(strangers)} unknown; SMTP connections for the bulk run: {connections}")
    for label, items in (("missing", missing), ("duplicated", list(duplicates.items())), ("unknown", strangers)):
        if items:
            print(f"  {label}: {sorted(items)[:20]}")
    version = str(conn.execute("SELECT version()").fetchone()[0]).split(" on ")[0]  # type: ignore[index]
    conn.close()

    share = 100 * rate["all"] / bare_rate if bare_rate else 0
    second = 100 * rate["second"] / rate["first"] if rate["first"] else 0
    p50, p99 = (statistics.median(latency), percentile(latency, 99)) if len(latency) > 1 else (0, 0)
    table = [
        f"{version}, {args.workers} workers, {os.cpu_count()} CPUs, {datetime.now(UTC):%Y-%m-%d}, "
        f"{args.n:,} messages",
        "",
        "| measure | result | target |",
        "|---|---|---|",
        f"| enqueue rate | {enqueue_rate:,.0f} msg/s | — |",
        f"| delivery rate, {args.workers} workers | {rate['all']:,.0f} msg/s ({share:.0f} % of bare smtplib) "
        "| ≥ 50 % |",
        f"| second half vs first half | {second:.0f} % | ≥ 90 % |",
        f"| enqueue → SMTP accepted, p50 / p99 | {p50:.1f} s / {p99:.1f} s | — |",
        f"| immediate message, request → SMTP, p50 / max | {statistics.median(immediate):.0f} ms / "
        f"{max(immediate):.0f} ms | ≤ 100 ms p50 |",
        f"| worker peak RSS | {max(rss.values()):.0f} MB | ≤ 150 MB |",
        f"| SMTP connections for {args.n:,} messages | {connections} | a handful |",
        f"| bare smtplib loop | {bare_rate:,.0f} msg/s | — |",
    ]
    return table, len(missing)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=5000, help="messages of the bulk run (default 5000)")
    parser.add_argument("--workers", type=int, default=2, help="celery worker processes, -c 1 each (default 2)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds allowed for delivery (default 300)")
    parser.add_argument("--database", default="mailproxy_throughput", help="database to create and drop")
    parser.add_argument("--keep", action="store_true", help="keep the database and the logs at the end")
    args = parser.parse_args()
    if args.n < 4 or args.workers < 1:
        parser.error("-n must be at least 4, --workers at least 1")

    server_url = os.environ.get("DATABASE_URL", DEFAULT_SERVER + "/x").rsplit("/", 1)[0]
    db_url = f"{server_url}/{args.database}"
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0").rsplit("/", 1)[0] + "/12"
    token = secrets.token_urlsafe(32)
    work = Path(tempfile.mkdtemp(prefix="mailproxy-throughput-"))
    env = {
        **{k: v for k, v in os.environ.items() if k != "DEBUG"},
        "DATABASE_URL": db_url, "REDIS_URL": redis_url, "GMP_API_TOKEN": token,
        "MAIL_PROXY_ENCRYPTION_KEY": base64.b64encode(os.urandom(32)).decode(),
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50)[:50], "GMP_DATA_DIR": str(work),
        "DJANGO_SETTINGS_MODULE": "mailproxy.settings", "PYTHONUNBUFFERED": "1",
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
    sink = Sink()
    controller: Controller | None = None
    try:
        drop_database(server_url, args.database, recreate=True)
        redis.Redis.from_url(redis_url).flushdb()
        subprocess.run([sys.executable, "manage.py", "migrate", "--no-input", "-v", "0"],
                       cwd=ROOT, env=env, check=True)
        controller = sink.start()
        bare_count = min(args.n, 2000)
        # In a process of its own, like a worker, and before the fleet starts: nothing else runs.
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            bare_rate = pool.apply(bare_loop, (controller.port, bare_count))
        print(f"bare smtplib loop: {bare_count:,} messages over one connection, {bare_rate:,.0f} msg/s")
        sink.clear()
        for name, argv in commands.items():
            with (work / f"{name}.log").open("wb") as log:
                procs[name] = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                               start_new_session=True)
        table, missing = run(args, sink, f"http://127.0.0.1:{web_port}", token, db_url, env, procs,
                              controller.port, bare_rate)
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
        if not args.keep:
            drop_database(server_url, args.database)
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept database {args.database} and logs in {work}")
    print()
    print("\n".join(table))
    if missing:
        print(f"\n{missing} message(s) never reached the SMTP server", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
