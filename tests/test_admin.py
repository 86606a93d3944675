"""The admin console: every page opens, secrets stay hidden, the actions do what they say."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.contrib.auth.models import User
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
