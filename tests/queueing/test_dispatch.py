from __future__ import annotations

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
