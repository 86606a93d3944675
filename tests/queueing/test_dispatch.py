from __future__ import annotations

import time
from datetime import timedelta

import pytest
import redis
from django.conf import settings
from django.utils import timezone
from rest_framework.test import APIClient

from queueing import dispatch, lifecycle
from queueing.models import Message
from queueing.services import enqueue_messages
from tenants.models import SmtpAccount, Tenant
from tests.conftest import message
from tests.factories import SmtpAccountFactory

pytestmark = pytest.mark.django_db


def test_due_accounts_name_the_best_waiting_priority(tenant: Tenant, account: SmtpAccount) -> None:
    enqueue_messages(scope=tenant, payloads=[message(id="a", priority=3), message(id="b", priority=1)])
    assert dispatch.due_accounts() == {account.pk: 1}


def test_paused_account_and_future_messages_are_not_due(tenant: Tenant, account: SmtpAccount) -> None:
    enqueue_messages(scope=tenant, payloads=[message(id="a")])
    SmtpAccount.objects.filter(pk=account.pk).update(paused_until=timezone.now() + timedelta(minutes=1))
    assert dispatch.due_accounts() == {}
    SmtpAccount.objects.filter(pk=account.pk).update(paused_until=None)
    Message.objects.update(next_attempt_at=timezone.now() + timedelta(minutes=1))
    assert dispatch.due_accounts() == {}


def test_an_account_is_rung_once_until_its_task_starts(tenant: Tenant, account: SmtpAccount) -> None:
    enqueue_messages(scope=tenant, payloads=[message(id="a")])
    assert dispatch.ring(dispatch.due_accounts()) == [account.pk]
    assert dispatch.ring(dispatch.due_accounts()) == []  # the first task is still queued
    SmtpAccount.objects.filter(pk=account.pk).update(ring_until=timezone.now() - timedelta(seconds=1))
    assert dispatch.ring(dispatch.due_accounts()) == [account.pk]  # that task was lost: ring again


def test_message_committed_while_its_tenant_was_suspended_is_not_claimed(
    tenant: Tenant, account: SmtpAccount
) -> None:
    enqueue_messages(scope=tenant, payloads=[message(id="a"), message(id="b", batch_code="promo")])
    # The rows still say queued (the race), but the tenant and the batch are suspended.
    Tenant.objects.filter(pk=tenant.pk).update(suspended=True)
    assert lifecycle.claim_due(account=account, limit=10, lease_seconds=60).message_ids == []
    Tenant.objects.filter(pk=tenant.pk).update(suspended=False)
    tenant.suspended_batches.create(batch_code="promo")
    claimed = lifecycle.claim_due(account=account, limit=10, lease_seconds=60).message_ids
    assert [Message.objects.get(pk=pk).external_id for pk in claimed] == ["a"]


def test_run_now_rings_only_the_callers_tenant(
    tenant_client: APIClient, admin_client: APIClient, tenant: Tenant, other_tenant: Tenant,
    account: SmtpAccount, other_account: SmtpAccount,
) -> None:
    enqueue_messages(scope=tenant, payloads=[message(id="a")])
    enqueue_messages(scope=other_tenant, payloads=[message(id="b")])
    assert tenant_client.post("/commands/run-now").json() == {"ok": True, "accounts_rung": 1, "reports_resent": 0}
    account.refresh_from_db()
    other_account.refresh_from_db()
    assert account.ring_until is not None
    assert other_account.ring_until is None
    assert admin_client.post("/commands/run-now").json()["accounts_rung"] == 1  # the other one


def test_sweep_expires_overdue_mail_and_reclaims_dead_leases(tenant: Tenant, account: SmtpAccount) -> None:
    enqueue_messages(scope=tenant, payloads=[message(id="old"), message(id="lost")])
    Message.objects.filter(external_id="old").update(expires_at=timezone.now() - timedelta(seconds=1))
    Message.objects.filter(external_id="lost").update(status="sending", lease_until=timezone.now()
                                                        - timedelta(seconds=1))
    dispatch.dispatch_due()
    assert dict(Message.objects.values_list("external_id", "status")) == {"old": "expired", "lost": "queued"}
    assert Message.objects.get(external_id="lost").possible_duplicate is True


@pytest.mark.postgres
def test_send_task_goes_to_the_queue_of_the_best_priority(tenant: Tenant) -> None:
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    broker.flushdb()
    fast = SmtpAccountFactory(tenant=tenant, external_id="fast", is_default=False)
    slow = SmtpAccountFactory(tenant=tenant, external_id="slow", is_default=False)
    enqueue_messages(scope=tenant, payloads=[message(id="i", account_id="fast", priority="immediate"),
                                             message(id="l", account_id="slow", priority="low")])
    dispatch.ring(dispatch.due_accounts())
    assert (broker.llen("immediate"), broker.llen("low"), broker.llen("medium")) == (1, 1, 0)
    assert {fast.pk, slow.pk} == set(dispatch.due_accounts())
    broker.flushdb()


@pytest.mark.postgres
def test_the_claim_walks_the_accounts_index_whatever_its_backlog(tenant: Tenant, account: SmtpAccount) -> None:
    """With 200,000 messages due on one account, a claim of 50 reads its index in order and
    stops: it neither scans nor sorts the backlog (it did with the suspended-batch anti-join)."""
    from django.db import connection

    from tenants.models import SuspendedBatch
    with connection.cursor() as cursor:
        cursor.execute(
            """INSERT INTO queueing_message (tenant_id, account_id, external_id, status, priority, batch_code,
                   from_addr, "to", cc, bcc, reply_to, return_path, subject, body, content_type, body_text,
                   body_html, headers, attachments, raw_eml, message_id, created_at, updated_at, next_attempt_at,
                   attempts, last_error, refused, possible_duplicate, deferred_reason)
               SELECT %s, %s, 'bulk-' || n, 'queued', 2, '', 'a@example.com', '["b@example.com"]', '[]', '[]',
                   '', '', 's', 'b', 'plain', '', '', '{}', '[]', '', '<' || n || '@example.com>',
                   now(), now(), now() - interval '1 minute', 0, '', '[]', false, ''
               FROM generate_series(1, 200000) AS n""",
            [tenant.pk, account.pk],
        )
        cursor.execute("ANALYZE queueing_message")
    for batches in ([], ["spring"]):
        SuspendedBatch.objects.filter(tenant=tenant).delete()
        for code in batches:
            SuspendedBatch.objects.create(tenant=tenant, batch_code=code)
        query = lifecycle.due_messages(account_pk=account.pk, suspended_batches=batches).values_list("id")[:50]
        sql, params = query.query.sql_with_params()
        with connection.cursor() as cursor:
            cursor.execute(f"EXPLAIN {sql}", params)
            plan = "\n".join(row[0] for row in cursor.fetchall())
        assert "message_due_by_account" in plan, plan
        assert "Sort" not in plan, plan
        assert "Seq Scan on queueing_message" not in plan, plan
        started = time.monotonic()
        assert dispatch.due_accounts() == {account.pk: 2}  # beat's sweep: one probe of the index
        assert time.monotonic() - started < 1.0
        sql, params = dispatch.due_accounts_query().query.sql_with_params()
        with connection.cursor() as cursor:
            cursor.execute(f"EXPLAIN {sql}", params)
            sweep = "\n".join(row[0] for row in cursor.fetchall())
        assert "Seq Scan on queueing_message" not in sweep, sweep  # it grouped every due row before
        started = time.monotonic()
        claim = lifecycle.claim_due(account=account, limit=50, lease_seconds=60)
        assert len(claim.message_ids) == 50
        assert time.monotonic() - started < 1.0  # milliseconds in fact; a sort of the backlog took seconds


def test_a_dead_claim_flags_only_the_message_its_worker_may_have_been_sending(
        tenant: Tenant, account: SmtpAccount) -> None:
    enqueue_messages(scope=tenant, payloads=[message(id=f"m{i}") for i in range(4)]
                     + [message(id="urgent", priority=0)])
    claim = lifecycle.claim_due(account=account, limit=10, lease_seconds=60)
    assert len(claim.message_ids) == 5
    sent_first = lifecycle.claimed_messages(claim)[0]
    assert sent_first.external_id == "urgent"  # sending goes by priority, then age
    assert lifecycle.record_sent(claim=claim, message=sent_first, refused=[])
    # The worker dies while it talks to the server about m0; m1-m3 were never tried.
    Message.objects.filter(lease_token=claim.token).update(lease_until=timezone.now() - timedelta(seconds=1))
    assert lifecycle.reclaim_expired_leases() == 4
    assert dict(Message.objects.values_list("external_id", "possible_duplicate")) == {
        "urgent": False, "m0": True, "m1": False, "m2": False, "m3": False}
    assert set(Message.objects.values_list("external_id", "status")) == {
        ("urgent", "sent"), ("m0", "queued"), ("m1", "queued"), ("m2", "queued"), ("m3", "queued")}
