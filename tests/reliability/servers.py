"""A private PostgreSQL cluster and a private Redis, for the outage scenarios.

The shared servers on 5432 and 6379 serve other test runs at the same time: they are
never stopped, paused or flushed. These run on free ports in temporary folders and are
started, stopped, restarted, paused and flushed at will.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import redis

from tests.e2e.harness import ROOT, free_port

SHARED_REDIS_PORT = 6379
SHARED_POSTGRES_PORT = 5432


def _postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if not found:
        raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
    return Path(found[-1]).parent


class PrivatePostgres:
    """One cluster in a temporary folder, trust auth, on 127.0.0.1 and a free port."""

    def __init__(self) -> None:
        self.bin = _postgres_bin()
        self.port = free_port()
        assert self.port != SHARED_POSTGRES_PORT
        self.root = Path(tempfile.mkdtemp(prefix="mp-reliability-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        # initdb refuses to run as root: the cluster belongs to the postgres user.
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.root, "postgres", "postgres")

    def _run(self, *argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*self.as_user, *argv], capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({result.returncode}): {result.stdout}{result.stderr}\n"
                               f"{self.log.read_text() if self.log.exists() else ''}")
        return result

    def _ctl(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), *argv, check=check)

    def init(self) -> PrivatePostgres:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--no-sync")
        self.start()
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE mailproxy")
        return self

    def start(self) -> None:
        # fsync off: the scenarios crash the server process, never the machine, and the
        # written WAL survives a process crash in the page cache; it spares the shared disk.
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._ctl("-l", str(self.log), "-o", options, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-m", mode, "-w", "-t", "60", "stop", check=False)

    def restart(self, mode: str = "immediate") -> None:
        self.stop(mode)
        self.start()

    def dsn(self, database: str = "mailproxy") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


class PrivateRedis:
    """redis-server on a free port, no persistence: a restart loses everything, as in the scenario."""

    def __init__(self) -> None:
        self.port = free_port()
        assert self.port != SHARED_REDIS_PORT
        self.root = Path(tempfile.mkdtemp(prefix="mp-reliability-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> PrivateRedis:
        log = (self.root / "redis.log").open("ab")
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.root)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                if self.client().ping():
                    return self
            time.sleep(0.1)
        raise RuntimeError("private redis did not start")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()  # our own redis-server, by its pid
            process.wait(timeout=20)

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, socket_connect_timeout=2)

    def flushall(self) -> None:
        assert self.port != SHARED_REDIS_PORT  # never the shared one
        self.client().flushall()

    def pause(self, milliseconds: int) -> None:
        assert self.port != SHARED_REDIS_PORT
        self.client().client_pause(milliseconds)

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def migrate(database_url: str, redis_url: str) -> None:
    """Create the product's tables in a private database (its own migrations, in a subprocess)."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "DATABASE_URL": database_url,
           "REDIS_URL": redis_url}
    result = subprocess.run([sys.executable, "-m", "django", "migrate", "--noinput"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"migrate failed: {result.stdout[-2000:]}{result.stderr[-2000:]}")
