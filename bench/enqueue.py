"""Benchmark of the enqueue API (`POST /commands/add-messages`) on PostgreSQL.

Measures the latency of single-message requests (p50/p90/p99/max) and the wall time of
1,000-message requests, through a real gunicorn server on a fresh database, then checks
that every message was stored. Prints a Markdown table for README.md.

    .venv/bin/python bench/enqueue.py [--single 500] [--batches 5] [--batch-size 1000]
                                      [--workers 2] [--threads 2] [--keep]

The PostgreSQL server is taken from DATABASE_URL (its database name is ignored: the
benchmark always creates, and drops, its own) or defaults to postgres@127.0.0.1:5432.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from itertools import count
from pathlib import Path

import psycopg
import requests

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432"


class BenchError(Exception):
    """A request failed or the stored count is wrong: the numbers would mean nothing."""


def drop_database(server: str, name: str, *, recreate: bool = False) -> None:
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if recreate:
            conn.execute(f'CREATE DATABASE "{name}"')


def scalar(conn: psycopg.Connection[tuple[object, ...]], sql: str) -> object:
    row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(base: str, server: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise BenchError(f"gunicorn exited with code {server.returncode}")
        try:
            if requests.get(f"{base}/health", timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    raise BenchError(f"GET /health did not answer 200 within {timeout:.0f} s")


def stop(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def message(ids: count[int]) -> dict[str, object]:
    return {"id": f"m-{next(ids)}", "from": "Sender <sender@example.com>", "to": ["rcpt1@example.com"],
            "subject": "Hello", "body": "Hi"}


def post_messages(session: requests.Session, base: str, messages: list[dict[str, object]]) -> float:
    """Send one add-messages request; its wall time in seconds."""
    started = time.perf_counter()
    response = session.post(f"{base}/commands/add-messages", json={"messages": messages})
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise BenchError(f"add-messages answered {response.status_code}: {response.text[:500]}")
    body = response.json()
    if body.get("rejected") or body.get("queued") != len(messages):
        raise BenchError(f"add-messages queued {body.get('queued')} of {len(messages)}: {body.get('rejected')}")
    return elapsed


def percentile(sorted_values: list[float], pct: int) -> float:
    return statistics.quantiles(sorted_values, n=100, method="inclusive")[pct - 1]


def run(args: argparse.Namespace, base: str, token: str, db_url: str) -> list[str]:
    session = requests.Session()
    session.headers["X-API-Token"] = token
    account = {"id": "main", "host": "127.0.0.1", "port": 2525, "security": "none"}
    response = session.post(f"{base}/account", json=account)
    if response.status_code != 200:
        raise BenchError(f"POST /account answered {response.status_code}: {response.text[:500]}")

    ids = count(1)
    for _ in range(20):
        post_messages(session, base, [message(ids)])

    single = sorted(post_messages(session, base, [message(ids)]) * 1000 for _ in range(args.single))
    print(f"single message ({args.single} requests): p50 {statistics.median(single):.1f} ms, "
          f"p90 {percentile(single, 90):.1f} ms, p99 {percentile(single, 99):.1f} ms, max {single[-1]:.1f} ms")

    batches = [post_messages(session, base, [message(ids) for _ in range(args.batch_size)])
               for _ in range(args.batches)]
    rate = args.batch_size * len(batches) / sum(batches)
    print(f"{args.batch_size:,}-message request ({args.batches} requests): median "
          f"{statistics.median(batches):.3f} s, max {max(batches):.3f} s, {rate:,.0f} messages/s")

    response = session.get(f"{base}/messages", params={"limit": 1})
    if response.status_code != 200 or len(response.json().get("messages", [])) != 1:
        raise BenchError(f"GET /messages?limit=1 answered {response.status_code}: {response.text[:500]}")
    sent = next(ids) - 1
    with psycopg.connect(db_url) as conn:
        stored = scalar(conn, "SELECT count(*) FROM queueing_message")
        version = str(scalar(conn, "SELECT version()"))
    print(f"stored {stored} messages of {sent} sent")
    if stored != sent:
        raise BenchError(f"{stored} messages stored, {sent} sent")

    return [
        f"{version.split(' on ')[0]}, gunicorn {args.workers} workers, {args.threads} threads each, "
        f"{os.cpu_count()} CPUs, {datetime.now(UTC):%Y-%m-%d}",
        "",
        "| measure | result | target |",
        "|---|---|---|",
        f"| single message, p50 | {statistics.median(single):.1f} ms | ≤ 10 ms |",
        f"| single message, p99 | {percentile(single, 99):.1f} ms | — |",
        f"| {args.batch_size:,}-message request, median | {statistics.median(batches):.3f} s | ≤ 0.5 s |",
        f"| {args.batch_size:,}-message request, max | {max(batches):.3f} s | — |",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--single", type=int, default=500, help="single-message requests (default 500)")
    parser.add_argument("--batches", type=int, default=5, help="batch requests (default 5)")
    parser.add_argument("--batch-size", type=int, default=1000, help="messages per batch request (default 1000)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    parser.add_argument("--threads", type=int, default=2,
                        help="threads per worker (default 2); above 1 gunicorn keeps connections alive")
    parser.add_argument("--database", default="mailproxy_bench", help="database to create and drop")
    parser.add_argument("--keep", action="store_true", help="keep the database at the end")
    args = parser.parse_args()
    if args.single < 2 or args.batches < 1 or args.batch_size < 1:
        parser.error("--single must be at least 2, --batches and --batch-size at least 1")

    server_url = os.environ.get("DATABASE_URL", DEFAULT_SERVER + "/x").rsplit("/", 1)[0]
    db_url = f"{server_url}/{args.database}"
    token = secrets.token_urlsafe(32)
    data_dir = tempfile.TemporaryDirectory(prefix="mailproxy-bench-")
    env = {
        **{k: v for k, v in os.environ.items() if k != "DEBUG"},
        "DATABASE_URL": db_url,
        "GMP_API_TOKEN": token,
        "MAIL_PROXY_ENCRYPTION_KEY": base64.b64encode(os.urandom(32)).decode(),
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50)[:50],
        "GMP_DATA_DIR": data_dir.name,
        "GMP_API_RATE": "off",  # the per-token API throttle would cap the sequential requests
    }
    log_path = Path(data_dir.name) / "gunicorn.log"
    server: subprocess.Popen[bytes] | None = None
    try:
        drop_database(server_url, args.database, recreate=True)
        subprocess.run([sys.executable, "manage.py", "migrate", "--no-input", "-v", "0"],
                       cwd=ROOT, env=env, check=True)
        port = free_port()
        with log_path.open("wb") as log:
            # gunicorn's and the product's log lines go to the file, keeping the output readable.
            server = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "mailproxy.wsgi:application", "--bind", f"127.0.0.1:{port}",
                 "--workers", str(args.workers), "--threads", str(args.threads)],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base, server)
        table = run(args, base, token, db_url)
    except (BenchError, subprocess.CalledProcessError, requests.RequestException) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        if log_path.exists():
            print("gunicorn log (end):\n" + log_path.read_text(errors="replace")[-3000:], file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if server is not None:
            stop(server)
        if not args.keep:
            drop_database(server_url, args.database)
        data_dir.cleanup()
    print()
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
