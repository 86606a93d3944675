from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
from django.db import connection
from django.test import override_settings
from rest_framework.test import APIClient

from queueing import services
from queueing.models import EventType, Message, MessageEvent, Status
from tenants.models import SmtpAccount, Tenant
from tests.conftest import message
from tests.factories import SmtpAccountFactory

pytestmark = pytest.mark.django_db


def add(client: APIClient, *messages: dict[str, Any], **extra: Any) -> Any:
    return client.post("/commands/add-messages", {"messages": list(messages), **extra}, format="json")


def test_valid_message_is_stored_queued(tenant_client: APIClient, account: SmtpAccount) -> None:
    response = add(tenant_client, message(id="m1", cc="Cc Person <cc@example.com>", bcc=["b@example.com"]))
    assert response.status_code == 200
    assert response.json() == {"ok": True, "queued": 1, "rejected": []}
    stored = Message.objects.get(tenant_id="acme", external_id="m1")
    assert stored.status == Status.QUEUED
    assert stored.account == account
    assert stored.priority == 2
    assert stored.to == ["rcpt@example.com"]
    assert stored.cc == ["Cc Person <cc@example.com>"]
    assert stored.bcc == ["b@example.com"]
    assert stored.message_id.startswith("<")
    assert stored.message_id.endswith("@example.com>")


def test_comma_separated_recipients_with_quoted_commas(tenant_client: APIClient, account: SmtpAccount) -> None:
    add(tenant_client, message(to='a@example.com, "Doe, John" <john@example.com>'))
    assert Message.objects.get().to == ["a@example.com", '"Doe, John" <john@example.com>']


def test_idn_addresses_are_allowed(tenant_client: APIClient, account: SmtpAccount) -> None:
    response = add(tenant_client, message(to=["josé@exämple.de"]))
    assert response.json()["queued"] == 1


@pytest.mark.parametrize(("overrides", "field", "reason"), [
    ({"to": "invalid-no-at"}, "to", "to: 'invalid-no-at' is not a valid address"),
    ({"to": ["missing-domain@"]}, "to", "to: 'missing-domain@' is not a valid address"),
    ({"to": "@no-local-part.com"}, "to", "to: '@no-local-part.com' is not a valid address"),
    ({"to": "victim@example.com\r\nBcc: all@example.com"}, "to", "to: must not contain CR or LF"),
    ({"cc": ["ok@example.com", "bad\n@example.com"]}, "cc", "cc: must not contain CR or LF"),
    ({"from": "nobody"}, "from", "from: 'nobody' is not a valid address"),
    ({"from": ...}, "from", "from: is required"),
    ({"to": []}, "to", "to: at least one address is required"),
    ({"subject": "Hi\r\nBcc: x@example.com"}, "subject", "subject: must not contain CR, LF or another line break"),
    ({"subject": ...}, "subject", "subject: is required"),
    ({"headers": {"X-Tag": "a\nb"}}, "headers.X-Tag",
     "headers.X-Tag: must not contain CR, LF, another line break, NUL or a lone surrogate"),
    ({"headers": {"Bcc": "x@example.com"}}, "headers.Bcc", "headers.Bcc: is set by the proxy and cannot be given"),
    ({"headers": {"X-Mail-Proxy-ID": "1"}}, "headers.X-Mail-Proxy-ID",
     "headers.X-Mail-Proxy-ID: is set by the proxy and cannot be given"),
    ({"headers": {"Bad Name": "v"}}, "headers", "headers: 'Bad Name' is not a valid header name"),
    ({"priority": 7}, "priority", "priority: 7 is not a priority; use 0-3 or immediate, high, medium, low"),
    ({"priority": "urgent"}, "priority",
     "priority: 'urgent' is not a priority; use 0-3 or immediate, high, medium, low"),
    ({"account_id": "nope"}, "account_id", "account_id: account 'nope' not found"),
    ({"expires_ts": 1000}, "expires_ts", "expires_ts: is already in the past"),
    ({"deferred_ts": "tomorrow"}, "deferred_ts", "deferred_ts: must be unix seconds (a number >= 0)"),
    ({"content_type": "rtf"}, "content_type", "content_type: 'rtf' is not plain or html"),
    ({"body_html": "<p>x</p>"}, "body", "body: give either body or body_text/body_html, not both"),
    ({"message_id": "no-at-sign"}, "message_id", "message_id: 'no-at-sign' must look like <left@right>"),
    ({"subjet": "typo"}, "subjet", "subjet: is not a known message field"),
    ({"attachments": [{"filename": "a.pdf"}]}, "attachments[0].storage_path",
     "attachments[0].storage_path: is required"),
    ({"attachments": [{"filename": "a.pdf", "storage_path": "x", "fetch_mode": "ftp"}]},
     "attachments[0].fetch_mode",
     "attachments[0].fetch_mode: 'ftp' is not one of base64, filesystem, http_url, endpoint"),
])
def test_invalid_message_is_rejected_naming_the_field_and_the_rest_is_stored(
    tenant_client: APIClient, account: SmtpAccount, overrides: dict[str, Any], field: str, reason: str
) -> None:
    response = add(tenant_client, message(id="good-1"), message(id="bad", **overrides), message(id="good-2"))
    assert response.status_code == 200
    body = response.json()
    assert body["ok"] is True
    assert body["queued"] == 2
    assert body["rejected"] == [{"id": "bad", "index": 1, "field": f"messages[1].{field}", "reason": reason}]
    assert sorted(Message.objects.values_list("external_id", flat=True)) == ["good-1", "good-2"]


def test_rejected_message_gets_an_error_event_for_the_report(tenant_client: APIClient, account: SmtpAccount) -> None:
    add(tenant_client, message(id="bad", to="invalid-no-at"))
    event = MessageEvent.objects.get(tenant_id="acme", external_id="bad")
    assert event.event_type == EventType.ERROR
    assert event.message is None
    assert event.reported_at is None
    assert event.details["error"] == "to: 'invalid-no-at' is not a valid address"


def test_only_rejections_is_ok_false(tenant_client: APIClient, account: SmtpAccount) -> None:
    body = add(tenant_client, message(to="invalid-no-at")).json()
    assert (body["ok"], body["queued"], len(body["rejected"])) == (False, 0, 1)


def test_message_without_id_is_rejected_without_event(tenant_client: APIClient, account: SmtpAccount) -> None:
    body = add(tenant_client, message(id=...)).json()
    assert body["rejected"][0]["id"] is None
    assert body["rejected"][0]["field"] == "messages[0].id"
    assert not MessageEvent.objects.exists()


def test_priority_labels_and_default_priority(tenant_client: APIClient, account: SmtpAccount) -> None:
    add(tenant_client, message(id="a", priority="immediate"), message(id="b"), message(id="c", priority=3),
        default_priority="high")
    assert dict(Message.objects.values_list("external_id", "priority")) == {"a": 0, "b": 1, "c": 3}


def test_bad_default_priority_is_400_and_stores_nothing(tenant_client: APIClient, account: SmtpAccount) -> None:
    response = add(tenant_client, message(), default_priority=9)
    assert response.status_code == 400
    assert "default_priority" in response.json()["details"]
    assert not Message.objects.exists()


def test_deferred_ts_sets_the_first_attempt_and_a_past_one_means_now(
    tenant_client: APIClient, account: SmtpAccount
) -> None:
    later = time.time() + 3600
    add(tenant_client, message(id="later", deferred_ts=later), message(id="past", deferred_ts=1000))
    rows = {m.external_id: m for m in Message.objects.all()}
    assert abs(rows["later"].next_attempt_at.timestamp() - later) < 0.01
    assert rows["past"].deferred_until is None
    assert abs(rows["past"].next_attempt_at.timestamp() - time.time()) < 5


def test_account_must_be_named_when_the_tenant_has_several_without_default(
    tenant_client: APIClient, tenant: Tenant
) -> None:
    SmtpAccountFactory(tenant=tenant, external_id="a", is_default=False)
    SmtpAccountFactory(tenant=tenant, external_id="b", is_default=False)
    body = add(tenant_client, message(id="x"), message(id="y", account_id="b")).json()
    assert body["rejected"][0]["reason"] == "account_id: is required: the tenant has no default SMTP account"
    assert Message.objects.get().account.external_id == "b"


def test_duplicate_of_waiting_message_replaces_it_in_place(tenant_client: APIClient, account: SmtpAccount) -> None:
    add(tenant_client, message(id="first"), message(id="dup", subject="v1"), message(id="last"))
    original = Message.objects.get(external_id="dup")
    body = add(tenant_client, message(id="dup", subject="v2")).json()
    assert body == {"ok": True, "queued": 1, "rejected": []}
    replaced = Message.objects.get(external_id="dup")
    assert (replaced.pk, replaced.created_at, replaced.subject) == (original.pk, original.created_at, "v2")
    assert Message.objects.count() == 3


@pytest.mark.parametrize(("status", "reason"), [
    (Status.SENT, "already sent"), (Status.ERROR, "already failed"), (Status.EXPIRED, "already failed"),
    (Status.SENDING, "being sent right now; it cannot be replaced"),
])
def test_duplicate_of_a_message_past_waiting_is_rejected(
    tenant_client: APIClient, account: SmtpAccount, status: str, reason: str
) -> None:
    add(tenant_client, message(id="done", subject="original"))
    Message.objects.filter(external_id="done").update(status=status)
    body = add(tenant_client, message(id="done", subject="again")).json()
    assert body["rejected"] == [{"id": "done", "index": 0, "field": "messages[0].id", "reason": reason}]
    stored = Message.objects.get(external_id="done")
    assert (stored.subject, stored.status) == ("original", status)
    assert not MessageEvent.objects.filter(external_id="done").exists()


def test_same_id_twice_in_one_request_keeps_the_later(tenant_client: APIClient, account: SmtpAccount) -> None:
    body = add(tenant_client, message(id="x", subject="one"), message(id="x", subject="two")).json()
    assert body["queued"] == 1
    assert body["rejected"][0]["index"] == 0
    assert Message.objects.get().subject == "two"


def test_same_id_in_two_tenants_is_two_messages(
    tenant_client: APIClient, other_client: APIClient, account: SmtpAccount, other_account: SmtpAccount
) -> None:
    add(tenant_client, message(id="shared"))
    add(other_client, message(id="shared"))
    assert sorted(Message.objects.values_list("tenant_id", flat=True)) == ["acme", "globex"]


@override_settings(GMP_MAX_BATCH=3)
def test_batch_over_the_limit_is_413_and_stores_nothing(tenant_client: APIClient, account: SmtpAccount) -> None:
    response = add(tenant_client, *[message(id=f"m{i}") for i in range(4)])
    assert response.status_code == 413
    assert response.json()["ok"] is False
    assert not Message.objects.exists()


@override_settings(GMP_MAX_REQUEST_MB=1)
def test_body_over_the_size_limit_is_413(tenant_client: APIClient, account: SmtpAccount) -> None:
    response = add(tenant_client, message(body="x" * (1024 * 1024 + 10)))
    assert response.status_code == 413
    assert response.json()["ok"] is False
    assert not Message.objects.exists()


def test_malformed_json_is_400(tenant_client: APIClient, account: SmtpAccount) -> None:
    response = tenant_client.post("/commands/add-messages", data="{not json", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["ok"] is False


@pytest.mark.parametrize("body", [[], {"messages": "x"}, {"messages": [], "extra": 1}, "\"text\""])
def test_wrong_shapes_are_400_never_500(tenant_client: APIClient, account: SmtpAccount, body: Any) -> None:
    response = tenant_client.post("/commands/add-messages", data=json.dumps(body), content_type="application/json")
    assert response.status_code == 400
    assert response.json()["ok"] is False


def test_non_json_content_type_is_415(tenant_client: APIClient, account: SmtpAccount) -> None:
    response = tenant_client.post("/commands/add-messages", data="messages=1", content_type="text/plain")
    assert response.status_code == 415
    assert response.json()["ok"] is False


@pytest.mark.parametrize("junk", [None, 5, "str", [1], {"id": {"x": 1}}, {"id": "a", "to": 5}])
def test_junk_messages_are_rejected_per_message(tenant_client: APIClient, account: SmtpAccount, junk: Any) -> None:
    body = add(tenant_client, junk, message(id="fine")).json()
    assert body["queued"] == 1
    assert body["rejected"][0]["index"] == 0


def test_sql_and_html_looking_text_is_stored_and_returned_literally(
    tenant_client: APIClient, account: SmtpAccount
) -> None:
    sneaky_id = "x'; DROP TABLE queueing_message; --"
    subject = "<script>alert('x')</script> & <b>bold</b>"
    add(tenant_client, message(id=sneaky_id, subject=subject))
    listed = tenant_client.get("/messages").json()["messages"]
    assert [(m["id"], m["subject"]) for m in listed] == [(sneaky_id, subject)]
    assert Message.objects.get().subject == subject


def test_tenant_key_naming_another_tenant_is_rejected_as_not_found(
    tenant_client: APIClient, account: SmtpAccount, other_account: SmtpAccount
) -> None:
    body = add(tenant_client, message(id="x", tenant_id="globex"), message(id="y", tenant_id="nobody")).json()
    assert [r["reason"] for r in body["rejected"]] == [
        "tenant_id: tenant 'globex' not found", "tenant_id: tenant 'nobody' not found"
    ]
    assert not Message.objects.exists()
    assert not MessageEvent.objects.filter(tenant_id="globex").exists()


def test_admin_batch_can_span_tenants(
    admin_client: APIClient, account: SmtpAccount, other_account: SmtpAccount
) -> None:
    body = add(admin_client, message(id="a", tenant_id="acme"), message(id="b", tenant_id="globex")).json()
    assert body["queued"] == 2
    assert dict(Message.objects.values_list("external_id", "tenant_id")) == {"a": "acme", "b": "globex"}


def test_single_tenant_use_goes_to_the_default_tenant(admin_client: APIClient) -> None:
    created = admin_client.post("/account", {"id": "smtp", "host": "smtp.example.com"}, format="json")
    assert created.json()["account"]["tenant_id"] == "default"
    body = add(admin_client, message(id="solo")).json()
    assert body["queued"] == 1
    assert Message.objects.get().tenant_id == "default"
    assert admin_client.get("/messages").json()["messages"][0]["id"] == "solo"
    assert [t["id"] for t in admin_client.get("/tenants").json()["tenants"]] == ["default"]


def test_suspended_tenant_messages_are_held_at_enqueue(tenant_client: APIClient, account: SmtpAccount) -> None:
    tenant_client.post("/commands/suspend", {"batch_code": "spring"}, format="json")
    add(tenant_client, message(id="camp", batch_code="spring"), message(id="normal"))
    assert dict(Message.objects.values_list("external_id", "status")) == {"camp": "held", "normal": "queued"}


def test_the_service_reports_which_accounts_got_work(account: SmtpAccount) -> None:
    result = services.enqueue_messages(scope=account.tenant, payloads=[message(id="a", priority=0)])
    assert result.queued_accounts == {(account.pk, 0)}


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_with_the_same_id_store_one_row(client_for: Any) -> None:
    tenant = Tenant.objects.create(id="race")
    SmtpAccountFactory(tenant=tenant, external_id="main")
    clients = [client_for(tenant) for _ in range(50)]
    barrier = threading.Barrier(50)
    answers: list[dict[str, Any]] = []
    lock = threading.Lock()

    def submit(index: int) -> None:
        barrier.wait()
        try:
            body = add(clients[index], message(id="same", subject=f"version {index}")).json()
        finally:
            connection.close()
        with lock:
            answers.append(body)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(answers) == 50
    assert all(answer == {"ok": True, "queued": 1, "rejected": []} for answer in answers)
    assert Message.objects.filter(tenant=tenant, external_id="same").count() == 1


@pytest.mark.parametrize(("attachment", "reason"), [
    ({"filename": "a.txt", "storage_path": "base64:not base64!"}, "is not valid base64"),
    ({"filename": "a.txt", "storage_path": "/etc/passwd"}, "is not inside the folders attachments may be read"),
    ({"filename": "a.txt", "storage_path": "http://169.254.169.254/latest/meta-data"}, "is not public"),
    ({"filename": "a.txt", "storage_path": "x", "fetch_mode": "base64"}, "is not valid base64"),
])
def test_attachments_that_cannot_work_are_refused_at_enqueue(
    tenant_client: APIClient, account: SmtpAccount, attachment: dict[str, Any], reason: str, tmp_path: Any
) -> None:
    with override_settings(GMP_ATTACHMENT_BASE_DIRS=[str(tmp_path)], GMP_ALLOWED_HOSTS=[]):
        body = add(tenant_client, message(attachments=[attachment])).json()
    assert body["queued"] == 0
    assert body["rejected"][0]["field"] == "messages[0].attachments[0].storage_path"
    assert reason in body["rejected"][0]["reason"]


def test_attachment_sources_that_can_work_are_accepted(
    tenant_client: APIClient, account: SmtpAccount, tmp_path: Any
) -> None:
    (tmp_path / "doc.pdf").write_bytes(b"%PDF")
    with override_settings(GMP_ATTACHMENT_BASE_DIRS=[str(tmp_path)]):
        body = add(tenant_client, message(attachments=[
            {"filename": "a.txt", "storage_path": "base64:SGVsbG8="},
            {"filename": "doc.pdf", "storage_path": str(tmp_path / "doc.pdf")},
            {"filename": "rel.pdf", "storage_path": "doc.pdf", "fetch_mode": "filesystem"},
            {"filename": "web.pdf", "storage_path": "https://files.example.com/doc.pdf"},
            {"filename": "crm.pdf", "storage_path": "doc_id=123"},
        ])).json()
    assert body == {"ok": True, "queued": 1, "rejected": []}
