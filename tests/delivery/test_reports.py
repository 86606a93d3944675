"""The sync protocol against a real HTTP server playing the tenant."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test import override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from delivery import reports, services
from queueing.models import EventType, Message, MessageEvent, Status
from queueing.services import cleanup_messages, enqueue_messages
from tenants import crypto
from tenants.models import SmtpAccount, Tenant
from tests.conftest import message
from tests.smtp_sink import SmtpSink
from tests.tenant_app import Answer, TenantApp

pytestmark = pytest.mark.django_db


def point(tenant: Tenant, app: TenantApp, **fields: Any) -> None:
    Tenant.objects.filter(pk=tenant.pk).update(client_base_url=app.url, **fields)
    tenant.refresh_from_db()


def run(tenant: Tenant, **kwargs: Any) -> int:
    return reports.report_tenant(tenant_id=tenant.pk, **kwargs)


def event(tenant: Tenant, external_id: str, event_type: str = EventType.SENT, **details: Any) -> MessageEvent:
    return MessageEvent.objects.create(tenant=tenant, external_id=external_id, event_type=event_type,
                                       occurred_at=timezone.now(), details=details)


def unreported(tenant: Tenant) -> int:
    return MessageEvent.objects.filter(tenant=tenant, reported_at__isnull=True).count()


def test_item_shapes_for_sent_error_deferred_expired(
    tenant: Tenant, smtp_account: SmtpAccount, smtp_server: SmtpSink, tenant_app: TenantApp
) -> None:
    point(tenant, tenant_app)
    smtp_server.on_rcpt("bad@example.com", 550, "5.1.1 unknown")
    smtp_server.on_rcpt("later@example.com", 451, "4.3.0 busy")
    enqueue_messages(scope=tenant, payloads=[
        message(id="ok", to="ok@example.com"), message(id="bad", to="bad@example.com"),
        message(id="later", to="later@example.com"), message(id="old", expires_ts=time.time() + 60),
    ])
    Message.objects.filter(external_id="old").update(expires_at=timezone.now())
    from queueing import lifecycle
    lifecycle.expire_overdue()
    services.send_due(account_pk=smtp_account.pk)
    run(tenant)
    items = {item["id"]: item for item in tenant_app.calls[0].items}
    pks = dict(Message.objects.values_list("external_id", "id"))
    common = {"tenant_id": "acme", "account_id": "main"}
    assert items["ok"] == {**common, "event_id": items["ok"]["event_id"], "event": "sent", "id": "ok",
                           "pk": pks["ok"], "sent_ts": pytest.approx(time.time(), abs=10)}
    assert items["bad"] == {**common, "event_id": items["bad"]["event_id"], "event": "error", "id": "bad",
                            "pk": pks["bad"], "error_ts": pytest.approx(time.time(), abs=10),
                            "error": "every recipient refused: 550 5.1.1 unknown", "smtp_code": 550,
                            "refused": [{"recipient": "bad@example.com", "code": 550, "reason": "550 5.1.1 unknown"}]}
    later = items["later"]
    assert (later["event"], later["deferred_reason"], later["attempts"]) == ("deferred", "smtp", 1)
    assert later["deferred_ts"] == pytest.approx(Message.objects.get(external_id="later").next_attempt_at.timestamp())
    assert items["old"] == {**common, "event_id": items["old"]["event_id"], "event": "expired", "id": "old",
                            "pk": pks["old"], "error_ts": pytest.approx(time.time(), abs=10),
                            "error": "expired before it could be sent"}
    assert unreported(tenant) == 0


def test_rejected_submission_is_reported_without_a_pk(tenant: Tenant, account: SmtpAccount,
                                                      tenant_app: TenantApp) -> None:
    point(tenant, tenant_app)
    enqueue_messages(scope=tenant, payloads=[message(id="nope", to="invalid-no-at")])
    run(tenant)
    [item] = tenant_app.calls[0].items
    assert (item["id"], item["pk"], item["event"]) == ("nope", None, "error")
    assert item["error"] == "to: 'invalid-no-at' is not a valid address"


def test_http_500_acknowledges_nothing_and_the_same_event_ids_come_again(
    tenant: Tenant, tenant_app: TenantApp
) -> None:
    point(tenant, tenant_app)
    for i in range(3):
        event(tenant, f"m{i}", sent_ts=1.0)
    tenant_app.plan = [Answer(status=500)]
    run(tenant)
    assert unreported(tenant) == 3
    tenant.refresh_from_db()
    assert (tenant.sync_backoff_seconds, tenant.sync_last_error) == (5, "HTTP 500")
    assert run(tenant) == 0  # backing off: no call before the retry time
    Tenant.objects.filter(pk=tenant.pk).update(sync_retry_at=timezone.now())
    run(tenant)
    first, second = tenant_app.calls
    assert [i["event_id"] for i in first.items] == [i["event_id"] for i in second.items]
    assert unreported(tenant) == 0


@pytest.mark.parametrize("bad", [Answer(raw=b"<html>oops</html>"), Answer(status=404), Answer(raw=b"[1, 2]")])
def test_non_json_or_non_2xx_answers_acknowledge_nothing(tenant: Tenant, tenant_app: TenantApp, bad: Answer) -> None:
    point(tenant, tenant_app)
    event(tenant, "m", sent_ts=1.0)
    tenant_app.plan = [bad]
    run(tenant)
    assert unreported(tenant) == 1


def test_ids_in_error_are_sent_again_and_the_others_are_acknowledged(tenant: Tenant, tenant_app: TenantApp) -> None:
    point(tenant, tenant_app)
    for name in ("a", "b", "c"):
        event(tenant, name, sent_ts=1.0)
    tenant_app.plan = [Answer(body={"ok": True, "error": ["b"], "not_found": ["c"]})]
    run(tenant)
    assert list(MessageEvent.objects.filter(reported_at__isnull=True).values_list("external_id", flat=True)) == ["b"]
    Tenant.objects.filter(pk=tenant.pk).update(sync_last_at=None)
    run(tenant)
    assert [item["id"] for item in tenant_app.calls[1].items] == ["b"]


@override_settings(GMP_REPORT_TIMEOUT=0.5)
def test_timeout_is_retried_and_nothing_is_lost(tenant: Tenant, tenant_app: TenantApp) -> None:
    point(tenant, tenant_app)
    event(tenant, "m", sent_ts=1.0)
    tenant_app.plan = [Answer(delay=2)]
    started = time.monotonic()
    run(tenant)
    assert time.monotonic() - started < 1.8
    assert unreported(tenant) == 1
    Tenant.objects.filter(pk=tenant.pk).update(sync_retry_at=None)
    run(tenant)
    assert unreported(tenant) == 0


def test_tenant_down_for_a_whole_run_gets_all_1000_reports_after(tenant: Tenant) -> None:
    app = TenantApp()
    url = app.url
    app._server.server_close()  # nothing listens on its port: connection refused
    Tenant.objects.filter(pk=tenant.pk).update(client_base_url=url)
    MessageEvent.objects.bulk_create([
        MessageEvent(tenant=tenant, external_id=f"m{i}", event_type=EventType.SENT, occurred_at=timezone.now(),
                     details={"sent_ts": 1.0}) for i in range(1000)])
    run(tenant)
    tenant.refresh_from_db()
    assert "Connection" in tenant.sync_last_error or "refused" in tenant.sync_last_error.lower()
    assert unreported(tenant) == 1000
    with TenantApp() as back:
        Tenant.objects.filter(pk=tenant.pk).update(client_base_url=back.url, sync_retry_at=None)
        run(tenant)
        assert [len(call.items) for call in back.calls] == [500, 500]
        assert sorted(back.reported_ids()) == sorted(MessageEvent.objects.values_list("id", flat=True))
    assert unreported(tenant) == 0


@pytest.mark.django_db(transaction=True)  # the app's thread submits through its own connection
def test_queued_answers_pace_the_calls(tenant: Tenant, account: SmtpAccount, tenant_app: TenantApp) -> None:
    point(tenant, tenant_app)
    left = iter([3, 2, 1, 0])

    def app_submits_then_answers(call: Any) -> Answer:
        queued = next(left)
        if queued:
            try:
                enqueue_messages(scope=Tenant.objects.get(pk=tenant.pk), payloads=[message(id=f"n{queued}")])
            finally:
                connection.close()
        return Answer(body={"ok": True, "queued": queued})

    tenant_app.hook = app_submits_then_answers
    assert run(tenant, force=True) == 4
    calls = tenant_app.calls
    assert calls[-1].received_at - calls[0].received_at < 2


def test_queued_without_submitting_is_slowed_to_the_minimum_interval(tenant: Tenant, tenant_app: TenantApp) -> None:
    point(tenant, tenant_app)
    tenant_app.default = Answer(body={"ok": True, "queued": 5})
    assert run(tenant, force=True) == 1  # it announced mail but sent none: do not spin
    tenant.refresh_from_db()
    assert tenant.sync_expect_more is True
    assert reports.tenants_to_report() == []
    Tenant.objects.filter(pk=tenant.pk).update(sync_last_call_at=timezone.now() - timedelta(seconds=3))
    assert reports.tenants_to_report() == ["acme"]


def test_submission_after_a_queued_answer_rings_the_reports_at_once(
    tenant: Tenant, account: SmtpAccount, tenant_app: TenantApp, tenant_client: APIClient
) -> None:
    point(tenant, tenant_app)
    tenant_app.default = Answer(body={"ok": True, "queued": 1})
    run(tenant, force=True)
    result = enqueue_messages(scope=Tenant.objects.get(pk=tenant.pk), payloads=[message(id="x")])
    assert result.tenants_expecting_sync == {"acme"}
    assert run(tenant) == 1  # the announced message arrived: the run calls at once
    # ... and rings nobody afterwards: nothing new arrived since that call
    assert Tenant.objects.get(pk=tenant.pk).sync_ring_until is None
    assert run(tenant) == 0


def test_dnd_suppresses_heartbeats_but_not_events_and_tenant_run_now_clears_it(
    tenant: Tenant, tenant_app: TenantApp
) -> None:
    point(tenant, tenant_app)
    tenant_app.plan = [Answer(body={"ok": True, "queued": 0, "next_sync_after": time.time() + 3600})]
    run(tenant, force=True)
    tenant.refresh_from_db()
    assert tenant.sync_dnd_until is not None
    Tenant.objects.filter(pk=tenant.pk).update(sync_last_at=timezone.now() - timedelta(days=1))
    assert run(tenant) == 0  # no heartbeat in DND
    event(tenant, "m", sent_ts=1.0)
    assert run(tenant) == 1  # events still go
    assert run(tenant, force=True) == 1  # tenant run-now: DND cleared, called now
    tenant.refresh_from_db()
    assert tenant.sync_dnd_until is None


def test_heartbeat_every_sync_interval(tenant: Tenant, tenant_app: TenantApp) -> None:
    point(tenant, tenant_app)
    with override_settings(GMP_SYNC_INTERVAL=60):
        assert run(tenant) == 1  # never synced: a heartbeat now
        assert tenant_app.calls[0].items == []
        assert run(tenant) == 0
        Tenant.objects.filter(pk=tenant.pk).update(sync_last_at=timezone.now() - timedelta(seconds=61))
        assert reports.tenants_to_report() == ["acme"]
        assert run(tenant) == 1


def test_tenant_without_a_url_is_not_called(tenant: Tenant) -> None:
    event(tenant, "m", sent_ts=1.0)
    assert reports.tenants_to_report() == []
    assert run(tenant) == 0


def test_instance_wide_sync_url_serves_tenants_without_one(tenant: Tenant, tenant_app: TenantApp) -> None:
    event(tenant, "m", sent_ts=1.0)
    with override_settings(GMP_CLIENT_SYNC_URL=f"{tenant_app.url}/global-sync"):
        run(tenant)
    assert tenant_app.calls[0].path == "/global-sync"


def test_bearer_token_and_signature(tenant: Tenant, tenant_app: TenantApp) -> None:
    point(tenant, tenant_app, client_auth_method="bearer", client_auth_secret_encrypted=crypto.encrypt("tok-1"),
          signing_secret_encrypted=crypto.encrypt("shh"), client_sync_path="/hooks/mail")
    event(tenant, "m", sent_ts=1.0)
    run(tenant)
    call = tenant_app.calls[0]
    assert call.path == "/hooks/mail"
    assert call.headers["authorization"] == "Bearer tok-1"
    stamp = call.headers["x-mail-proxy-timestamp"]
    assert abs(int(stamp) - time.time()) < 10
    expected = hmac.new(b"shh", stamp.encode() + b"." + call.raw, hashlib.sha256).hexdigest()
    assert call.headers["x-mail-proxy-signature"] == f"sha256={expected}"


def test_basic_auth(tenant: Tenant, tenant_app: TenantApp) -> None:
    point(tenant, tenant_app, client_auth_method="basic", client_auth_user="proxy",
          client_auth_secret_encrypted=crypto.encrypt("pw:with:colons"))
    run(tenant, force=True)
    header = tenant_app.calls[0].headers["authorization"]
    assert base64.b64decode(header.removeprefix("Basic ")) == b"proxy:pw:with:colons"
    assert "x-mail-proxy-signature" not in tenant_app.calls[0].headers


def test_loopback_target_is_refused_unless_allowed(tenant: Tenant, tenant_app: TenantApp,
                                                   admin_client: APIClient) -> None:
    point(tenant, tenant_app)
    event(tenant, "m", sent_ts=1.0)
    with override_settings(GMP_ALLOWED_HOSTS=[]):
        run(tenant)
        status = {row["tenant_id"]: row for row in admin_client.get("/tenants/sync-status").json()["tenants"]}
    assert tenant_app.calls == []
    assert unreported(tenant) == 1
    assert "not public" in status["acme"]["last_error"]
    assert status["acme"]["pending_reports"] == 1


@override_settings(GMP_ALLOWED_HOSTS=[])
@pytest.mark.parametrize("url", ["http://127.0.0.1:8000", "http://[::1]/", "http://169.254.169.254",
                                 "http://10.1.2.3", "http://[::ffff:127.0.0.1]", "http://localhost:9000",
                                 "http://0.0.0.0", "http://100.64.0.1"])
def test_forbidden_callback_addresses_are_refused_at_save(admin_client: APIClient, url: str) -> None:
    response = admin_client.post("/tenant", {"id": "acme", "client_base_url": url}, format="json")
    assert response.status_code == 400
    assert "client_base_url" in response.json()["details"]


def test_after_72_hours_of_failures_events_become_undelivered_and_run_now_resends(
    tenant: Tenant, tenant_app: TenantApp, tenant_client: APIClient, account: SmtpAccount
) -> None:
    point(tenant, tenant_app)
    old = event(tenant, "m", sent_ts=1.0)
    MessageEvent.objects.filter(pk=old.pk).update(occurred_at=timezone.now() - timedelta(hours=80))
    Tenant.objects.filter(pk=tenant.pk).update(sync_failing_since=timezone.now() - timedelta(hours=73),
                                               sync_backoff_seconds=600)
    tenant_app.plan = [Answer(status=503)]
    run(tenant)
    old.refresh_from_db()
    assert old.undelivered_at is not None
    assert MessageEvent.objects.filter(pk=old.pk).exists()  # kept, never deleted
    assert reports.outbox(tenant, 10) == []
    answer = tenant_client.post("/commands/run-now").json()
    assert answer["reports_resent"] == 1
    Tenant.objects.filter(pk=tenant.pk).update(sync_retry_at=None)
    run(tenant, force=True)
    old.refresh_from_db()
    assert old.reported_at is not None


def test_sync_status_lists_each_tenant(admin_client: APIClient, tenant: Tenant, tenant_app: TenantApp) -> None:
    point(tenant, tenant_app)
    event(tenant, "m", sent_ts=1.0)
    body = admin_client.get("/tenants/sync-status").json()
    assert body["sync_interval_seconds"] == 300
    [row] = body["tenants"]
    assert (row["tenant_id"], row["pending_reports"], row["in_dnd"], row["last_sync_ts"]) == ("acme", 1, False, None)
    run(tenant)
    [row] = admin_client.get("/tenants/sync-status").json()["tenants"]
    assert row["pending_reports"] == 0
    assert row["last_sync_ts"] == pytest.approx(time.time(), abs=10)


def test_sync_status_is_admin_only(tenant_client: APIClient) -> None:
    assert tenant_client.get("/tenants/sync-status").status_code == 403


def test_two_runs_at_once_call_once(tenant: Tenant, tenant_app: TenantApp) -> None:
    point(tenant, tenant_app)
    event(tenant, "m", sent_ts=1.0)
    Tenant.objects.filter(pk=tenant.pk).update(sync_lease_until=timezone.now() + timedelta(seconds=30))
    assert run(tenant) == 0  # another run holds the lease
    Tenant.objects.filter(pk=tenant.pk).update(sync_lease_until=timezone.now() - timedelta(seconds=1))
    assert run(tenant) == 1  # that run died: its lease ran out


def test_retention_removes_only_acknowledged_final_messages(
    tenant: Tenant, smtp_account: SmtpAccount, smtp_server: SmtpSink, tenant_app: TenantApp
) -> None:
    point(tenant, tenant_app)
    enqueue_messages(scope=tenant, payloads=[message(id="a"), message(id="b")])
    services.send_due(account_pk=smtp_account.pk)
    tenant_app.plan = [Answer(body={"ok": True, "error": ["b"]})]
    run(tenant)
    Message.objects.update(updated_at=timezone.now() - timedelta(days=8))
    assert cleanup_messages(tenant=None) == 1
    assert list(Message.objects.values_list("external_id", "status")) == [("b", Status.SENT)]


def test_a_run_that_finds_the_lease_taken_gives_its_ring_back(tenant: Tenant, tenant_app: TenantApp) -> None:
    point(tenant, tenant_app)
    event(tenant, "m", sent_ts=1.0)
    assert reports.ring_reports(["acme"]) == ["acme"]
    Tenant.objects.filter(pk=tenant.pk).update(sync_lease_until=timezone.now() + timedelta(seconds=30))
    assert run(tenant) == 0
    assert Tenant.objects.get(pk=tenant.pk).sync_ring_until is None  # the next sweep may ring again
    assert reports.ring_reports(["acme"]) == ["acme"]


def test_a_tenant_without_a_url_is_never_rung(tenant: Tenant) -> None:
    event(tenant, "m", sent_ts=1.0)
    assert reports.ring_reports(["acme"]) == []
    assert run(tenant) == 0
    assert Tenant.objects.get(pk=tenant.pk).sync_ring_until is None  # and the run did not ring itself again


def test_a_finished_run_rings_again_only_when_it_made_calls_and_events_wait(
    tenant: Tenant, tenant_app: TenantApp
) -> None:
    point(tenant, tenant_app)
    tenant_app.plan = [Answer(status=500)]
    event(tenant, "m", sent_ts=1.0)
    run(tenant)
    assert Tenant.objects.get(pk=tenant.pk).sync_ring_until is None  # in backoff: no ring until it ends
