"""Metrics and readiness across real processes: workers send, the web process reports.

The web process sends nothing itself, so every count it shows was recorded by a worker
process: the proof that /metrics is the fleet's, not one process's.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
import requests
from django.conf import settings
from prometheus_client.parser import text_string_to_metric_families

from queueing.models import Message, Status
from tenants.models import Tenant
from tenants.services import create_api_key
from tests.e2e.harness import Stack
from tests.factories import SmtpAccountFactory
from tests.smtp_sink import SmtpSink

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

ADMIN = {"X-API-Token": settings.GMP_API_TOKEN}


def sent_total(url: str, tenant_id: str, account_id: str) -> float:
    text = requests.get(f"{url}/metrics", headers=ADMIN, timeout=5).text
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "gmp_sent_total"
               and sample.labels == {"tenant_id": tenant_id, "account_id": account_id})


def ready(url: str) -> tuple[int, dict[str, Any]]:
    response = requests.get(f"{url}/ready", timeout=5)
    return response.status_code, response.json()


def sends_in_log(log: str) -> int:
    return sum(int(n) for n in re.findall(r"batch done account=main tenant=fleet claimed=\d+ sent=(\d+)", log))


def test_sends_of_two_workers_show_on_the_web_process_metrics(stack: Stack, sink: SmtpSink) -> None:
    tenant = Tenant.objects.create(id="fleet")
    # Small batches: a full batch rings the next one at once, so both workers get some.
    SmtpAccountFactory(tenant=tenant, external_id="main", host=sink.host, port=sink.port, user="",
                       password_encrypted="", security="none", timeout=2, batch_size=10)
    key = create_api_key(tenant=tenant).raw
    sink.hang("data", 0.01)
    url = stack.start_web()
    workers = [stack.start_worker("w1"), stack.start_worker("w2")]
    stack.start_beat()
    total = 120
    messages = [{"id": f"m{i}", "from": "app@example.com", "to": f"m{i}@example.com", "subject": "s", "body": "x"}
                for i in range(total)]
    answer = requests.post(f"{url}/commands/add-messages", json={"messages": messages},
                           headers={"X-API-Token": key}, timeout=30).json()
    assert answer["queued"] == total, answer

    stack.wait(lambda: Message.objects.filter(status=Status.SENT).count() == total, "all sent", timeout=60)
    # A batch writes its counts when it ends: moments after its last outcome.
    stack.wait(lambda: sent_total(url, "fleet", "main") == total, f"gmp_sent_total == {total}", timeout=10)
    per_worker = [sends_in_log(worker.log.read_text(errors="replace")) for worker in workers]
    print(f"sent per worker {per_worker}")
    assert sum(per_worker) == total
    assert all(per_worker), "both workers sent, and the web process shows the sum"


def test_ready_follows_beat(stack: Stack) -> None:
    url = stack.start_web()
    stack.start_worker("w1")
    status, body = ready(url)
    assert status == 503
    assert body["error"] == "not ready: beat"  # database, Redis and broker are up
    assert set(body["details"]) == {"beat"}

    beat = stack.start_beat()
    stack.wait(lambda: ready(url)[0] == 200, "ready once beat runs", timeout=30)
    status, body = ready(url)
    assert body == {"ok": True, "checks": {"database": "ok", "redis": "ok", "broker": "ok", "beat": "ok"}}

    stack.stop(beat)
    stack.processes.remove(beat)
    stopped = time.monotonic()
    # GMP_SEND_INTERVAL_SECONDS is 0.5 in the stack: the 15 s floor of the window applies.
    stack.wait(lambda: ready(url)[0] == 503, "not ready once beat stopped", timeout=30)
    assert time.monotonic() - stopped >= 5  # not at the first missed beat
    status, body = ready(url)
    assert set(body["details"]) == {"beat"}
    assert body["details"]["beat"].startswith("last heartbeat")
