from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from queueing.models import EventType, Message, MessageEvent, Status
from tenants.models import SmtpAccount
from tests.conftest import message

pytestmark = pytest.mark.django_db


def add(client: APIClient, *messages: dict[str, Any]) -> Any:
    return client.post("/commands/add-messages", {"messages": list(messages)}, format="json")


def ids(response: Any) -> list[str]:
    return [m["id"] for m in response.json()["messages"]]


def test_list_is_newest_first_without_bodies(tenant_client: APIClient, account: SmtpAccount) -> None:
    add(tenant_client, message(id="a"), message(id="b", body="secret body text"))
    response = tenant_client.get("/messages")
    assert ids(response) == ["b", "a"]
    record = response.json()["messages"][0]
    assert "secret body text" not in response.content.decode()
    assert {"id", "pk", "tenant_id", "account_id", "status", "priority", "batch_code", "subject", "to",
            "created_at", "deferred_ts", "next_attempt_ts", "attempts", "sent_ts", "error_ts", "error",
            "smtp_code", "message_id"} <= set(record)
    assert (record["account_id"], record["priority_label"]) == ("main", "medium")


def test_list_filters(tenant_client: APIClient, account: SmtpAccount, tenant: Any) -> None:
    add(tenant_client, message(id="a", batch_code="x"), message(id="b", batch_code="y"), message(id="c"))
    Message.objects.filter(external_id="c").update(status=Status.SENT)
    assert ids(tenant_client.get("/messages?batch_code=x")) == ["a"]
    assert ids(tenant_client.get("/messages?status=sent")) == ["c"]
    assert ids(tenant_client.get("/messages?status=queued,sent")) == ["c", "b", "a"]
    assert ids(tenant_client.get("/messages?active_only=true")) == ["b", "a"]
    assert ids(tenant_client.get("/messages?account_id=main")) == ["c", "b", "a"]
    assert ids(tenant_client.get("/messages?account_id=other")) == []
    assert ids(tenant_client.get(f"/messages?since={time.time() + 60}")) == []


@pytest.mark.parametrize("query", ["status=nope", "limit=0", "limit=5000", "since=yesterday", "cursor=x",
                                   "active_only=maybe", "since=-1774304339000000", "since=1e300", "since=nan",
                                   "since=inf"])
def test_bad_list_parameters_are_400_naming_them(tenant_client: APIClient, account: SmtpAccount, query: str) -> None:
    response = tenant_client.get(f"/messages?{query}")
    assert response.status_code == 400
    assert query.split("=")[0] in response.json()["details"]


def test_cursor_pagination_walks_every_message_once(tenant_client: APIClient, account: SmtpAccount) -> None:
    add(tenant_client, *[message(id=f"m{i}") for i in range(7)])
    seen: list[str] = []
    url = "/messages?limit=3"
    while True:
        body = tenant_client.get(url).json()
        seen.extend(m["id"] for m in body["messages"])
        if body["next_cursor"] is None:
            break
        url = f"/messages?limit=3&cursor={body['next_cursor']}"
    assert sorted(seen) == sorted(f"m{i}" for i in range(7))
    assert len(seen) == 7


def test_admin_lists_one_tenant_or_all(
    admin_client: APIClient, tenant_client: APIClient, other_client: APIClient,
    account: SmtpAccount, other_account: SmtpAccount,
) -> None:
    add(tenant_client, message(id="a"))
    add(other_client, message(id="g"))
    assert ids(admin_client.get("/messages?tenant_id=acme")) == ["a"]
    assert sorted(ids(admin_client.get("/messages?all=true"))) == ["a", "g"]
    assert admin_client.get("/messages").status_code == 400  # no default tenant in this install


def test_message_detail_has_the_event_timeline(tenant_client: APIClient, account: SmtpAccount) -> None:
    add(tenant_client, message(id="path/with/slashes"))
    stored = Message.objects.get()
    MessageEvent.objects.create(tenant_id="acme", message=stored, external_id=stored.external_id,
                                event_type=EventType.DEFERRED, occurred_at=timezone.now(),
                                details={"deferred_reason": "451 try later"})
    response = tenant_client.get("/messages/path/with/slashes")
    assert response.status_code == 200
    record = response.json()["message"]
    assert record["id"] == "path/with/slashes"
    assert [(e["type"], e["details"]["deferred_reason"]) for e in record["events"]] == [("deferred", "451 try later")]


def test_message_of_another_tenant_is_404_like_a_missing_one(
    tenant_client: APIClient, other_client: APIClient, account: SmtpAccount
) -> None:
    add(tenant_client, message(id="mine"))
    theirs, missing = other_client.get("/messages/mine"), other_client.get("/messages/never")
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json() == missing.json()
    assert other_client.get("/messages?tenant_id=acme").status_code == 404


def test_delete_cancels_waiting_and_removes_final(tenant_client: APIClient, account: SmtpAccount) -> None:
    add(tenant_client, message(id="wait"), message(id="done"), message(id="busy"))
    Message.objects.filter(external_id="done").update(status=Status.SENT)
    Message.objects.filter(external_id="busy").update(status=Status.SENDING)
    body = tenant_client.post("/commands/delete-messages", {"ids": ["wait", "done", "busy", "ghost"]},
                              format="json").json()
    assert body["removed"] == 2
    assert sorted(body["removed_ids"]) == ["done", "wait"]
    assert (body["not_found"], body["in_flight"], body["unauthorized"]) == (["ghost"], ["busy"], [])
    assert dict(Message.objects.values_list("external_id", "status")) == {"wait": "cancelled", "busy": "sending"}
    assert MessageEvent.objects.get(external_id="wait").event_type == EventType.CANCELLED


def test_cancelled_message_can_be_submitted_again(tenant_client: APIClient, account: SmtpAccount) -> None:
    add(tenant_client, message(id="again"))
    tenant_client.post("/commands/delete-messages", {"ids": ["again"]}, format="json")
    assert add(tenant_client, message(id="again")).json()["queued"] == 1
    assert Message.objects.get().status == Status.QUEUED


def test_delete_cannot_touch_another_tenant(
    tenant_client: APIClient, other_client: APIClient, account: SmtpAccount
) -> None:
    add(tenant_client, message(id="mine"))
    body = other_client.post("/commands/delete-messages", {"ids": ["mine"]}, format="json").json()
    assert (body["removed"], body["not_found"]) == (0, ["mine"])
    assert Message.objects.get().status == Status.QUEUED


def test_delete_needs_ids(tenant_client: APIClient, account: SmtpAccount) -> None:
    response = tenant_client.post("/commands/delete-messages", {"ids": []}, format="json")
    assert response.status_code == 400
    assert "ids" in response.json()["details"]


def test_cleanup_removes_old_final_messages_whose_events_were_reported(
    tenant_client: APIClient, account: SmtpAccount
) -> None:
    add(tenant_client, message(id="old-reported"), message(id="old-unreported"), message(id="old-waiting"),
        message(id="new-sent"))
    now = timezone.now()
    long_ago = now - timedelta(days=30)
    for external_id in ("old-reported", "old-unreported", "new-sent"):
        row = Message.objects.get(external_id=external_id)
        MessageEvent.objects.create(tenant_id="acme", message=row, external_id=external_id,
                                    event_type=EventType.SENT, occurred_at=now,
                                    reported_at=now if external_id != "old-unreported" else None)
    Message.objects.exclude(external_id="old-waiting").update(status=Status.SENT)
    Message.objects.filter(external_id__startswith="old").update(updated_at=long_ago)
    body = tenant_client.post("/commands/cleanup-messages", {"older_than_seconds": 86400}, format="json").json()
    assert body == {"ok": True, "removed": 1}
    assert sorted(Message.objects.values_list("external_id", flat=True)) == [
        "new-sent", "old-unreported", "old-waiting"
    ]


def test_cleanup_by_a_tenant_leaves_other_tenants_alone(
    tenant_client: APIClient, other_client: APIClient, account: SmtpAccount, other_account: SmtpAccount
) -> None:
    add(other_client, message(id="theirs"))
    Message.objects.update(status=Status.SENT, updated_at=timezone.now() - timedelta(days=30))
    assert tenant_client.post("/commands/cleanup-messages", {"older_than_seconds": 0},
                              format="json").json()["removed"] == 0
    assert Message.objects.count() == 1


def test_suspend_and_activate_a_tenant(tenant_client: APIClient, account: SmtpAccount) -> None:
    add(tenant_client, message(id="a"), message(id="b"))
    body = tenant_client.post("/commands/suspend", {}, format="json").json()
    assert body == {"ok": True, "tenant_id": "acme", "suspended": True, "suspended_batches": [], "held": 2}
    assert set(Message.objects.values_list("status", flat=True)) == {Status.HELD}
    body = tenant_client.post("/commands/activate", {}, format="json").json()
    assert (body["suspended"], body["held"]) == (False, 0)
    assert set(Message.objects.values_list("status", flat=True)) == {Status.QUEUED}


def test_suspend_one_batch_only(tenant_client: APIClient, account: SmtpAccount) -> None:
    add(tenant_client, message(id="a", batch_code="promo"), message(id="b"))
    body = tenant_client.post("/commands/suspend", {"batch_code": "promo"}, format="json").json()
    assert (body["suspended"], body["suspended_batches"], body["held"]) == (False, ["promo"], 1)
    assert dict(Message.objects.values_list("external_id", "status")) == {"a": "held", "b": "queued"}
    tenant_client.post("/commands/activate", {"batch_code": "promo"}, format="json")
    assert dict(Message.objects.values_list("external_id", "status")) == {"a": "queued", "b": "queued"}


def test_activating_a_batch_inside_a_suspended_tenant_is_409(tenant_client: APIClient, account: SmtpAccount) -> None:
    tenant_client.post("/commands/suspend", {"batch_code": "promo"}, format="json")
    tenant_client.post("/commands/suspend", {}, format="json")
    response = tenant_client.post("/commands/activate", {"batch_code": "promo"}, format="json")
    assert response.status_code == 409
    assert "suspended" in response.json()["error"]


def test_activating_the_tenant_keeps_suspended_batches_held(tenant_client: APIClient, account: SmtpAccount) -> None:
    add(tenant_client, message(id="a", batch_code="promo"), message(id="b"))
    tenant_client.post("/commands/suspend", {"batch_code": "promo"}, format="json")
    tenant_client.post("/commands/suspend", {}, format="json")
    tenant_client.post("/commands/activate", {}, format="json")
    assert dict(Message.objects.values_list("external_id", "status")) == {"a": "held", "b": "queued"}


def test_released_message_with_attempts_goes_back_to_deferred(tenant_client: APIClient, account: SmtpAccount) -> None:
    add(tenant_client, message(id="a"))
    Message.objects.update(status=Status.DEFERRED, attempts=2)
    tenant_client.post("/commands/suspend", {}, format="json")
    tenant_client.post("/commands/activate", {}, format="json")
    assert Message.objects.get().status == Status.DEFERRED


def test_tenant_cannot_suspend_another(other_client: APIClient, tenant: Any, account: SmtpAccount) -> None:
    response = other_client.post("/commands/suspend", {"tenant_id": "acme"}, format="json")
    assert response.status_code == 404
    tenant.refresh_from_db()
    assert tenant.suspended is False
