"""The admin console: every page opens, secrets stay hidden, the actions do what they say."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.urls import reverse

from bounces.models import Bounce
from pec.models import PecReceiptRecord
from queueing.models import Message, MessageEvent, Status, Suppression
from queueing.services import enqueue_messages
from tenants import crypto
from tenants.models import ApiKey, SmtpAccount, Tenant
from tenants.services import create_api_key
from tests.conftest import message
from tests.smtp_sink import SmtpSink

pytestmark = pytest.mark.django_db

SECRET = "ADMIN-SECRET-42"


@pytest.fixture
def staff(client: Client) -> Client:
    User.objects.create_superuser("root", "root@example.com", "pw-for-tests")
    client.login(username="root", password="pw-for-tests")
    return client


@pytest.fixture
def data(tenant: Tenant, account: SmtpAccount) -> Message:
    Tenant.objects.filter(pk=tenant.pk).update(client_auth_method="bearer",
                                               client_auth_secret_encrypted=crypto.encrypt(SECRET),
                                               signing_secret_encrypted=crypto.encrypt(SECRET))
    SmtpAccount.objects.filter(pk=account.pk).update(password_encrypted=crypto.encrypt(SECRET))
    create_api_key(tenant=tenant, label="k")
    enqueue_messages(scope=tenant, payloads=[message(id="m1"), message(id="bad", to="invalid-no-at")])
    stored = Message.objects.get(external_id="m1")
    Suppression.objects.create(tenant=tenant, address="x@example.com", reason="r")
    Bounce.objects.create(tenant=tenant, message=stored, recipient="x@example.com", kind="hard", dedupe_key="k",
                          raw=b"raw bounce")
    PecReceiptRecord.objects.create(tenant=tenant, message=stored, receipt_type="accettazione",
                                    event_type="pec_acceptance", dedupe_key="p", raw=b"raw receipt")
    return stored


def test_every_registered_model_lists_and_opens_without_showing_secrets(staff: Client, data: Message) -> None:
    for model in admin.site._registry:
        opts = model._meta
        changelist = staff.get(reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"))
        assert changelist.status_code == 200, opts.label
        assert SECRET not in changelist.content.decode()
        first = model.objects.first()
        if first is not None:
            page = staff.get(reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[first.pk]))
            assert page.status_code == 200, opts.label
            assert SECRET not in page.content.decode(), opts.label
            assert "gmp1:" not in page.content.decode(), opts.label  # not even the sealed value


def test_admin_needs_a_staff_login(client: Client, data: Message) -> None:
    response = client.get(reverse("admin:queueing_message_changelist"))
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_account_password_is_write_only_and_a_new_one_is_sealed(staff: Client, account: SmtpAccount) -> None:
    url = reverse("admin:tenants_smtpaccount_change", args=[account.pk])
    page = staff.get(url).content.decode()
    assert 'name="password"' in page
    assert 'value="' + crypto.decrypt(account.password_encrypted) not in page
    form = {field: getattr(account, field) for field in (
        "external_id", "host", "port", "user", "security", "timeout", "max_connections", "connection_ttl",
        "batch_size", "limit_behavior", "imap_port", "imap_folder", "imap_security", "imap_poll_interval")}
    form.update({"tenant": account.tenant_id, "password": "brand-new", "verify_tls": "on", "is_default": "on",
                 "imap_host": "", "imap_user": "", "limit_per_minute": "", "limit_per_hour": "", "limit_per_day": ""})
    response = staff.post(url, form)
    assert response.status_code == 302, response.content.decode()[:2000]
    account.refresh_from_db()
    assert crypto.decrypt(account.password_encrypted) == "brand-new"


def test_message_actions_retry_cancel_and_resend_reports(staff: Client, data: Message) -> None:
    url = reverse("admin:queueing_message_changelist")
    MessageEvent.objects.update(reported_at="2026-01-01T00:00:00Z")
    staff.post(url, {"action": "resend_reports", "_selected_action": [data.pk]})
    assert MessageEvent.objects.filter(message=data, reported_at__isnull=True).count() == \
        MessageEvent.objects.filter(message=data).count()
    staff.post(url, {"action": "cancel", "_selected_action": [data.pk]})
    data.refresh_from_db()
    assert data.status == Status.CANCELLED


def test_rotating_a_key_shows_the_new_one_once(staff: Client, data: Message) -> None:
    key = ApiKey.objects.get()
    response = staff.post(reverse("admin:tenants_apikey_changelist"),
                          {"action": "rotate", "_selected_action": [key.pk]}, follow=True)
    key.refresh_from_db()
    assert key.revoked_at is not None
    new = ApiKey.objects.exclude(pk=key.pk).get()
    assert f"mpk_{new.prefix}_" in response.content.decode()


def test_send_test_message_reports_the_servers_answer(staff: Client, tenant: Tenant, smtp_server: SmtpSink) -> None:
    account = SmtpAccount.objects.create(tenant=tenant, external_id="probe", host=smtp_server.host,
                                         port=smtp_server.port, security="none", timeout=5)
    url = reverse("admin:tenants_smtpaccount_changelist")
    User.objects.filter(username="root").update(email="")
    refused = staff.post(url, {"action": "send_test_message", "_selected_action": [account.pk]}, follow=True)
    assert "no email address" in refused.content.decode()
    assert smtp_server.messages == []
    User.objects.filter(username="root").update(email="root@example.com")
    sent = staff.post(url, {"action": "send_test_message", "_selected_action": [account.pk]}, follow=True)
    assert "test message to root@example.com: ok at data: 250" in sent.content.decode()
    (received,) = smtp_server.messages
    assert received.rcpt_tos == ("root@example.com",)
    assert "probe" in (received.subject or "")
    smtp_server.on_rcpt("root@example.com", 550, "5.7.1 relaying denied")
    failed = staff.post(url, {"action": "send_test_message", "_selected_action": [account.pk]}, follow=True)
    assert "failed at rcpt: 550 5.7.1 relaying denied" in failed.content.decode()
    smtp_server.stop()
    down = staff.post(url, {"action": "test_connection", "_selected_action": [account.pk]}, follow=True)
    assert "failed at connect" in down.content.decode()


def test_a_message_given_as_eml_shows_its_size_not_its_bytes(staff: Client, tenant: Tenant,
                                                           account: SmtpAccount) -> None:
    raw = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: s\r\n\r\n" + b"x" * 3000
    enqueue_messages(scope=tenant, payloads=[{"id": "whole", "eml": base64.b64encode(raw).decode()}])
    stored = Message.objects.get(external_id="whole")
    page = staff.get(reverse("admin:queueing_message_change", args=[stored.pk])).content.decode()
    assert f"given whole: {len(raw):,} bytes" in page
    assert stored.raw_eml[:40] not in page


@pytest.mark.postgres
def test_the_message_changelist_of_100000_rows_takes_a_bounded_number_of_queries(
    staff: Client, tenant: Tenant, account: SmtpAccount, django_assert_max_num_queries: Any
) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            """INSERT INTO queueing_message (tenant_id, account_id, external_id, status, priority, batch_code,
                   from_addr, "to", cc, bcc, reply_to, return_path, subject, body, content_type, body_text,
                   body_html, headers, attachments, raw_eml, message_id, created_at, updated_at, next_attempt_at,
                   attempts, last_error, refused, possible_duplicate, deferred_reason)
               SELECT %s, %s, 'bulk-' || n, CASE WHEN n %% 10 = 0 THEN 'queued' ELSE 'sent' END, n %% 4,
                   'batch-' || (n %% 7), 'a@example.com', '["b@example.com"]', '[]', '[]', '', '',
                   'subject ' || n, 'body', 'plain', '', '', '{}', '[]', '', '<' || n || '@example.com>',
                   now(), now(), now(), 1, '', '[]', false, ''
               FROM generate_series(1, 100000) AS n""",
            [tenant.pk, account.pk],
        )
        cursor.execute("ANALYZE queueing_message")
    url = reverse("admin:queueing_message_changelist")
    for query in ("", "?status__exact=sent", "?batch_code=batch-3", "?q=bulk-99999", "?tenant__id__exact=acme"):
        with django_assert_max_num_queries(15):
            page = staff.get(url + query)
        assert page.status_code == 200, query
    listing = staff.get(url).content.decode()
    assert "bulk-100000" in listing  # newest first, the first page renders real rows
    assert "batch-3" in listing  # the batch filter offers the batches of recent messages


def test_the_admins_and_api_docs_static_files_are_served(client: Client) -> None:
    for path in ("/static/admin/css/base.css", "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui.css"):
        answer = client.get(path)
        assert answer.status_code == 200, path
        assert b"".join(answer.streaming_content if answer.streaming else [answer.content])  # type: ignore[attr-defined]
