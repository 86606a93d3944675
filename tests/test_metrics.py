"""/metrics: the fleet's counters recorded through the real send, report and bounce paths.

Each test runs on the SQL store, and on the Redis store too when the run has Redis (the
PostgreSQL run). The end-to-end proof that one worker's sends show on another process's
/metrics is tests/e2e/test_metrics_fleet.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import suppress
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.db import transaction
from django.test import override_settings
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.test import APIClient

from bounces import services as bounces
from delivery import reports, services, smtp
from mailproxy import metrics
from queueing.models import EventType, Message, MessageEvent, Status
from queueing.services import enqueue_messages
from tenants.models import SmtpAccount, Tenant
from tests.bounces.test_bounce_flow import dsn_for
from tests.conftest import message
from tests.e2e.harness import free_port
from tests.factories import SmtpAccountFactory
from tests.smtp_sink import SmtpSink
from tests.tenant_app import Answer, TenantApp

pytestmark = pytest.mark.django_db

REDIS_RUN = settings.GMP_RATE_LIMITER == "redis"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


# The SQLite run has no Redis: the PostgreSQL run covers the Redis store.
@pytest.fixture(params=["sql", "redis"] if REDIS_RUN else ["sql"])
def store(request: pytest.FixtureRequest) -> Iterator[str]:
    """The metrics store (and, with it, the rate limiter) of the test."""
    with override_settings(GMP_RATE_LIMITER=request.param):
        yield request.param


@pytest.fixture(autouse=True)
def _fresh_pool() -> Iterator[None]:
    smtp.pool.close_all()
    yield
    smtp.pool.close_all()


def scrape(client: APIClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200, response.content
    return parse(response.content.decode())


def parse(text: str) -> Samples:
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def enqueue(tenant: Tenant, *payloads: dict[str, Any]) -> None:
    result = enqueue_messages(scope=tenant, payloads=list(payloads))
    assert not result.rejected, result.rejected


Capture = Callable[..., Any]


def send(account: SmtpAccount, capture: Capture) -> services.SendSummary:
    # The counts are written once the outcomes commit; the test's transaction never does.
    with capture(execute=True):
        return services.send_due(account_pk=account.pk)


def test_sends_are_counted_per_tenant_and_account(
    store: str, tenant: Tenant, other_tenant: Tenant, smtp_account: SmtpAccount, smtp_server: SmtpSink,
    admin_client: APIClient, django_capture_on_commit_callbacks: Capture,
) -> None:
    other_account = SmtpAccountFactory(tenant=other_tenant, external_id="bulk", host=smtp_server.host,
                                       port=smtp_server.port, user="", password_encrypted="", security="none")
    smtp_server.on_rcpt("bad@example.com", 550, "5.1.1 unknown")
    smtp_server.on_rcpt("later@example.com", 451, "4.3.0 busy")
    enqueue(tenant, message(id="a", to="a@example.com"), message(id="b", to="b@example.com"),
            message(id="bad", to="bad@example.com"), message(id="later", to="later@example.com"))
    enqueue(other_tenant, message(id="x", to="x@example.com"))
    send(smtp_account, django_capture_on_commit_callbacks)
    send(other_account, django_capture_on_commit_callbacks)

    samples = scrape(admin_client)
    acme = {"tenant_id": "acme", "account_id": "main"}
    assert value(samples, "gmp_sent_total", **acme) == 2
    assert value(samples, "gmp_errors_total", **acme) == 1
    assert value(samples, "gmp_deferred_total", **acme) == 1
    assert value(samples, "gmp_sent_total", tenant_id="globex", account_id="bulk") == 1
    assert value(samples, "gmp_errors_total", tenant_id="globex", account_id="bulk") == 0
    assert value(samples, "gmp_smtp_seconds_count") == 5  # one SMTP transaction per message
    assert value(samples, "gmp_smtp_seconds_bucket", le="+Inf") == 5
    assert value(samples, "gmp_smtp_seconds_sum") > 0
    assert value(samples, "gmp_queue_seconds_count") == 3  # the messages that reached `sent`
    assert value(samples, "gmp_rate_limited_total", **acme) == 0


# Autocommit, as in a worker: a sample counts at once, outside any transaction.
@pytest.mark.django_db(transaction=True)
def test_histogram_buckets_are_cumulative(store: str, admin_client: APIClient) -> None:
    for seconds in (0.003, 0.2, 0.2, 7.0, 500.0):
        metrics.observe("smtp_seconds", seconds)
    samples = scrape(admin_client)
    assert value(samples, "gmp_smtp_seconds_bucket", le="0.005") == 1
    assert value(samples, "gmp_smtp_seconds_bucket", le="0.25") == 3
    assert value(samples, "gmp_smtp_seconds_bucket", le="10.0") == 4
    assert value(samples, "gmp_smtp_seconds_bucket", le="60.0") == 4
    assert value(samples, "gmp_smtp_seconds_bucket", le="+Inf") == 5
    assert value(samples, "gmp_smtp_seconds_sum") == pytest.approx(507.403)


def test_rate_limit_hit_is_counted(
    store: str, tenant: Tenant, smtp_server: SmtpSink, admin_client: APIClient,
    django_capture_on_commit_callbacks: Capture,
) -> None:
    account = SmtpAccountFactory(tenant=tenant, external_id="limited", host=smtp_server.host, port=smtp_server.port,
                                 user="", password_encrypted="", security="none", limit_per_minute=1)
    enqueue(tenant, message(id="first", account_id="limited"), message(id="second", account_id="limited"))
    summary = send(account, django_capture_on_commit_callbacks)
    assert (summary.sent, summary.released) == (1, 1)
    samples = scrape(admin_client)
    series = {"tenant_id": "acme", "account_id": "limited"}
    assert value(samples, "gmp_sent_total", **series) == 1
    assert value(samples, "gmp_rate_limited_total", **series) == 1
    assert value(samples, "gmp_deferred_total", **series) == 0  # given back, no attempt used


def test_rolled_back_outcome_is_not_counted(
    store: str, admin_client: APIClient, django_capture_on_commit_callbacks: Capture,
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        with suppress(RuntimeError), transaction.atomic():
            metrics.inc("sent", tenant_id="acme", account_id="main")
            raise RuntimeError("the outcome's transaction fails")
        metrics.inc("errors", tenant_id="acme", account_id="main")
    samples = scrape(admin_client)
    assert value(samples, "gmp_sent_total", tenant_id="acme", account_id="main") == 0
    assert value(samples, "gmp_errors_total", tenant_id="acme", account_id="main") == 1


# Autocommit, as in a worker: a sample counts at once, outside any transaction.
@pytest.mark.django_db(transaction=True)
def test_batch_writes_its_counts_when_it_ends(store: str, admin_client: APIClient) -> None:
    with metrics.batch():
        for _ in range(3):
            metrics.inc("sent", tenant_id="acme", account_id="main")
        metrics.flush()  # what came before is written...
        metrics.inc("sent", tenant_id="acme", account_id="main")
        assert value(scrape(admin_client), "gmp_sent_total", tenant_id="acme", account_id="main") == 3
    # ...and the rest when the batch ends
    assert value(scrape(admin_client), "gmp_sent_total", tenant_id="acme", account_id="main") == 4


# Autocommit, as in a worker: a sample counts at once, outside any transaction.
@pytest.mark.django_db(transaction=True)
def test_counts_survive_a_batch_that_ends_in_an_exception(store: str, admin_client: APIClient) -> None:
    with suppress(RuntimeError), metrics.batch():
        metrics.inc("deferred", tenant_id="acme", account_id="main")
        raise RuntimeError("the task failed")
    assert value(scrape(admin_client), "gmp_deferred_total", tenant_id="acme", account_id="main") == 1


def test_unreachable_redis_store_never_fails_a_send(
    tenant: Tenant, smtp_account: SmtpAccount, smtp_server: SmtpSink, caplog: pytest.LogCaptureFixture,
    django_capture_on_commit_callbacks: Capture,
) -> None:
    enqueue(tenant, message(id="one"), message(id="two"))
    dead = f"redis://127.0.0.1:{free_port()}/0"
    with override_settings(GMP_RATE_LIMITER="redis", REDIS_URL=dead), caplog.at_level(logging.WARNING):
        summary = send(smtp_account, django_capture_on_commit_callbacks)
    assert summary.sent == 2
    assert Message.objects.filter(status=Status.SENT).count() == 2
    warnings = [r.getMessage() for r in caplog.records if "metrics store (redis) unreachable" in r.getMessage()]
    assert len(warnings) == 1, warnings  # logged once, not once per sample


def test_bounces_are_counted_by_type(
    store: str, tenant: Tenant, smtp_account: SmtpAccount, smtp_server: SmtpSink, admin_client: APIClient,
    django_capture_on_commit_callbacks: Capture,
) -> None:
    enqueue(tenant, message(id="m", to=["gone@example.com", "full@example.com", "slow@example.com"]))
    send(smtp_account, django_capture_on_commit_callbacks)
    data = smtp_server.wait_for(1)[0].data
    with django_capture_on_commit_callbacks(execute=True):
        assert bounces.record_bounce(dsn_for(data, "gone@example.com", "5.1.1", "550 user unknown")) == 1
        assert bounces.record_bounce(dsn_for(data, "gone@example.com", "5.1.1", "550 user unknown")) == 0
        bounces.record_bounce(dsn_for(data, "full@example.com", "5.2.2", "552 mailbox full"))
        bounces.record_bounce(dsn_for(data, "slow@example.com", "4.4.7", "still trying", action="delayed"))
    samples = scrape(admin_client)
    series = {"tenant_id": "acme", "account_id": "main"}
    assert value(samples, "gmp_bounces_total", **series, type="hard") == 1  # the second read is the same bounce
    assert value(samples, "gmp_bounces_total", **series, type="soft") == 1
    assert value(samples, "gmp_bounces_total", **series, type="delayed") == 0  # a delay is no bounce


def test_acknowledged_reports_give_their_lag(
    store: str, tenant: Tenant, smtp_account: SmtpAccount, smtp_server: SmtpSink, tenant_app: TenantApp,
    admin_client: APIClient, django_capture_on_commit_callbacks: Capture,
) -> None:
    Tenant.objects.filter(pk=tenant.pk).update(client_base_url=tenant_app.url)
    enqueue(tenant, message(id="a"), message(id="b"), message(id="c"))
    send(smtp_account, django_capture_on_commit_callbacks)
    tenant_app.default = Answer(body={"ok": True, "queued": 0, "error": ["c"]})  # the tenant refuses one
    with django_capture_on_commit_callbacks(execute=True):
        reports.report_tenant(tenant_id=tenant.pk)
    assert len(tenant_app.calls) == 1
    samples = scrape(admin_client)
    assert value(samples, "gmp_report_lag_seconds_count") == 2
    assert value(samples, "gmp_report_lag_seconds_sum") < 60
    assert value(samples, "gmp_report_failures_total", tenant_id="acme") == 0


def test_failed_report_call_is_counted(
    store: str, tenant: Tenant, tenant_app: TenantApp, admin_client: APIClient,
    django_capture_on_commit_callbacks: Capture,
) -> None:
    Tenant.objects.filter(pk=tenant.pk).update(client_base_url=tenant_app.url)
    MessageEvent.objects.create(tenant=tenant, external_id="a", event_type=EventType.CANCELLED,
                                occurred_at=timezone.now(), details={})
    tenant_app.default = Answer(status=500, body={"ok": False})
    with django_capture_on_commit_callbacks(execute=True):
        reports.report_tenant(tenant_id=tenant.pk)
    samples = scrape(admin_client)
    assert value(samples, "gmp_report_failures_total", tenant_id="acme") == 1
    assert value(samples, "gmp_report_lag_seconds_count") == 0


def test_pending_gauge_per_tenant_and_priority(
    store: str, tenant: Tenant, other_tenant: Tenant, account: SmtpAccount, other_account: SmtpAccount,
    admin_client: APIClient,
) -> None:
    enqueue(tenant, message(id="i1", priority=0), message(id="i2", priority=0), message(id="l1", priority=3),
            message(id="done"), message(id="held"))
    enqueue(other_tenant, message(id="o1"))
    Message.objects.filter(external_id="done").update(status=Status.SENT)
    Message.objects.filter(external_id="held").update(status=Status.HELD)
    Message.objects.filter(external_id="l1").update(status=Status.SENDING)
    Message.objects.filter(external_id="i1").update(created_at=timezone.now() - timedelta(seconds=120))
    samples = scrape(admin_client)
    assert value(samples, "gmp_pending_messages", tenant_id="acme", priority="immediate") == 2
    assert value(samples, "gmp_pending_messages", tenant_id="acme", priority="low") == 1  # sending counts
    assert value(samples, "gmp_pending_messages", tenant_id="acme", priority="medium") == 0  # sent, held: no
    assert value(samples, "gmp_pending_messages", tenant_id="globex", priority="medium") == 1
    assert 120 <= value(samples, "gmp_oldest_pending_seconds") < 180


def test_empty_queue_has_no_pending_age(store: str, admin_client: APIClient) -> None:
    samples = scrape(admin_client)
    assert value(samples, "gmp_oldest_pending_seconds") == 0
    assert not [key for key in samples if key[0] == "gmp_pending_messages"]


def test_metrics_need_the_admin_token(
    api_client: APIClient, tenant_client: APIClient, admin_client: APIClient
) -> None:
    refused = api_client.get("/metrics")
    assert refused.status_code == 401
    assert refused.json() == {"ok": False, "error": "missing or invalid API token", "details": None}
    assert tenant_client.get("/metrics").status_code == 403
    assert api_client.get("/metrics", HTTP_X_API_TOKEN="wrong").status_code == 401
    answer = admin_client.get("/metrics", HTTP_ACCEPT="text/plain")
    assert answer.status_code == 200
    assert answer["Content-Type"].startswith("text/plain")


def test_public_metrics_need_no_token(api_client: APIClient) -> None:
    with override_settings(GMP_METRICS_PUBLIC=True):
        answer = api_client.get("/metrics", HTTP_ACCEPT="application/openmetrics-text; version=1.0.0")
    assert answer.status_code == 200
    families = {family.name for family in text_string_to_metric_families(answer.content.decode())}
    # the fleet's metrics and django-prometheus's, in one exposition
    assert {"gmp_sent", "gmp_smtp_seconds", "gmp_pending_messages", "gmp_oldest_pending_seconds"} <= families
    assert {"django_http_requests_before_middlewares", "django_db_execute"} <= families


def test_every_metric_of_the_spec_is_exposed(admin_client: APIClient) -> None:
    text = admin_client.get("/metrics").content.decode()
    types = {family.name: family.type for family in text_string_to_metric_families(text)}
    for name in ("gmp_sent", "gmp_errors", "gmp_deferred", "gmp_rate_limited", "gmp_bounces", "gmp_report_failures"):
        assert types[name] == "counter", name
    for name in ("gmp_queue_seconds", "gmp_smtp_seconds", "gmp_report_lag_seconds"):
        assert types[name] == "histogram", name
    for name in ("gmp_pending_messages", "gmp_oldest_pending_seconds"):
        assert types[name] == "gauge", name


def test_wrong_labels_are_a_programming_error() -> None:
    with pytest.raises(ValueError, match="takes the labels"):
        metrics.inc("sent", tenant_id="acme")
