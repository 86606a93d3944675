"""What enqueue reads about a batch's tenants, and how it writes the rows."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from queueing import services
from queueing.models import EventType, Message, MessageEvent, Status, Suppression
from tenants.models import SmtpAccount, SuspendedBatch, Tenant
from tests.conftest import message

pytestmark = pytest.mark.django_db


def context(scope: Tenant | None, *payloads: dict[str, Any]) -> services._Context:
    return services._Context(scope=scope, payloads=list(payloads))


def new_account(tenant: Tenant, external_id: str, *, is_default: bool = True) -> SmtpAccount:
    return SmtpAccount.objects.create(tenant=tenant, external_id=external_id, host="127.0.0.1", is_default=is_default)


def test_context_reads_each_tenants_accounts_and_default(tenant: Tenant, other_tenant: Tenant) -> None:
    main = new_account(tenant, "main", is_default=True)
    new_account(tenant, "bulk", is_default=False)
    only = new_account(other_tenant, "only", is_default=False)
    found = context(None, message(tenant_id="acme"), message(tenant_id="globex"))
    assert {key: account.pk for key, account in found.accounts.items()} == {
        ("acme", "main"): main.pk, ("acme", "bulk"): found.accounts[("acme", "bulk")].pk, ("globex", "only"): only.pk}
    # The marked default, and a tenant's single account when none is marked.
    assert {tenant_id: account.pk for tenant_id, account in found.defaults.items()} == {
        "acme": main.pk, "globex": only.pk}
    assert found.tenant_of(message(tenant_id="acme")) == tenant
    assert found.tenant_of(message(tenant_id="nobody")) is None


def test_context_without_a_default_when_several_accounts_and_none_marked(tenant: Tenant) -> None:
    new_account(tenant, "a", is_default=False)
    new_account(tenant, "b", is_default=False)
    assert context(tenant, message()).defaults == {}


def test_context_of_a_tenant_key_reads_only_its_tenant(account: SmtpAccount, other_account: SmtpAccount) -> None:
    found = context(account.tenant, message(), message(tenant_id="globex"))
    assert list(found.accounts) == [("acme", "main")]
    assert found.tenant_of(message(tenant_id="globex")) is None
    assert found.tenant_of(message()) is account.tenant


def test_context_carries_what_later_steps_read_of_the_tenant(tenant: Tenant) -> None:
    Tenant.objects.filter(pk="acme").update(suspended=True, sync_expect_more=True)
    found = context(None, message(tenant_id="acme")).tenants["acme"]
    assert (found.pk, found.name, found.suspended, found.sync_expect_more) == ("acme", "Tenant acme", True, True)
    assert found.retention_seconds is None  # any other field is read when asked for


def test_admin_message_without_tenant_creates_the_default_tenant(db: None) -> None:
    found = context(None, message())
    assert Tenant.objects.filter(pk="default").exists()
    assert found.tenant_of(message()) == Tenant.objects.get(pk="default")
    assert found.accounts == {}


def test_admin_naming_the_default_tenant_does_not_create_it(db: None) -> None:
    found = context(None, message(tenant_id="default"))
    assert not Tenant.objects.filter(pk="default").exists()
    assert found.tenant_of(message(tenant_id="default")) is None


def test_admin_uses_an_existing_default_tenant_and_its_account(db: None) -> None:
    hold = new_account(Tenant.objects.create(id="default"), "hold", is_default=False)
    found = context(None, message(), message(tenant_id=""))
    assert found.accounts[("default", "hold")].pk == hold.pk
    assert found.defaults["default"].pk == hold.pk


def test_default_tenant_created_meanwhile_is_read_with_its_accounts(
    db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_load = services._Context._load
    made: list[SmtpAccount] = []

    def load_then_race(self: services._Context, *args: Any) -> None:
        real_load(self, *args)
        if not made:  # another request creates the tenant and an account right after the first read
            made.append(new_account(Tenant.objects.create(id="default"), "fresh"))

    monkeypatch.setattr(services._Context, "_load", load_then_race)
    found = context(None, message(account_id="fresh"))
    assert found.accounts[("default", "fresh")].pk == made[0].pk


def test_context_reads_suppressions_that_have_not_expired(tenant: Tenant, other_tenant: Tenant) -> None:
    now = timezone.now()
    Suppression.objects.create(tenant=tenant, address="forever@example.com", reason="hard bounce")
    Suppression.objects.create(tenant=tenant, address="later@example.com", reason="api",
                               expires_at=now + timedelta(days=1))
    Suppression.objects.create(tenant=tenant, address="past@example.com", reason="old", expires_at=now)
    Suppression.objects.create(tenant=other_tenant, address="other@example.com", reason="theirs")
    Suppression.objects.create(tenant=tenant, address="unasked@example.com", reason="not in the batch")
    found = context(tenant, message(to=["Forever <FOREVER@example.com>", "later@example.com"],
                                    cc="past@example.com", bcc=["other@example.com"]))
    assert found.suppressed == {("acme", "forever@example.com"): "hard bounce", ("acme", "later@example.com"): "api"}


def test_context_reads_suspended_batches_only_for_messages_with_a_batch_code(tenant: Tenant) -> None:
    SuspendedBatch.objects.create(tenant=tenant, batch_code="spring")
    assert context(tenant, message()).suspended_batches == set()
    found = context(tenant, message(batch_code="autumn"))
    assert found.suspended_batches == {("acme", "spring")}
    assert found.is_held(tenant, services.parse_message(message(batch_code="spring"), now=timezone.now()))


def test_context_is_one_query_and_a_large_batch_reads_the_same(tenant: Tenant) -> None:
    new_account(tenant, "main")
    SuspendedBatch.objects.create(tenant=tenant, batch_code="spring")
    Suppression.objects.create(tenant=tenant, address="r1@example.com", reason="gone")
    for count, queries in ((3, 1), (services._UNION_MAX_PARAMS + 1, 4)):
        payloads = [message(id=f"m{i}", to=f"r{i}@example.com", batch_code="b", tenant_id="acme")
                    for i in range(count)]
        with CaptureQueriesContext(connection) as captured:
            found = context(None, *payloads)
        assert len(captured) == queries
        assert list(found.accounts) == [("acme", "main")]
        assert found.suppressed == {("acme", "r1@example.com"): "gone"}
        assert found.suspended_batches == {("acme", "spring")}
        assert found.tenant_of(payloads[0]) == tenant


def test_every_kind_of_column_is_stored_as_given(account: SmtpAccount) -> None:
    eml = base64.b64encode(b"From: a@example.com\r\nTo: b@example.com\r\nSubject: whole\r\n\r\nbody\r\n").decode()
    result = services.enqueue_messages(scope=account.tenant, payloads=[
        message(id="rich", subject='Ünïcødé ☃ "quoted" \\ {"not": "json"}', body="line\ttab\n'quote' \\n",
                cc="Çé <c@example.com>", headers={"X-Campaign": "spring ü"}, priority="high", batch_code="b1",
                deferred_ts=4102444800.123456, expires_ts=4102531200, message_id="<given@example.com>",
                attachments=[{"filename": "a.txt", "storage_path": "base64:aGVsbG8=", "mime_type": "text/plain"}]),
        {"id": "whole", "eml": eml},
    ])
    assert result.queued == 2
    rich = Message.objects.get(external_id="rich")
    assert (rich.subject, rich.body) == ('Ünïcødé ☃ "quoted" \\ {"not": "json"}', "line\ttab\n'quote' \\n")
    assert (rich.to, rich.cc, rich.bcc) == (["rcpt@example.com"], ["Çé <c@example.com>"], [])
    assert rich.headers == {"X-Campaign": "spring ü"}
    assert rich.attachments == [{"filename": "a.txt", "storage_path": "base64:aGVsbG8=", "mime_type": "text/plain"}]
    assert rich.deferred_until == datetime(2100, 1, 1, 0, 0, 0, 123456, tzinfo=UTC) == rich.next_attempt_at
    assert rich.expires_at == datetime(2100, 1, 2, tzinfo=UTC)
    assert (rich.priority, rich.batch_code, rich.message_id, rich.status) == (1, "b1", "<given@example.com>",
                                                                            Status.QUEUED)
    assert (rich.attempts, rich.pending_recipients, rich.refused, rich.lease_token, rich.sent_at) == (
        0, None, [], None, None)
    assert rich.account_id == account.pk
    whole = Message.objects.get(external_id="whole")
    assert (whole.raw_eml, whole.subject, whole.to) == (eml, "whole", ["b@example.com"])


def test_a_batch_over_one_insert_chunk_is_stored_and_replaced(account: SmtpAccount) -> None:
    count = services.UPSERT_CHUNK + 1
    payloads = [message(id=f"m{i}") for i in range(count)]
    assert services.enqueue_messages(scope=account.tenant, payloads=payloads).queued == count
    Message.objects.filter(external_id=f"m{count - 1}").update(status=Status.SENT)
    again = services.enqueue_messages(scope=account.tenant,
                                      payloads=[{**payload, "subject": "again"} for payload in payloads])
    assert again.queued == count - 1
    assert [(r.external_id, r.reason) for r in again.rejected] == [(f"m{count - 1}", "already sent")]
    assert Message.objects.filter(subject="again").count() == count - 1


@pytest.mark.django_db(transaction=True)  # outside a transaction, as in a request: PostgreSQL's one-statement path
def test_enqueue_outside_a_transaction_stores_refuses_and_reports() -> None:
    tenant = Tenant.objects.create(id="solo")
    new_account(tenant, "main")
    assert connection.get_autocommit()
    first = services.enqueue_messages(scope=tenant, payloads=[message(id="a"), message(id="b")])
    assert first.queued == 2
    Message.objects.filter(external_id="b").update(status=Status.SENT)
    again = services.enqueue_messages(scope=tenant, payloads=[message(id="a", subject="new"), message(id="b")])
    assert again.queued == 1
    assert [(r.external_id, r.reason) for r in again.rejected] == [("b", "already sent")]
    assert Message.objects.get(external_id="a").subject == "new"
    assert not MessageEvent.objects.exists()  # a refused replacement writes no event
    # With a refusal to record, the upsert and the error event go in one transaction.
    mixed = services.enqueue_messages(scope=tenant, payloads=[message(id="c"), message(id="bad", to="nobody")])
    assert mixed.queued == 1
    event = MessageEvent.objects.get()
    assert (event.external_id, event.event_type) == ("bad", EventType.ERROR)
    assert set(Message.objects.values_list("external_id", flat=True)) == {"a", "b", "c"}
