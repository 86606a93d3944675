"""/ready against real parts: the database, a private Redis server, the broker, the beat heartbeat.

The shared Redis of the test runs is never stopped: a test that needs Redis to go away
starts its own `redis-server` on a free loopback port and stops that one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from django.test import override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from mailproxy import health, metrics
from mailproxy.logs import JsonFormatter
from mailproxy.models import Heartbeat
from tests.e2e.harness import free_port

# The checks run in threads of their own, which see only committed rows.
pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class PrivateRedis:
    process: subprocess.Popen[bytes]
    port: int

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A Redis server of this test alone, on a free loopback port."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (DEVELOPERS.md lists the packages)")
    port = free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--daemonize", "no", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port, socket_timeout=1)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                server.kill()
                pytest.fail("the private redis-server did not start")
            time.sleep(0.05)
    try:
        yield PrivateRedis(process=server, port=port)
    finally:
        server.terminate()
        server.wait(timeout=10)


def on_redis(port: int, password: str = "") -> override_settings:
    url = f"redis://{f':{password}@' if password else ''}127.0.0.1:{port}/0"
    return override_settings(GMP_RATE_LIMITER="redis", REDIS_URL=url, CELERY_BROKER_URL=url,
                             CELERY_BROKER_TRANSPORT_OPTIONS={})


def ready(client: APIClient) -> tuple[int, dict[str, object], float]:
    started = time.monotonic()
    response = client.get("/ready")
    return response.status_code, response.json(), time.monotonic() - started


def test_ready_with_everything_up(api_client: APIClient) -> None:
    health.record_beat()
    status, body, _ = ready(api_client)
    assert status == 200, body
    checks = body["checks"]
    assert body["ok"] is True
    assert checks == dict.fromkeys(checks, "ok")
    assert {"database", "broker", "beat"} <= set(checks)
    assert ("redis" in checks) == health.redis_configured()


def test_no_heartbeat_means_beat_is_not_running(api_client: APIClient) -> None:
    status, body, _ = ready(api_client)
    assert status == 503
    assert body == {"ok": False, "error": "not ready: beat", "details": {"beat": "no heartbeat from beat yet"}}


@override_settings(GMP_RATE_LIMITER="sql", GMP_SEND_INTERVAL_SECONDS=1.0)
def test_stale_heartbeat_means_beat_stopped(api_client: APIClient) -> None:
    Heartbeat.objects.create(name="beat", at=timezone.now() - timedelta(seconds=16))  # the window: 15 s
    status, body, _ = ready(api_client)
    assert status == 503
    assert body["error"] == "not ready: beat"
    assert body["details"]["beat"].startswith("last heartbeat 16 s ago")
    Heartbeat.objects.filter(name="beat").update(at=timezone.now() - timedelta(seconds=10))
    assert ready(api_client)[0] == 200


def test_heartbeat_window_follows_the_sweep_interval() -> None:
    with override_settings(GMP_SEND_INTERVAL_SECONDS=1.0):
        assert health.beat_window() == 15  # a floor: a busy fleet is not flagged
    with override_settings(GMP_SEND_INTERVAL_SECONDS=20.0):
        assert health.beat_window() == 60


def test_redis_stopped_is_named_and_answered_quickly(
    api_client: APIClient, private_redis: PrivateRedis
) -> None:
    with on_redis(private_redis.port):
        health.record_beat()
        assert redis.Redis(port=private_redis.port).get("gmp:heartbeat:beat")
        status, body, _ = ready(api_client)
        assert status == 200, body
        assert set(body["checks"]) == {"database", "redis", "broker", "beat"}

        private_redis.stop()
        status, body, elapsed = ready(api_client)
    assert status == 503
    assert body["error"] == "not ready: redis, broker, beat"  # the heartbeat lives in Redis too
    assert "database" not in body["details"]
    assert elapsed < 3
    for reason in body["details"].values():
        assert "onnect" in reason, body  # a short reason: "ConnectionError: Error 111 connecting ..."


def test_redis_that_does_not_answer_times_out(api_client: APIClient) -> None:
    # Connections are taken (the kernel completes them) but nothing is ever read or answered.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        with on_redis(silent.getsockname()[1]):
            status, body, elapsed = ready(api_client)
    assert status == 503
    assert {"redis", "broker"} <= set(body["details"])
    assert elapsed < 3


def test_reasons_never_carry_the_redis_password(api_client: APIClient) -> None:
    with on_redis(free_port(), password="s3cret-pw"):
        status, body, _ = ready(api_client)
    assert status == 503
    assert "s3cret-pw" not in json.dumps(body)
    assert metrics.short_reason(ValueError("redis://user:s3cret-pw@host:6379/0 refused")) == (
        "ValueError: redis://***@host:6379/0 refused")


def test_filesystem_broker_folder_must_exist(api_client: APIClient, tmp_path: Path) -> None:
    missing = {"data_folder_in": str(tmp_path / "gone"), "data_folder_out": str(tmp_path / "gone")}
    with override_settings(GMP_RATE_LIMITER="sql", CELERY_BROKER_URL="filesystem://",
                           CELERY_BROKER_TRANSPORT_OPTIONS=missing):
        health.record_beat()
        status, body, _ = ready(api_client)
    assert status == 503
    assert body["details"] == {"broker": "the broker folder does not exist"}


def test_json_log_lines_carry_the_extra_fields() -> None:
    formatter = JsonFormatter()
    record = logging.LogRecord("delivery.services", logging.WARNING, __file__, 1, "batch done account=%s", ("main",),
                               None)
    record.tenant_id = "acme"
    record.sent = 3
    line = json.loads(formatter.format(record))
    assert line["level"] == "WARNING"
    assert line["logger"] == "delivery.services"
    assert line["message"] == "batch done account=main"
    assert (line["tenant_id"], line["sent"]) == ("acme", 3)
    assert line["ts"].endswith("+00:00")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        failed = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    assert "RuntimeError: boom" in json.loads(formatter.format(failed))["exc_info"]


def test_gmp_log_json_switches_the_console_to_json(tmp_path: Path) -> None:
    program = ("import logging, django; django.setup(); "
               "logging.getLogger('delivery.services').info('sent message=%s', 7, extra={'tenant_id': 'acme'})")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "mailproxy.settings", "GMP_DATA_DIR": str(tmp_path),
           "DATABASE_URL": "", "GMP_LOG_JSON": "true"}
    result = subprocess.run([sys.executable, "-c", program], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60, check=True)
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert {"level": "INFO", "logger": "delivery.services", "message": "sent message=7", "tenant_id": "acme"}.items() \
        <= lines[-1].items()
