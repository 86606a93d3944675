"""Side-by-side benchmark: this product against the seed product it replaces, genro-mail-proxy 0.7.0.

One run, one machine, one SMTP sink. Both products get the same messages from the same client and
deliver to the same aiosmtpd sink (tests/smtp_sink.py, in a thread of this process); a bare smtplib
loop over one connection to that sink, run three times (before, between and after the products),
is the physical limit. Measured for each product:

- single-message enqueue latency, p50/p99 over `--single` sequential requests on one keep-alive
  connection (the messages deferred to tomorrow on a second account, so nothing is sent meanwhile);
- the wall time of a 1,000-message enqueue request;
- time to first delivery with an idle queue (enqueue answer → sink, median of 5 messages);
  these three with both products up and their requests interleaved, so both meet the same load;
- a bulk run: sending held (the tenant suspended), N messages enqueued in requests of 1,000, then
  released (activate + run-now): the delivery rate over the first and the second half of the
  arrivals at the sink, and the time from the release to the first arrival;
- peak RSS and PSS of the product's process tree (sampled every 0.2 s from /proc) and the CPU time
  it used per 1,000 messages delivered (for this product including its PostgreSQL backends);
- the machine's load average and CPU busy share during each phase, and for each half of a delivery
  the cores other processes on the machine took and the product's CPU per message (the same CPU per
  message in a slower half means it waited, for CPU or disk, rather than worked more).

Then, in this process with Django, the cost of one dispatch claim (`queueing.lifecycle.claim_due`)
and of beat's sweep with 10,000 and 1,000,000 rows waiting (bench/compare_claim.py).

This product runs as in production: gunicorn (2 workers x 2 threads), 2 Celery worker processes
(`--concurrency` pool processes each, default 4 as in docker-compose.yml) and beat, on a fresh
PostgreSQL database `--database` (created, migrated, dropped at the end) and Redis db `--redis-db`
(flushed at start and end; no other db is touched). The seed runs in its own virtualenv,
bench/.seed-venv (created on first use from PyPI, with the `sql`, `storage` and `tools` packages its
wheel lacks taken from the same version's sdist), on its default embedded SQLite storage, one
uvicorn process (bench/seed_server.py).

    .venv/bin/python bench/compare.py [-n 5000] [--seed-n N] [--single 300] [--keep]

Prints a Markdown table and writes everything to bench/results/compare.json. The PostgreSQL server
is taken from DATABASE_URL (its database name is ignored) or postgres@127.0.0.1:5432; Redis from
REDIS_URL's host. Exit status 1 if a product failed to run or lost messages (missed targets are
reported, not an error).
"""

from __future__ import annotations

import argparse
import base64
import collections
import fcntl
import hashlib
import json
import multiprocessing
import os
import platform
import secrets
import shutil
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
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

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(BENCH)]

from compare_procs import TICKS, MachineLoad, Tree, TreeSampler  # noqa: E402

from tests.smtp_sink import SmtpSink  # noqa: E402

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432"
SEED_VERSION = "0.7.0"
SEED_VENV = BENCH / ".seed-venv"
RESULTS = BENCH / "results" / "compare.json"
SENDER, RCPT = "Sender <sender@example.com>", "rcpt1@example.com"
BODY = "This is the body of a benchmark message, the same for both products. " * 8  # ~550 bytes
# High enough never to defer a message here, but set: production accounts have limits, and checking
# them is part of each send.
LIMITS = {"limit_per_minute": 1_000_000, "limit_per_hour": 10_000_000, "limit_per_day": 100_000_000}
TOMORROW = 86_400


class BenchError(Exception):
    """A process or request failed: the numbers would mean nothing."""


def log(text: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {text}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], pct: int) -> float:
    return statistics.quantiles(sorted(values), n=100, method="inclusive")[pct - 1]


def wait(condition: Any, what: str, timeout: float, procs: dict[str, subprocess.Popen[bytes]] | None = None,
         step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except requests.RequestException:
            pass
        for name, proc in (procs or {}).items():
            if proc.poll() is not None:
                raise BenchError(f"{name} exited with code {proc.returncode}")
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(step)


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def bare_loop(port: int, count: int) -> dict[str, Any]:
    """Messages/s of building (as delivery.mime.build_envelope does) and sending over one connection."""
    sizes = []
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo()
        started, cpu = time.perf_counter(), time.process_time()
        for index in range(count):
            mail = EmailMessage()
            mail["From"], mail["To"], mail["Subject"] = SENDER, RCPT, f"Hello {index}"
            mail["Date"] = format_datetime(datetime.now(UTC))
            mail["Message-ID"] = f"<bare-{index}-{secrets.token_hex(4)}@bench.example.com>"
            mail["X-Mail-Proxy-ID"] = mail["X-Genro-Mail-ID"] = str(index)
            mail.set_content(BODY, subtype="plain", cte="quoted-printable")
            data = mail.as_bytes(policy=SMTP_POLICY)
            sizes.append(len(data))
            client.sendmail("sender@example.com", [RCPT], data)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"rate": count / elapsed, "messages": count, "bytes": statistics.mean(sizes),
            "cpu_ms_per_message": 1000 * cpu / count}


def sink_cpu_seconds() -> float:
    """CPU time used so far by the SMTP sink's thread of this process."""
    [sink_thread] = [t for t in threading.enumerate() if t.name.startswith("smtp-sink:")]
    stat = Path(f"/proc/self/task/{sink_thread.native_id}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def code_fingerprint() -> str:
    """A hash of this product's Python sources: a run whose code changed midway is flagged."""
    digest = hashlib.sha256()
    for app in ("mailproxy", "tenants", "queueing", "delivery", "bounces", "pec"):
        for path in sorted((ROOT / app).rglob("*.py")):
            digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def rates(times: list[float]) -> tuple[float, float, float]:
    """Messages/s over the first half, the second half and the whole of the sorted arrival times."""
    if len(times) < 4:
        return 0.0, 0.0, 0.0
    half = len(times) // 2
    return (half / max(1e-9, times[half] - times[0]), (len(times) - 1 - half) / max(1e-9, times[-1] - times[half]),
            (len(times) - 1) / max(1e-9, times[-1] - times[0]))


# -- the products ----------------------------------------------------------------------------------


class Product:
    """What the benchmark needs of a product: start, configure, enqueue, hold/release, stop."""

    key = ""
    title = ""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.session = requests.Session()
        self.base = ""
        self.notes: dict[str, Any] = {}

    def roots(self) -> list[int]:
        return [proc.pid for proc in self.procs.values() if proc.poll() is None]

    def database_pids(self) -> list[int]:
        return []

    def spawn(self, name: str, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        with (self.work / f"{self.key}-{name}.log").open("wb") as output:
            self.procs[name] = subprocess.Popen(argv, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT,
                                                start_new_session=True)

    def logs(self) -> str:
        parts = []
        for name in self.procs:
            path = self.work / f"{self.key}-{name}.log"
            if path.exists():
                parts.append(f"--- {self.key} {name} (end) ---\n" + path.read_text(errors="replace")[-2500:])
        return "\n".join(parts)

    def check(self, response: requests.Response, what: str) -> dict[str, Any]:
        if response.status_code != 200:
            raise BenchError(f"{self.key}: {what} answered {response.status_code}: {response.text[:500]}")
        body = response.json()
        if isinstance(body, dict) and body.get("ok") is False:
            raise BenchError(f"{self.key}: {what} answered ok=false: {response.text[:500]}")
        return body if isinstance(body, dict) else {"items": body}

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.check(self.session.post(f"{self.base}{path}", json=body, timeout=600), f"POST {path}")

    def message_id(self, kind: str, index: int) -> str:
        """The Message-ID of a benchmark message: the one sink tells the products' messages apart by it."""
        return f"<{self.key}.{kind}-{index}@bench.example.com>"

    def message(self, kind: str, index: int, *, account: str, deferred: bool) -> dict[str, Any]:
        item: dict[str, Any] = {"id": f"{kind}-{index}", "account_id": account, "from": SENDER, "to": [RCPT],
                                "subject": f"Hello {index}", "body": BODY, "message_id": self.message_id(kind, index)}
        if deferred:
            item["deferred_ts"] = int(time.time()) + TOMORROW
        return item

    def enqueue(self, messages: list[dict[str, Any]]) -> float:
        """One enqueue request; its wall time in seconds (every message must be queued)."""
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def configure(self, sink_port: int) -> None:
        raise NotImplementedError

    def hold(self) -> None:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            stop_group(proc)


class ThisProduct(Product):
    key = "mail-proxy"
    title = "this product"

    def __init__(self, work: Path, *, server_url: str, database: str, redis_url: str, concurrency: int) -> None:
        super().__init__(work)
        self.server_url = server_url
        self.concurrency = concurrency
        self.database = database
        self.db_url = f"{server_url}/{database}"
        self.redis_url = redis_url
        self.env = {
            **{k: v for k, v in os.environ.items() if k != "DEBUG"},
            "DATABASE_URL": self.db_url, "REDIS_URL": redis_url, "GMP_API_TOKEN": secrets.token_urlsafe(32),
            "MAIL_PROXY_ENCRYPTION_KEY": base64.b64encode(os.urandom(32)).decode(),
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(50)[:50], "GMP_DATA_DIR": str(work / "mail-proxy-data"),
            "DJANGO_SETTINGS_MODULE": "mailproxy.settings", "PYTHONUNBUFFERED": "1",
            "GMP_API_RATE": "off",  # the API's per-token throttle would cap the 300 sequential requests
            "GMP_ALLOWED_HOSTS": "127.0.0.1",
        }
        self.session.headers["X-API-Token"] = self.env["GMP_API_TOKEN"]
        self._monitor: psycopg.Connection[tuple[Any, ...]] | None = None

    def recreate_database(self, *, drop_only: bool = False) -> None:
        with psycopg.connect(f"{self.server_url}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            if not drop_only:
                conn.execute(f'CREATE DATABASE "{self.database}"')

    def flush_redis(self) -> None:
        redis.Redis.from_url(self.redis_url).flushdb()  # this db only

    def database_pids(self) -> list[int]:
        """PostgreSQL backends serving the benchmark database (their CPU is the product's work)."""
        if self._monitor is None or self._monitor.closed:
            self._monitor = psycopg.connect(f"{self.server_url}/postgres", autocommit=True)
        return [pid for (pid,) in self._monitor.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s",
                                                        [self.database])]

    def start(self) -> None:
        self.recreate_database()
        self.flush_redis()
        subprocess.run([sys.executable, "manage.py", "migrate", "--no-input", "-v", "0"], cwd=ROOT, env=self.env,
                       check=True)
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        celery = [sys.executable, "-m", "celery", "-A", "mailproxy"]
        self.spawn("web", [sys.executable, "-m", "gunicorn", "mailproxy.wsgi:application", "--bind",
                           f"127.0.0.1:{port}", "--workers", "2", "--threads", "2"], self.env, ROOT)
        for i in (1, 2):
            self.spawn(f"worker{i}", [*celery, "worker", "-l", "WARNING", "-c", str(self.concurrency),
                                      "-n", f"w{i}@%h", "--without-gossip", "--without-mingle",
                                      "--without-heartbeat"], self.env, ROOT)
        self.spawn("beat", [*celery, "beat", "-l", "WARNING", "-s", str(self.work / "beat-schedule")], self.env, ROOT)
        wait(lambda: requests.get(f"{self.base}/health", timeout=1).status_code == 200, "web /health", 60,
             self.procs)
        names = [f"w{i}@{socket.gethostname()}" for i in (1, 2)]
        wait(lambda: self._workers_answer(names), "the workers to answer a ping", 90, self.procs, step=0.5)
        with psycopg.connect(self.db_url) as conn:
            row = conn.execute("SELECT version()").fetchone()
        self.notes["postgresql"] = str(row[0]).split(" on ")[0] if row else "?"
        server: dict[str, Any] = redis.Redis.from_url(self.redis_url).info("server")  # type: ignore[assignment]
        self.notes["redis"] = server.get("redis_version")
        self.notes["processes"] = f"gunicorn 2 workers x 2 threads, 2 Celery workers -c {self.concurrency}, beat"

    def _workers_answer(self, names: list[str]) -> bool:
        result = subprocess.run([sys.executable, "-m", "celery", "-A", "mailproxy", "inspect", "ping", "-j", "-t",
                                 "1"], cwd=ROOT, env=self.env, capture_output=True, text=True, check=False)
        start = result.stdout.find("{")
        return start >= 0 and all(name in json.loads(result.stdout[start:]) for name in names)

    def configure(self, sink_port: int) -> None:
        for account in ("main", "hold"):
            self.post("/account", {"id": account, "host": "127.0.0.1", "port": sink_port, "security": "none",
                                   "timeout": 10, "batch_size": 50, **LIMITS})

    def enqueue(self, messages: list[dict[str, Any]]) -> float:
        started = time.perf_counter()
        response = self.session.post(f"{self.base}/commands/add-messages", json={"messages": messages}, timeout=600)
        elapsed = time.perf_counter() - started
        body = self.check(response, "add-messages")
        if body.get("rejected") or body.get("queued") != len(messages):
            raise BenchError(f"{self.key}: queued {body.get('queued')} of {len(messages)}: {body.get('rejected')}")
        return elapsed

    def hold(self) -> None:
        self.post("/commands/suspend", {"tenant_id": "default"})

    def release(self) -> None:
        self.post("/commands/activate", {"tenant_id": "default"})
        self.post("/commands/run-now", {})

    def stop(self) -> None:
        super().stop()
        if self._monitor is not None:
            self._monitor.close()


class SeedProduct(Product):
    key = "seed"
    title = f"seed genro-mail-proxy {SEED_VERSION}"

    def __init__(self, work: Path, *, venv: Path) -> None:
        super().__init__(work)
        self.venv = venv
        self.token = secrets.token_urlsafe(32)
        self.session.headers["X-API-Token"] = self.token

    def message(self, kind: str, index: int, *, account: str, deferred: bool) -> dict[str, Any]:
        return {**super().message(kind, index, account=account, deferred=deferred), "tenant_id": "default"}

    def start(self) -> None:
        python = ensure_seed_venv(self.venv)
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        env = {**os.environ, "PYTHONPATH": str(self.venv / "seed-src"), "PYTHONUNBUFFERED": "1"}
        env.pop("DJANGO_SETTINGS_MODULE", None)
        self.spawn("server", [str(python), str(BENCH / "seed_server.py"), "--db", str(self.work / "seed-mail.db"),
                              "--port", str(port), "--token", self.token], env, self.work)
        wait(lambda: requests.get(f"{self.base}/health", timeout=1).status_code == 200, "seed /health", 60,
             self.procs)
        self.notes["storage"] = "SQLite (its default embedded storage), file in a temporary folder"
        self.notes["processes"] = "one uvicorn process (API and dispatch loop in one asyncio loop)"
        self.notes["packages"] = (self.venv / ".compare-ready").read_text().split()

    def configure(self, sink_port: int) -> None:
        # Its wheel ships the enterprise package, so it starts multi-tenant, with no tenant yet.
        self.post("/tenants/add", {"id": "default", "name": "default"})
        for account in ("main", "hold"):
            self.post("/accounts/add", {"id": account, "tenant_id": "default", "host": "127.0.0.1",
                                        "port": sink_port, "use_tls": False, "batch_size": 50, **LIMITS})

    def enqueue(self, messages: list[dict[str, Any]]) -> float:
        started = time.perf_counter()
        response = self.session.post(f"{self.base}/messages/add_batch", json={"messages": messages}, timeout=600)
        elapsed = time.perf_counter() - started
        body = self.check(response, "messages/add_batch")
        if body.get("rejected") or body.get("queued") != len(messages):
            raise BenchError(f"{self.key}: queued {body.get('queued')} of {len(messages)}: {body.get('rejected')}")
        return elapsed

    def hold(self) -> None:
        self.post("/instance/suspend", {"tenant_id": "default"})

    def release(self) -> None:
        self.post("/instance/activate", {"tenant_id": "default"})
        self.post("/instance/run_now", {})


def ensure_seed_venv(venv: Path) -> Path:
    """The seed's virtualenv, created on first use: its wheel from PyPI, plus the packages it lacks."""
    python = venv / "bin" / "python"
    ready = venv / ".compare-ready"
    if not (python.exists() and ready.exists()):
        log(f"creating {venv.relative_to(ROOT)} (genro-mail-proxy=={SEED_VERSION} from PyPI)")
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "--disable-pip-version-check", "--quiet"]
        for argv in ([*pip, "install", f"genro-mail-proxy=={SEED_VERSION}"],
                     [*pip, "download", f"genro-mail-proxy=={SEED_VERSION}", "--no-binary", ":all:", "--no-deps",
                      "-d", str(venv / "sdist")]):
            done = subprocess.run(argv, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise BenchError(f"{' '.join(argv[3:5])} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        # The wheel has `core` and `enterprise` only; `sql`, `storage` and `tools`, which they
        # import, are in the sdist's src/ folder.
        [archive] = list((venv / "sdist").glob("genro_mail_proxy-*.tar.gz"))
        target = venv / "seed-src"
        with tarfile.open(archive) as tar:
            members = []
            for member in tar.getmembers():
                parts = member.name.split("/")
                if len(parts) > 3 and parts[1] == "src" and parts[2] in ("sql", "storage", "tools"):
                    member.name = "/".join(parts[2:])
                    members.append(member)
            tar.extractall(target, members=members, filter="data")
        env = {**os.environ, "PYTHONPATH": str(target)}
        subprocess.run([str(python), "-c", "import core.mail_proxy.proxy, sql, storage, tools, uvicorn"], env=env,
                       check=True)
        frozen = subprocess.run([str(python), "-m", "pip", "freeze", "--disable-pip-version-check"],
                                capture_output=True, text=True, check=True).stdout
        ready.write_text(frozen)
    return python


# -- one product's run -----------------------------------------------------------------------------


def start_product(product: Product, sink: SmtpSink, sampler: TreeSampler, load: MachineLoad) -> dict[str, Any]:
    phase = load.start(f"{product.key}: start")
    product.start()
    load.end(phase)
    sampler.watch(Tree(name=product.key, roots=product.roots,
                       extra_cpu=product.database_pids if isinstance(product, ThisProduct) else None))
    product.configure(sink.port)
    return {"product": product.title, "notes": product.notes}


def in_turn(products: list[Product], index: int) -> list[Product]:
    """The products in alternating order (A B, B A, …): neither always goes first."""
    return products if index % 2 == 0 else products[::-1]


def enqueue_phase(products: list[Product], args: argparse.Namespace, load: MachineLoad,
                  batches: dict[str, int], results: dict[str, dict[str, Any]]) -> None:
    """Single-message latency and batch time, the products' requests interleaved, so each meets the same
    machine load; the messages are deferred to tomorrow on the `hold` account: nothing is sent meanwhile."""
    phase = load.start("enqueue (products interleaved)")
    for i in range(20):  # warm-up: connections, caches
        for product in in_turn(products, i):
            product.enqueue([product.message("warm", i, account="hold", deferred=True)])
    single: dict[str, list[float]] = {product.key: [] for product in products}
    for i in range(args.single):
        for product in in_turn(products, i):
            single[product.key].append(
                product.enqueue([product.message("single", i, account="hold", deferred=True)]) * 1000)
    batch: dict[str, list[float]] = {product.key: [] for product in products}
    for b in range(max(batches[product.key] for product in products)):
        for product in in_turn(products, b):
            if b < batches[product.key]:
                batch[product.key].append(product.enqueue([product.message(f"batch{b}", i, account="hold",
                                                                           deferred=True)
                                                           for i in range(args.batch_size)]))
    load.end(phase)
    for product in products:
        times, batch_times = single[product.key], batch[product.key]
        results[product.key]["enqueue"] = {
            "single_requests": args.single, "single_p50_ms": statistics.median(times),
            "single_p90_ms": percentile(times, 90), "single_p99_ms": percentile(times, 99),
            "single_max_ms": max(times), "batch_size": args.batch_size, "batch_requests": len(batch_times),
            "batch_seconds": batch_times, "batch_median_s": statistics.median(batch_times), "phase": phase.as_dict(),
        }
        log(f"{product.key}: single message p50 {statistics.median(times):.1f} ms, p99 {percentile(times, 99):.1f} ms;"
            f" {args.batch_size:,}-message request {', '.join(f'{t:.3f}' for t in batch_times)} s")


def first_delivery_phase(products: list[Product], sink: SmtpSink, load: MachineLoad,
                         results: dict[str, dict[str, Any]]) -> None:
    """Idle queue: how long one message waits for the dispatcher (enqueue answer → sink), in turns."""
    phase = load.start("first delivery, idle queue")
    first: dict[str, list[float]] = {product.key: [] for product in products}
    for i in range(5):
        for product in in_turn(products, i):
            before = len(sink.messages)
            product.enqueue([product.message("idle", i, account="main", deferred=False)])
            answered = time.time()
            sink.wait_for(before + 1, timeout=30)
            arrived = next(m.received_at for m in sink.messages if m.message_id == product.message_id("idle", i))
            first[product.key].append((arrived - answered) * 1000)
            time.sleep(0.3)
    load.end(phase)
    for product in products:
        times = first[product.key]
        results[product.key]["first_delivery_idle_ms"] = {"median": statistics.median(times), "max": max(times),
                                                          "each": times}
        log(f"{product.key}: idle queue, enqueue answer → SMTP: median {statistics.median(times):.0f} ms")


def bulk_phase(product: Product, args: argparse.Namespace, sink: SmtpSink, sampler: TreeSampler,
               load: MachineLoad, *, n: int, timeout: float, idle: list[Product]) -> dict[str, Any]:
    """Enqueue `n` messages with sending held, release them, measure their arrivals at the sink."""
    product.hold()
    phase = load.start(f"{product.key}: bulk enqueue ({n:,}, held)")
    before = len(sink.messages)
    started = time.time()
    for first_index in range(0, n, args.batch_size):
        product.enqueue([product.message("bulk", i, account="main", deferred=False)
                         for i in range(first_index, min(first_index + args.batch_size, n))])
    enqueue_seconds = time.time() - started
    load.end(phase)
    leaked = len(sink.messages) - before
    log(f"{product.key}: {n:,} messages enqueued in {enqueue_seconds:.1f} s with sending held "
        f"({leaked} sent meanwhile)")
    cpu_mark = sampler.cpu_mark(product.key)
    idle_marks = {other.key: sampler.cpu_mark(other.key) for other in idle}
    connections, sink_cpu = sink.connections, sink_cpu_seconds()
    bench_cpu = sum(os.times()[:2])  # this process: the sink, the sampler, the client
    phase = load.start(f"{product.key}: bulk delivery ({n:,})")
    product.release()
    released = time.time()
    complete = True
    try:
        wait(lambda: len(sink.messages) - before >= n, f"{n:,} messages at the sink", timeout, product.procs,
             step=0.1)
    except BenchError as exc:
        if any(proc.poll() is not None for proc in product.procs.values()):
            raise
        log(f"{product.key}: {exc}; measuring what arrived")
        complete = False
    own_cpu, database_cpu = sampler.cpu_since(product.key, cpu_mark)
    cpu = own_cpu + database_cpu
    idle_cpu = {key: sum(sampler.cpu_since(key, mark)) for key, mark in idle_marks.items()}
    sink_cpu = sink_cpu_seconds() - sink_cpu
    bench_cpu = sum(os.times()[:2]) - bench_cpu
    load.end(phase)
    # What the rest of the machine (other users' processes) took meanwhile, in cores.
    others = phase.busy_share * (os.cpu_count() or 1) - (cpu + bench_cpu + sum(idle_cpu.values())) / phase.seconds
    time.sleep(1.0)  # late duplicates would show here
    prefix = f"<{product.key}.bulk-"
    received = [m for m in sink.messages if (m.message_id or "").startswith(prefix)]
    copies = collections.Counter(m.message_id for m in received)
    times = sorted(m.received_at for m in received)
    first_half, second_half, overall = rates(times)
    halves = ({"first": sampler.window(times[0], times[len(times) // 2], product.key),
               "second": sampler.window(times[len(times) // 2], times[-1], product.key)} if len(times) >= 4 else {})
    for key, count in (("first", len(times) // 2), ("second", len(times) - 1 - len(times) // 2)):
        if halves.get(key):
            # The same CPU per message in both halves: a slower half waited longer (CPU, disk), it did not work more.
            for part in ("product", "product_process", "product_database"):
                halves[key][f"{part}_cpu_ms_per_message"] = (1000 * halves[key][f"{part}_cores"]
                                                             * halves[key]["seconds"] / max(1, count))
    bulk: dict[str, Any] = {
        "messages": n, "received": len(received), "distinct": len(copies),
        "duplicated": sum(1 for c in copies.values() if c > 1), "complete": complete,
        "enqueue_seconds": enqueue_seconds, "sent_while_held": leaked,
        "rate_first_half": first_half, "rate_second_half": second_half, "rate_overall": overall,
        "second_vs_first": second_half / first_half if first_half else 0.0,
        "release_to_first_s": times[0] - released if times else None,
        "release_to_last_s": times[-1] - released if times else None,
        "smtp_connections": sink.connections - connections,
        "bytes_mean": statistics.mean(len(m.data) for m in received[:200]) if received else 0,
        "cpu_seconds": cpu, "cpu_seconds_per_1000": 1000 * cpu / max(1, len(received)),
        "cpu_seconds_processes": own_cpu, "cpu_seconds_database_backends": database_cpu,
        # Under one core's worth, the sink was waiting for the product, not the other way round.
        "sink_cpu_share_of_one_core": sink_cpu / max(1e-9, phase.seconds),
        "idle_products_cpu_seconds": idle_cpu, "benchmark_process_cpu_seconds": bench_cpu,
        "other_processes_cores": max(0.0, others), "cores_by_half": halves,
        "phase": phase.as_dict(),
    }
    log(f"{product.key}: delivery {len(received):,}/{n:,}: first half {first_half:,.1f} msg/s, second half "
        f"{second_half:,.1f} msg/s, overall {overall:,.1f} msg/s; first after "
        f"{bulk['release_to_first_s'] or 0:.2f} s; CPU {cpu:.1f} s ({bulk['cpu_seconds_per_1000']:.1f} s per "
        f"1,000; database backends {database_cpu:.1f} s); sink thread "
        f"{100 * bulk['sink_cpu_share_of_one_core']:.0f} % of a core; other processes on the machine "
        f"{bulk['other_processes_cores']:.1f} cores (first / second half {halves_text(bulk)})")
    return bulk


def memory(product: Product, sampler: TreeSampler) -> dict[str, Any]:
    sampler.sample(refresh_extra=False)
    with sampler.lock:
        tree = sampler.trees[product.key]
        peak = {"peak_rss_mb": tree.peak_rss_kb / 1024, "peak_pss_mb": tree.peak_pss_kb / 1024,
                "peak_processes": tree.peak_processes}
    log(f"{product.key}: peak RSS {peak['peak_rss_mb']:.0f} MB (PSS {peak['peak_pss_mb']:.0f} MB) over "
        f"{peak['peak_processes']} processes")
    return peak


def run_bare(port: int, count: int, sink: SmtpSink, load: MachineLoad, label: str) -> dict[str, Any]:
    phase = load.start(f"bare smtplib loop ({label})")
    before = len(sink.messages)
    # In a process of its own, as a product's sender is.
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        bare = pool.apply(bare_loop, (port, count))
    if len(sink.messages) - before != count:
        raise BenchError(f"bare loop: the sink received {len(sink.messages) - before} of {count}")
    bare["phase"] = load.end(phase).as_dict()
    log(f"bare smtplib loop ({label}): {count:,} messages over one connection, {bare['rate']:,.0f} msg/s")
    return bare


def run_claims(product: ThisProduct, args: argparse.Namespace, load: MachineLoad) -> dict[str, Any]:
    """The claim measurements, in this process, with Django on the benchmark database."""
    os.environ.update({k: v for k, v in product.env.items() if k.startswith(("GMP_", "DJANGO", "MAIL_PROXY"))
                       or k in ("DATABASE_URL", "REDIS_URL")})
    import django

    django.setup()
    import compare_claim

    phase = load.start("claim cost")
    sizes = [int(s) for s in args.claim_rows.split(",")]
    layouts = args.claim_layouts.split(",")
    claims = compare_claim.measure(sizes=sizes, due=args.claim_due, repeats=args.claim_repeats, layouts=layouts,
                                   log=log)
    claims["phase"] = load.end(phase).as_dict()
    from django.db import connections

    connections.close_all()
    return claims


# -- the report ------------------------------------------------------------------------------------


def halves_text(bulk: dict[str, Any]) -> str:
    halves = bulk.get("cores_by_half") or {}
    if not halves.get("first") or not halves.get("second"):
        return "?"
    first, second = halves["first"], halves["second"]
    return (f"{first['other_cores']:.1f} / {second['other_cores']:.1f} cores; product CPU "
            f"{first['product_cpu_ms_per_message']:.1f} / {second['product_cpu_ms_per_message']:.1f} ms per message")


def plan_scans(stage: dict[str, Any]) -> str:
    """The claim's scan of queueing_message in a few words: 'Seq Scan, 1,001,000 rows'."""
    for scan in stage["claim_plan"]["scans"]:
        if scan.get("Relation Name") == "queueing_message" or scan.get("Index Name", "").startswith("message_"):
            where = scan.get("Index Name", "").replace("queueing_message_account_id_3869f67f", "account_id index")
            rows = scan["Actual Rows"] * scan.get("Actual Loops", 1)
            return f"{scan['Node Type']}{' ' + where if where else ''}, {rows:,} rows"
    return "?"


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def report(results: dict[str, Any]) -> tuple[list[str], dict[str, bool]]:
    ours, seed = results["products"]["mail-proxy"], results["products"].get("seed")
    bare = results["bare_rate"]
    o_e, o_b = ours["enqueue"], ours["bulk"]
    targets: dict[str, bool] = {}
    lines = ["| measure | this product | seed 0.7.0 | ratio | target |", "|---|---|---|---|---|"]

    def row(measure: str, mine: str, theirs: str, ratio: str = "", target: str = "—") -> None:
        lines.append(f"| {measure} | {mine} | {theirs} | {ratio} | {target} |")

    if seed:
        s_e, s_b = seed["enqueue"], seed["bulk"]
        speed = s_e["single_p50_ms"] / o_e["single_p50_ms"]
        targets["enqueue p50 ≥ 4x faster than the seed"] = speed >= 4
        row("single-message enqueue, p50", f"{o_e['single_p50_ms']:.1f} ms", f"{s_e['single_p50_ms']:.1f} ms",
            f"{speed:.1f}x faster", f"≥ 4x faster: {verdict(speed >= 4)}")
        row("single-message enqueue, p99", f"{o_e['single_p99_ms']:.1f} ms", f"{s_e['single_p99_ms']:.1f} ms",
            f"{s_e['single_p99_ms'] / o_e['single_p99_ms']:.1f}x")
        row(f"{o_e['batch_size']:,}-message request", f"{o_e['batch_median_s']:.3f} s (median of "
            f"{o_e['batch_requests']})", f"{s_e['batch_median_s']:.2f} s ({s_e['batch_requests']} request)",
            f"{s_e['batch_median_s'] / o_e['batch_median_s']:.0f}x")
        row(f"bulk enqueue, {o_b['messages']:,} / {s_b['messages']:,} messages in requests of {o_e['batch_size']:,} "
            "(sending held)", f"{o_b['enqueue_seconds']:.1f} s ({o_b['messages'] / o_b['enqueue_seconds']:,.0f} msg/s)",
            f"{s_b['enqueue_seconds']:.1f} s ({s_b['messages'] / s_b['enqueue_seconds']:,.0f} msg/s)",
            f"{(o_b['messages'] / o_b['enqueue_seconds']) / (s_b['messages'] / s_b['enqueue_seconds']):.0f}x")
        faster = o_b["rate_overall"] / s_b["rate_overall"] if s_b["rate_overall"] else float("inf")
        targets["delivery rate ≥ 10x the seed"] = faster >= 10
        row(f"delivery rate (this product {o_b['messages']:,}, seed {s_b['messages']:,} messages)",
            f"{o_b['rate_overall']:,.0f} msg/s", f"{s_b['rate_overall']:,.1f} msg/s", f"{faster:.1f}x",
            f"≥ 10x: {verdict(faster >= 10)}")
        row("delivery rate, first half / second half", f"{o_b['rate_first_half']:,.0f} / "
            f"{o_b['rate_second_half']:,.0f} msg/s", f"{s_b['rate_first_half']:,.1f} / "
            f"{s_b['rate_second_half']:,.1f} msg/s")
    share = o_b["rate_overall"] / bare
    targets["delivery rate ≥ 50 % of the bare loop"] = share >= 0.5
    row("CPU per message: product (incl. PostgreSQL) / bare loop client",
        f"{1000 * o_b['cpu_seconds'] / max(1, o_b['received']):.1f} ms",
        f"{1000 * seed['bulk']['cpu_seconds'] / max(1, seed['bulk']['received']):.1f} ms" if seed else "",
        f"bare {statistics.median(b['cpu_ms_per_message'] for b in results['bare']):.1f} ms")
    row("delivery rate vs bare smtplib loop", f"{100 * share:.0f} %",
        f"{100 * seed['bulk']['rate_overall'] / bare:.1f} %" if seed else "", f"bare {bare:,.0f} msg/s",
        f"≥ 50 %: {verdict(share >= 0.5)}")
    steady = o_b["second_vs_first"]
    targets["second half / first half ≥ 0.9"] = steady >= 0.9
    row("second half / first half", f"{steady:.2f}", f"{seed['bulk']['second_vs_first']:.2f}" if seed else "", "",
        f"≥ 0.9: {verdict(steady >= 0.9)}")
    if seed:
        row("first delivery, idle queue (answer → SMTP, median of 5)",
            f"{ours['first_delivery_idle_ms']['median']:.0f} ms", f"{seed['first_delivery_idle_ms']['median']:.0f} ms")
        row("first delivery after releasing the backlog", f"{o_b['release_to_first_s']:.2f} s",
            f"{seed['bulk']['release_to_first_s']:.2f} s")
        cpus = results["machine"]["cpus"]
        row("other processes on the machine during delivery", f"{o_b['other_processes_cores']:.1f} of {cpus} cores",
            f"{s_b['other_processes_cores']:.1f} of {cpus} cores")
        row("by half of the delivery: other processes; product CPU per message", halves_text(o_b), halves_text(s_b))
        row("SMTP sink thread during delivery", f"{100 * o_b['sink_cpu_share_of_one_core']:.0f} % of one core",
            f"{100 * s_b['sink_cpu_share_of_one_core']:.0f} % of one core")
        row("peak RSS, sum over the process tree", f"{ours['memory']['peak_rss_mb']:.0f} MB "
            f"({ours['memory']['peak_processes']} processes)", f"{seed['memory']['peak_rss_mb']:.0f} MB "
            f"({seed['memory']['peak_processes']} process)")
        row("peak PSS (shared pages counted once)", f"{ours['memory']['peak_pss_mb']:.0f} MB",
            f"{seed['memory']['peak_pss_mb']:.0f} MB")
    claims = results.get("claims")
    if claims:
        for layout, data in claims["layouts"].items():
            small, big = data["stages"][0], data["stages"][-1]
            ok = data["claim_ratio"] < 2
            targets[f"claim cost, {layout}: ratio < 2"] = ok
            row(f"claim_due, {layout}: {small['background_rows']:,} → {big['background_rows']:,} rows",
                f"{small['claim']['median_ms']:.1f} → {big['claim']['median_ms']:.1f} ms "
                f"({plan_scans(small)} → {plan_scans(big)})", "",
                f"{data['claim_ratio']:.2f}x time, {data['claim_rows_read_ratio']:.1f}x rows read",
                f"< 2: {verdict(ok)}")
            row(f"beat sweep, {layout}: {small['background_rows']:,} → {big['background_rows']:,} rows",
                f"due_accounts {small['sweep_due_accounts']['median_ms']:.1f} → "
                f"{big['sweep_due_accounts']['median_ms']:.1f} ms; expire_overdue "
                f"{small['sweep_expire_overdue']['median_ms']:.1f} → "
                f"{big['sweep_expire_overdue']['median_ms']:.1f} ms; "
                f"reclaim {small['sweep_reclaim_leases']['median_ms']:.1f} → "
                f"{big['sweep_reclaim_leases']['median_ms']:.1f} ms", "", f"{data['sweep_ratio']:.1f}x")
    loads = [p["loadavg_1min_start"] for p in results["machine"]["phases"]]
    busy = [p["machine_cpu_busy_percent"] for p in results["machine"]["phases"]]
    lines += ["", f"Machine: {results['machine']['cpus']} CPUs; 1-minute load average {min(loads):.1f}-{max(loads):.1f}"
              f" over the phases, CPU busy {min(busy):.0f}-{max(busy):.0f} % (whole machine, all processes); bare "
              f"loop {', '.join(f'{b:,.0f}' for b in results['bare_rates'])} msg/s (median {bare:,.0f})."]
    return lines, targets


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=5000, help="messages of this product's bulk run (default 5000)")
    parser.add_argument("--seed-n", type=int, help="messages of the seed's bulk run (default: -n)")
    parser.add_argument("--single", type=int, default=300, help="single-message requests (default 300)")
    parser.add_argument("--batch-size", type=int, default=1000, help="messages per batch request (default 1000)")
    parser.add_argument("--batches", type=int, default=3, help="batch requests timed, this product (default 3)")
    parser.add_argument("--seed-batches", type=int, default=1, help="batch requests timed, the seed (default 1)")
    parser.add_argument("--bare", type=int, default=2000, help="messages per bare smtplib loop (default 2000)")
    parser.add_argument("--timeout", type=float, default=180, help="seconds allowed for this product's delivery")
    parser.add_argument("--seed-timeout", type=float, default=360, help="seconds allowed for the seed's delivery")
    parser.add_argument("--claim-rows", default="10000,1000000", help="background rows (default 10000,1000000)")
    parser.add_argument("--claim-layouts", default="same_account_due,other_account_due,same_account_future",
                        help="background layouts of the claim measurement (see bench/compare_claim.py)")
    parser.add_argument("--claim-due", type=int, default=1000, help="due messages of the claiming account")
    parser.add_argument("--claim-repeats", type=int, default=15, help="claims timed per stage (default 15)")
    parser.add_argument("--concurrency", type=int, default=4,
                        help="pool processes of each of this product's 2 Celery workers (default 4, as "
                             "docker-compose.yml runs them)")
    parser.add_argument("--skip-seed", action="store_true", help="this product only")
    parser.add_argument("--skip-claims", action="store_true", help="no claim measurement")
    parser.add_argument("--database", default="mp_bench_compare", help="PostgreSQL database to create and drop")
    parser.add_argument("--redis-db", type=int, default=14, help="Redis db number to use and flush (default 14)")
    parser.add_argument("--keep", action="store_true", help="keep the database, the logs and the seed's files")
    parser.add_argument("--json", type=Path, default=RESULTS,
                        help=f"results file (default {RESULTS.relative_to(ROOT)})")
    args = parser.parse_args()
    args.seed_n = args.seed_n or args.n
    if min(args.n, args.seed_n) < 4 or args.single < 2 or args.batch_size < 1:
        parser.error("-n and --seed-n must be at least 4, --single at least 2")

    # One run at a time: a second one would drop the database under the first.
    lock = (Path(tempfile.gettempdir()) / f"mailproxy-compare-{args.database}.lock").open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        parser.error(f"another bench/compare.py run uses the database {args.database}")
    # SIGTERM (and SIGINT, which a background shell ignores) end the run through its cleanup.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)

    server_url = os.environ.get("DATABASE_URL", DEFAULT_SERVER + "/x").rsplit("/", 1)[0]
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0").rsplit("/", 1)[0] + f"/{args.redis_db}"
    work = Path(tempfile.mkdtemp(prefix="mailproxy-compare-"))
    load, sampler = MachineLoad(), TreeSampler()
    sink = SmtpSink().start()
    sampler.start()
    ours = ThisProduct(work, server_url=server_url, database=args.database, redis_url=redis_url,
                       concurrency=args.concurrency)
    seed = SeedProduct(work, venv=SEED_VENV)
    results: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"), "arguments": vars(args) | {"json": str(args.json)},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release(),
                    "loadavg_at_start": os.getloadavg()},
        "products": {}, "bare": [],
    }
    began = time.monotonic()
    results["code_fingerprint_start"] = code_fingerprint()
    failed = False
    try:
        if not args.skip_seed:
            ensure_seed_venv(SEED_VENV)  # before any timing: the first run installs it
        results["bare"].append(run_bare(sink.port, args.bare, sink, load, "before"))
        products: list[Product] = [ours] if args.skip_seed else [ours, seed]
        found = results["products"]
        for product in products:
            found[product.key] = start_product(product, sink, sampler, load)
        enqueue_phase(products, args, load, {ours.key: args.batches, seed.key: args.seed_batches}, found)
        first_delivery_phase(products, sink, load, found)
        # One bulk run at a time: each takes the whole machine. The seed idles meanwhile (its CPU is recorded).
        found[ours.key]["bulk"] = bulk_phase(ours, args, sink, sampler, load, n=args.n, timeout=args.timeout,
                                             idle=products[1:])
        found[ours.key]["memory"] = memory(ours, sampler)
        ours.stop()
        sampler.forget(ours.key)
        if not args.skip_seed:
            results["bare"].append(run_bare(sink.port, args.bare, sink, load, "between"))
            found[seed.key]["bulk"] = bulk_phase(seed, args, sink, sampler, load, n=args.seed_n,
                                                 timeout=args.seed_timeout, idle=[])
            found[seed.key]["memory"] = memory(seed, sampler)
            seed.stop()
            sampler.forget(seed.key)
        results["bare"].append(run_bare(sink.port, args.bare, sink, load, "after"))
        if not args.skip_claims:
            results["claims"] = run_claims(ours, args, load)
    except (BenchError, subprocess.CalledProcessError, requests.RequestException, OSError, AssertionError) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        print(ours.logs() + "\n" + seed.logs(), file=sys.stderr)
        failed = True
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        failed = True
    finally:
        ours.stop()
        seed.stop()
        sampler.stop()
        sink.stop()
        if args.keep:
            print(f"kept the database {args.database} and the logs in {work}")
        else:
            ours.recreate_database(drop_only=True)
            ours.flush_redis()
            shutil.rmtree(work, ignore_errors=True)
    if failed or "mail-proxy" not in results["products"]:
        return 1
    results["bare_rates"] = [b["rate"] for b in results["bare"]]
    results["bare_rate"] = statistics.median(results["bare_rates"])
    results["machine"]["phases"] = [p.as_dict() for p in load.phases]
    results["machine"]["loadavg_at_end"] = os.getloadavg()
    results["seconds"] = time.monotonic() - began
    results["code_fingerprint_end"] = code_fingerprint()
    results["code_changed_during_run"] = results["code_fingerprint_start"] != results["code_fingerprint_end"]
    lines, targets = report(results)
    results["table"] = lines
    results["targets"] = targets
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print()
    print("\n".join(lines))
    print()
    for name, ok in targets.items():
        print(f"{'met   ' if ok else 'MISSED'}  {name}")
    print(f"\nwhole run {results['seconds']:.0f} s; product code {results['code_fingerprint_start']}; results in "
          f"{args.json}")
    if results["code_changed_during_run"]:
        print("WARNING: the product's code changed during the run; the numbers mix two versions", file=sys.stderr)
    lost = [key for key, data in results["products"].items()
            if data["bulk"]["distinct"] < data["bulk"]["messages"] and data["bulk"]["complete"]]
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
