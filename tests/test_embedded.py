"""The README's first command, for real: `make run` on the embedded defaults (SQLite, no services)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.smtp_sink import SmtpSink

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def running_instance(tmp_path: Path) -> Iterator[tuple[str, str]]:
    port = _free_port()
    log = tmp_path / "run.log"
    # Nothing of the test settings leaks in: the instance starts from an empty environment.
    environment = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "GMP_DATA_DIR": str(tmp_path / "data")}
    with log.open("w") as output:
        process = subprocess.Popen(
            ["make", "--no-print-directory", "run", f"PORT={port}"], cwd=ROOT, env=environment,
            stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except requests.RequestException:  # not listening yet, or still loading
                time.sleep(0.2)
            assert process.poll() is None, log.read_text()
        else:
            pytest.fail(f"make run did not answer /health in time:\n{log.read_text()}")
        printed = log.read_text()
        match = re.search(r"admin token \([^)]*\): (\S+)", printed)
        assert match, printed
        assert url in printed
        yield url, match.group(1)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)


def test_make_run_serves_and_sends_on_sqlite_with_nothing_installed(
    running_instance: tuple[str, str], tmp_path: Path
) -> None:
    url, token = running_instance
    headers = {"X-API-Token": token}
    assert requests.get(f"{url}/health", timeout=5).json() == {"ok": True}
    assert requests.get(f"{url}/messages", timeout=5).status_code == 401
    with SmtpSink() as sink:
        account = requests.post(f"{url}/account", headers=headers, timeout=5, json={
            "id": "main", "host": sink.host, "port": sink.port, "security": "none", "limit_per_minute": 100})
        assert account.status_code == 200, account.text
        sent = requests.post(f"{url}/commands/add-messages", headers=headers, timeout=5, json={"messages": [
            {"id": "hello-1", "from": "me@example.com", "to": "you@example.com", "subject": "Hi", "body": "First",
             "priority": "immediate"},
            {"id": "hello-2", "from": "me@example.com", "to": "them@example.com", "subject": "Later", "body": "2"},
        ]})
        assert sent.json() == {"ok": True, "queued": 2, "rejected": []}
        # the doorbell and the embedded beat, over the filesystem broker and the SQL limiter
        received = sink.wait_for(2, timeout=30)
    assert sorted(r.rcpt_tos[0] for r in received) == ["them@example.com", "you@example.com"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        listed = requests.get(f"{url}/messages", headers=headers, timeout=5).json()["messages"]
        if all(m["status"] == "sent" for m in listed):
            break
        time.sleep(0.2)
    assert [(m["id"], m["status"], m["tenant_id"]) for m in listed] == [
        ("hello-2", "sent", "default"), ("hello-1", "sent", "default")]
    assert (tmp_path / "data" / "mail_service.db").exists()
    docs = requests.get(f"{url}/docs", timeout=5)
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()
