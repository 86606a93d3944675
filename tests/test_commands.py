"""The management commands (`python manage.py …`), in process against the suite's database.

The `mail-proxy` CLI runs these same commands; tests/cli/ drives them end to end.
"""

from __future__ import annotations

import io
import json
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from queueing.models import EventType, Message, MessageEvent, Status
from queueing.services import enqueue_messages
from tenants import crypto
from tenants.models import ApiKey, SmtpAccount, Tenant
from tests.conftest import message

pytestmark = pytest.mark.django_db

OLD_KEY = crypto.generate_key()


def run(*args: str, stdin: str | None = None, monkeypatch: pytest.MonkeyPatch | None = None) -> str:
    if stdin is not None and monkeypatch is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_tenant_lifecycle(monkeypatch: pytest.MonkeyPatch) -> None:
    added = json.loads(run("tenants", "add", "shop", "--name", "Shop", "--base-url", "https://shop.example.com",
                           "--auth-method", "bearer", "--auth-token-stdin", "--limit-hour", "500", "--json",
                           stdin="tok-secret\n", monkeypatch=monkeypatch))
    assert added["api_key"].startswith("mpk_")
    assert added["tenant"]["client_auth"] == {"method": "bearer", "configured": True}
    assert "tok-secret" not in json.dumps(added)
    shop = Tenant.objects.get(pk="shop")
    assert crypto.decrypt(shop.client_auth_secret_encrypted) == "tok-secret"
    assert shop.rate_limits == {"per_hour": 500}
    run("tenants", "update", "shop", "--name", "Shop 2", "--inactive")
    shop.refresh_from_db()
    assert (shop.name, shop.active) == ("Shop 2", False)
    assert crypto.decrypt(shop.client_auth_secret_encrypted) == "tok-secret"  # untouched by the update
    with pytest.raises(CommandError, match="nothing to change"):
        run("tenants", "update", "shop")
    with pytest.raises(CommandError, match="--auth-token: give --auth-method"):
        run("tenants", "update", "shop", "--auth-token", "x")
    run("tenants", "delete", "shop", "--yes")
    assert not Tenant.objects.filter(pk="shop").exists()


def test_suspending_a_batch_and_the_conflict_of_activating_it_alone(tenant: Tenant, account: SmtpAccount) -> None:
    run("tenants", "suspend", tenant.id)
    with pytest.raises(CommandError, match="suspended"):
        run("tenants", "activate", tenant.id, "--batch", "b1")
    assert "active" in run("tenants", "activate", tenant.id)


def test_account_commands(tenant: Tenant, monkeypatch: pytest.MonkeyPatch) -> None:
    run("accounts", "--tenant", tenant.id, "add", "relay", "--host", "smtp.example.com", "--port", "465",
        "--user", "u@example.com", "--password-stdin", "--limit-minute", "30", "--default",
        stdin="pw-1\n", monkeypatch=monkeypatch)
    relay = SmtpAccount.objects.get(tenant=tenant, external_id="relay")
    assert (relay.security, relay.limit_per_minute, relay.is_default) == ("ssl", 30, True)
    assert crypto.decrypt(relay.password_encrypted) == "pw-1"
    run("accounts", "--tenant", tenant.id, "update", "relay", "--limit-minute", "0", "--port", "2465")
    relay.refresh_from_db()
    assert (relay.limit_per_minute, relay.port, relay.host) == (None, 2465, "smtp.example.com")
    listed = json.loads(run("accounts", "--tenant", tenant.id, "list", "--json"))
    assert [a["id"] for a in listed] == ["relay"]
    assert "pw-1" not in json.dumps(listed)
    enqueue_messages(scope=tenant, payloads=[message(id="waiting", account_id="relay")])
    with pytest.raises(CommandError, match="--force"):
        run("accounts", "--tenant", tenant.id, "delete", "relay", "--yes")
    assert "1 waiting messages failed" in run("accounts", "--tenant", tenant.id, "delete", "relay", "--yes",
                                               "--force")
    assert Message.objects.get(external_id="waiting").status == Status.ERROR


def test_accounts_of_another_tenant_are_not_found(tenant: Tenant, other_account: SmtpAccount) -> None:
    with pytest.raises(CommandError, match=f"account {other_account.external_id!r} not found"):
        run("accounts", "--tenant", tenant.id, "show", other_account.external_id)


def test_admin_and_tenant_keys(tenant: Tenant) -> None:
    admin = json.loads(run("keys", "--admin", "create", "--label", "ops", "--json"))
    assert ApiKey.objects.get(prefix=admin["prefix"]).tenant is None
    client = APIClient()
    client.credentials(HTTP_X_API_TOKEN=admin["api_key"])
    assert client.get("/tenants").status_code == 200
    rotated = run("keys", "--admin", "rotate", admin["prefix"])
    assert client.get("/tenants").status_code == 401
    new_key = rotated.rsplit(": ", 1)[1].strip()
    client.credentials(HTTP_X_API_TOKEN=new_key)
    assert client.get("/tenants").status_code == 200
    tenant_key = json.loads(run("keys", "--tenant", tenant.id, "create", "--expires-days", "1", "--json"))
    assert tenant_key["expires_at"] is not None
    with pytest.raises(CommandError, match="not found for the admin"):
        run("keys", "--admin", "revoke", tenant_key["prefix"])  # a tenant's key is not an admin key
    with pytest.raises(CommandError, match="--expires-days"):
        run("keys", "--tenant", tenant.id, "create", "--expires-days", "0")


def test_messages_send_eml_and_run_now(tenant: Tenant, account: SmtpAccount, tmp_path: Path) -> None:
    path = tmp_path / "m.eml"
    path.write_bytes(b"From: a@example.com\r\nTo: b@example.com\r\nSubject: Hi\r\n\r\nbody\r\n")
    out = json.loads(run("send_eml", "--tenant", tenant.id, str(path), "--id", "eml-1", "--json"))
    assert out == {"id": "eml-1", "queued": 1, "suppressed": []}
    listed = json.loads(run("messages", "--tenant", tenant.id, "list", "--json"))
    assert [(m["id"], m["subject"], m["status"]) for m in listed] == [("eml-1", "Hi", "queued")]
    assert "accounts woken" in run("run_now", "--tenant", tenant.id)
    run("messages", "--tenant", tenant.id, "delete", "eml-1")
    assert Message.objects.get(external_id="eml-1").status == Status.CANCELLED
    with pytest.raises(CommandError, match="not found: ghost"):
        run("messages", "--tenant", tenant.id, "delete", "ghost")


def test_rotate_encryption_key_reseals_every_secret(tenant: Tenant, account: SmtpAccount) -> None:
    with override_settings(MAIL_PROXY_ENCRYPTION_KEY=OLD_KEY):
        Tenant.objects.filter(pk=tenant.pk).update(signing_secret_encrypted=crypto.encrypt("sign-me"),
                                                   client_auth_secret_encrypted=crypto.encrypt("bearer-1"))
        SmtpAccount.objects.filter(pk=account.pk).update(password_encrypted=crypto.encrypt("smtp-pw"),
                                                         imap_password_encrypted=crypto.encrypt("imap-pw"))
    with override_settings(MAIL_PROXY_ENCRYPTION_OLD_KEYS=[OLD_KEY]):
        assert "4 secrets would be re-encrypted" in run("rotate_encryption_key", "--dry-run")
        assert "4 secrets re-encrypted" in run("rotate_encryption_key")
        assert "0 secrets re-encrypted" in run("rotate_encryption_key")  # idempotent
    # The old key can go now: everything opens with the current key alone.
    tenant.refresh_from_db()
    account.refresh_from_db()
    assert crypto.decrypt(tenant.signing_secret_encrypted) == "sign-me"
    assert crypto.decrypt(tenant.client_auth_secret_encrypted) == "bearer-1"
    assert crypto.decrypt(account.password_encrypted) == "smtp-pw"
    assert crypto.decrypt(account.imap_password_encrypted) == "imap-pw"


def test_rotation_reseals_the_attachment_credentials_of_waiting_messages(tenant: Tenant, account: SmtpAccount) -> None:
    auth = {"method": "bearer", "token": "file-token-1"}
    attachment = {"filename": "a.pdf", "storage_path": "https://files.example.com/a.pdf", "auth": auth}
    with override_settings(MAIL_PROXY_ENCRYPTION_KEY=OLD_KEY):
        enqueue_messages(scope=tenant, payloads=[message(id="with-file", attachments=[attachment])])
    stored = Message.objects.get(external_id="with-file").attachments[0]["auth"]
    assert set(stored) == {"sealed"} and "file-token-1" not in json.dumps(stored)  # noqa: PT018
    with override_settings(MAIL_PROXY_ENCRYPTION_OLD_KEYS=[OLD_KEY]):
        assert "1 secrets re-encrypted" in run("rotate_encryption_key")
    sealed = Message.objects.get(external_id="with-file").attachments[0]["auth"]["sealed"]
    assert json.loads(crypto.decrypt(sealed)) == auth  # opens with the current key alone


def test_rotation_without_the_old_key_names_the_row(tenant: Tenant) -> None:
    with override_settings(MAIL_PROXY_ENCRYPTION_KEY=OLD_KEY):
        Tenant.objects.filter(pk=tenant.pk).update(signing_secret_encrypted=crypto.encrypt("sign-me"))
    with pytest.raises(CommandError, match=f"Tenant {tenant.pk} signing_secret_encrypted"):
        run("rotate_encryption_key")


def test_cleanup_removes_only_reported_final_messages(tenant: Tenant, account: SmtpAccount) -> None:
    enqueue_messages(scope=tenant, payloads=[message(id="old"), message(id="unreported"), message(id="waiting")])
    long_ago = timezone.now() - timedelta(days=30)
    Message.objects.filter(external_id__in=["old", "unreported"]).update(status=Status.SENT, updated_at=long_ago)
    for external_id in ("old", "unreported"):
        MessageEvent.objects.create(tenant=tenant, message=Message.objects.get(external_id=external_id),
                                    external_id=external_id, event_type=EventType.SENT, occurred_at=long_ago,
                                    reported_at=long_ago if external_id == "old" else None)
    out = json.loads(run("cleanup", "--json"))
    assert out["messages_removed"] == 1
    assert sorted(Message.objects.values_list("external_id", flat=True)) == ["unreported", "waiting"]


def test_cli_errors_from_call_command_name_the_flag(tenant: Tenant) -> None:
    cases: list[tuple[tuple[str, ...], str]] = [
        (("accounts", "--tenant", tenant.id, "add", "x", "--host", "h", "--port", "0"), "--port:"),
        (("accounts", "--tenant", "ghost", "list"), "tenant 'ghost' not found"),
        (("messages", "--tenant", tenant.id, "list", "--limit", "5000"), "--limit: must be from 1 to 1000"),
        (("cleanup", "--older-than", "-1"), "--older-than: must be 0 or more"),
    ]
    for args, expected in cases:
        with pytest.raises(CommandError, match=expected):
            run(*args)


