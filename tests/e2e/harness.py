"""Real processes for end-to-end tests: a web server, Celery workers and beat.

They run the product's own entry points (gunicorn, `celery -A mailproxy worker|beat`)
against the test database, the Redis of the test run and an SMTP server of the test.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.name} ---\n" + "\n".join(text.splitlines()[-lines:])

    def children(self) -> list[int]:
        result = subprocess.run(["pgrep", "-P", str(self.popen.pid)], capture_output=True, text=True, check=False)
        return [int(pid) for pid in result.stdout.split()]


@dataclass
class Stack:
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    processes: list[Process] = field(default_factory=list)
    web_url: str = ""

    @classmethod
    def for_test(cls, workdir: Path, **overrides: Any) -> Stack:
        db = connection.settings_dict
        host, port = db["HOST"] or "127.0.0.1", db["PORT"] or 5432
        database_url = f"postgresql://{db['USER'] or 'postgres'}@{host}:{port}/{db['NAME']}"
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DATABASE_URL": database_url,
            "REDIS_URL": settings.REDIS_URL,
            "GMP_DATA_DIR": str(workdir / "data"),
            "GMP_SEND_INTERVAL_SECONDS": "0.5",
            "GMP_RING_SECONDS": "2",
            "GMP_RETRY_DELAYS": "1",
            "GMP_BATCH_SECONDS": "3",
            "GMP_BACKOFF_MIN_SECONDS": "1",
            "GMP_BACKOFF_MAX_SECONDS": "3",
            "GMP_REPORT_TIMEOUT": "2",
            "GMP_SYNC_MIN_INTERVAL": "1",
            "PYTHONUNBUFFERED": "1",
        }
        env.update({key: str(value) for key, value in overrides.items()})
        return cls(workdir=workdir, env=env)

    def _spawn(self, name: str, argv: list[str]) -> Process:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as output:
            popen = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=output, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        process = Process(name=name, popen=popen, log=log)
        self.processes.append(process)
        return process

    def start_web(self) -> str:
        port = free_port()
        self._spawn("web", [sys.executable, "-m", "gunicorn", "mailproxy.wsgi:application", "--bind",
                            f"127.0.0.1:{port}", "--workers", "1", "--threads", "4"])
        self.web_url = f"http://127.0.0.1:{port}"
        self.wait(lambda: requests.get(f"{self.web_url}/health", timeout=1).status_code == 200, "web /health")
        return self.web_url

    def start_worker(self, name: str, concurrency: int = 1, *, ready: bool = True) -> Process:
        process = self._spawn(name, [sys.executable, "-m", "celery", "-A", "mailproxy", "worker", "-l", "INFO",
                                     "-c", str(concurrency), "-n", f"{name}@%h", "--without-gossip",
                                     "--without-mingle", "--without-heartbeat"])
        if ready:
            # Until its pool is up a worker takes no task, and a child killed during start-up
            # takes the whole worker down (Celery gives up): tests start from a ready fleet.
            self.wait(lambda: " ready." in process.log.read_text(errors="replace"), f"{name} ready", timeout=60)
        return process

    def start_beat(self, name: str = "beat") -> Process:
        return self._spawn(name, [sys.executable, "-m", "celery", "-A", "mailproxy", "beat", "-l", "INFO",
                                  "-s", str(self.workdir / f"{name}-schedule")])

    def wait(self, condition: Any, what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if condition():
                    return
            except (requests.ConnectionError, requests.Timeout):
                pass
            for process in self.processes:
                if process.popen.poll() is not None:
                    raise AssertionError(f"{process.name} exited\n{process.tail()}")
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}\n" + "\n".join(p.tail() for p in self.processes))

    def stop(self, process: Process, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        if process.popen.poll() is None:
            os.killpg(process.popen.pid, sig)
            try:
                process.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.popen.pid, signal.SIGKILL)
                process.popen.wait(timeout=10)

    def kill(self, process: Process) -> None:
        """SIGKILL a process group (a crash): it is no longer watched by `wait`."""
        self.stop(process, sig=signal.SIGKILL)
        self.processes.remove(process)

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            self.stop(process)

    def logs(self) -> str:
        return "\n".join(process.tail() for process in self.processes)
