"""The behaviour each configuration variable changes, for those no feature test covered yet.

Named from the table of tests/test_config.py. Real parts only: the SMTP sink, the tenant's
HTTP application, Dovecot, Redis, and fresh processes where a setting is read once at start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings
from django.core.checks import Error
from django.test import Client, override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from bounces import services as bounces
from bounces.models import Bounce, MailboxCursor
from delivery import reports, smtp
from delivery import services as delivery
from delivery.attachments import fetch_attachments
from mailproxy import cli
from queueing import dispatch
from queueing.models import EventType, Message, MessageEvent, Status, Suppression
from queueing.services import cleanup_messages, enqueue_messages
from tenants.checks import check_secrets
from tenants.models import ApiKey, SmtpAccount, Tenant
from tenants.services import create_api_key, save_account
from tests.bounces.test_bounce_flow import dsn_for
from tests.bounces.test_polling import original_of
from tests.conftest import ADMIN_TOKEN, message
from tests.file_server import FileServer
from tests.imap_server import ImapServer
from tests.smtp_sink import SmtpSink
from tests.tenant_app import Answer, TenantApp

ROOT = Path(__file__).resolve().parent.parent


def clean_environment(tmp: Path, **extra: str) -> dict[str, str]:
    """A process environment without product variables but those given (and a data folder)."""
    (tmp / "home").mkdir(parents=True, exist_ok=True)
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp / "home"), "LANG": "C.UTF-8",
            "DJANGO_SETTINGS_MODULE": "mailproxy.settings", "GMP_DATA_DIR": str(tmp / "data"), **extra}


def python(program: str, environment: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", program, *args], cwd=ROOT, env=environment, capture_output=True,
                          text=True, timeout=60, check=False)


def in_parallel(*runs: tuple[str, dict[str, str]]) -> list[subprocess.CompletedProcess[str]]:
    with ThreadPoolExecutor(max_workers=len(runs)) as pool:
        return list(pool.map(lambda run: python(*run), runs))


def seconds_from_now(moment: Any) -> float:
    return float((moment - timezone.now()).total_seconds())


@pytest.fixture
def _fresh_pool() -> Iterator[None]:
    smtp.pool.close_all()
    yield
    smtp.pool.close_all()


# -- Core --------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_debug_shows_detailed_errors_and_relaxes_the_secret_checks() -> None:
    def ids() -> set[str | None]:
        return {problem.id for problem in check_secrets() if isinstance(problem, Error)}

    with override_settings(DEBUG=False, MAIL_PROXY_ENCRYPTION_KEY=""):
        answer = Client().get("/no-such-page")
        assert (answer.status_code, answer["Content-Type"]) == (404, "application/json")
        assert "mailproxy.E002" in ids()
    with override_settings(DEBUG=True, MAIL_PROXY_ENCRYPTION_KEY=""):
        answer = Client().get("/no-such-page")
        assert answer.status_code == 404
        assert answer["Content-Type"].startswith("text/html")
        assert "mailproxy.urls" in answer.content.decode()  # Django's page naming the URLconf
        assert "mailproxy.E002" not in ids()


def test_a_host_not_allowed_gets_400() -> None:
    with override_settings(ALLOWED_HOSTS=["mail.example.com"]):
        assert APIClient().get("/health", HTTP_HOST="mail.example.com").status_code == 200
        assert APIClient().get("/health", HTTP_HOST="evil.example.net").status_code == 400
    with override_settings(ALLOWED_HOSTS=["*"]):
        assert APIClient().get("/health", HTTP_HOST="evil.example.net").status_code == 200


@pytest.mark.django_db
def test_trusted_origins_admit_the_admin_forms_behind_a_proxy() -> None:
    """Behind a TLS proxy the browser's Origin is the public https one, not the host Django sees."""

    def log_in(trusted: list[str]) -> int:
        with override_settings(CSRF_TRUSTED_ORIGINS=trusted):
            browser = Client(enforce_csrf_checks=True)
            browser.get("/admin/login/")
            token = browser.cookies["csrftoken"].value
            answer = browser.post("/admin/login/", {"username": "nobody", "password": "wrong",
                                                    "csrfmiddlewaretoken": token},
                                  HTTP_ORIGIN="https://mail.example.com")
            return answer.status_code

    assert log_in([]) == 403
    assert log_in(["https://mail.example.com"]) == 200  # the form again, with "wrong password"


@pytest.mark.django_db
def test_the_admin_token_is_the_configured_one() -> None:
    configured = "another-admin-token-Zx81kq0PmsN2vT6wYb4Rj7cL9dHf3gAe"
    client = APIClient()
    with override_settings(GMP_API_TOKEN=configured):
        client.credentials(HTTP_X_API_TOKEN=configured)
        assert client.get("/tenants").status_code == 200
        client.credentials(HTTP_X_API_TOKEN=ADMIN_TOKEN)
        assert client.get("/tenants").status_code == 401
    assert client.get("/tenants").status_code == 200


def test_tasks_go_to_the_configured_broker(tmp_path: Path) -> None:
    url = settings.REDIS_URL  # the suite's own Redis database
    broker = redis.Redis.from_url(url)
    try:
        broker.ping()
    except redis.RedisError:
        pytest.skip("no Redis on 127.0.0.1:6379")
    queue = f"gmp-config-test-{uuid.uuid4().hex}"  # a queue of its own: nothing else reads or writes it
    program = ("import sys, django; django.setup(); from mailproxy.celery import app; "
               "app.send_task('queueing.dispatch', queue=sys.argv[1], retry=False)")
    try:
        done = python(program, clean_environment(tmp_path, CELERY_BROKER_URL=url), queue)
        assert done.returncode == 0, done.stderr
        assert broker.llen(queue) == 1
        assert json.loads(broker.lpop(queue) or b"{}")["headers"]["task"] == "queueing.dispatch"
    finally:
        broker.delete(queue, f"_kombu.binding.{queue}")


def test_data_dir_and_db_path_decide_where_the_embedded_files_are(tmp_path: Path) -> None:
    program = "import django; django.setup(); from django.db import connection; connection.ensure_connection()"
    split, together = tmp_path / "split", tmp_path / "together"
    runs = in_parallel(
        (program, clean_environment(tmp_path, GMP_DATA_DIR=str(split / "data"),
                                    GMP_DB_PATH=str(split / "db" / "proxy.sqlite3"))),
        (program, clean_environment(tmp_path, GMP_DATA_DIR=str(together))),
    )
    for run in runs:
        assert run.returncode == 0, run.stderr
    for folder in (split / "data", together):
        for name in ("secret_key", "encryption.key", "api_token"):
            assert (folder / name).stat().st_mode & 0o777 == 0o600, (folder, name)
        assert (folder / "broker" / "queue").is_dir()  # the embedded broker
    assert (split / "db" / "proxy.sqlite3").is_file()
    assert not (split / "data" / "mail_service.db").exists()
    assert (together / "mail_service.db").is_file()


def test_collected_static_files_go_to_the_static_root(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"], cwd=ROOT,
                          env=clean_environment(tmp_path, GMP_STATIC_ROOT=str(tmp_path / "assets")),
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "assets" / "admin" / "css" / "base.css").is_file()
    assert (tmp_path / "assets" / "drf_spectacular_sidecar").is_dir()  # the API docs' page, without a CDN


# -- API ---------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_generated_message_ids_use_the_configured_domain(tenant: Tenant, account: SmtpAccount) -> None:
    with override_settings(GMP_MESSAGE_ID_DOMAIN="ids.example.org"):
        enqueue_messages(scope=tenant, payloads=[message(id="configured")])
    enqueue_messages(scope=tenant, payloads=[message(id="default")])
    assert Message.objects.get(external_id="configured").message_id.endswith("@ids.example.org>")
    assert Message.objects.get(external_id="default").message_id.endswith("@example.com>")  # the sender's


@pytest.mark.django_db
def test_last_used_is_written_at_most_once_per_touch_window(tenant: Tenant) -> None:
    issued = create_api_key(tenant=tenant)
    client = APIClient()
    client.credentials(HTTP_X_API_TOKEN=issued.raw)

    def last_used() -> Any:
        return ApiKey.objects.get(pk=issued.key.pk).last_used_at

    with override_settings(GMP_API_KEY_TOUCH_SECONDS=600):
        assert client.get("/accounts").status_code == 200
        assert seconds_from_now(last_used()) == pytest.approx(0, abs=5)
        five_minutes_ago = timezone.now() - timedelta(minutes=5)
        ApiKey.objects.filter(pk=issued.key.pk).update(last_used_at=five_minutes_ago)
        client.get("/accounts")
        assert last_used() == five_minutes_ago  # within the window: not written again
    with override_settings(GMP_API_KEY_TOUCH_SECONDS=60):
        client.get("/accounts")
        assert seconds_from_now(last_used()) == pytest.approx(0, abs=5)


@pytest.mark.django_db
def test_retention_default_decides_what_cleanup_removes(tenant: Tenant, account: SmtpAccount) -> None:
    enqueue_messages(scope=tenant, payloads=[message(id="old")])
    Message.objects.update(status=Status.SENT, updated_at=timezone.now() - timedelta(days=2))
    MessageEvent.objects.update(reported_at=timezone.now())
    assert cleanup_messages(tenant=None) == 0  # the default keeps them 7 days
    with override_settings(GMP_REPORT_RETENTION_SECONDS=86400):
        assert cleanup_messages(tenant=None) == 1
    assert not Message.objects.exists()


# -- Delivery ----------------------------------------------------------------------------------


def test_beat_schedule_follows_the_interval_settings(tmp_path: Path) -> None:
    program = ("import json, django; django.setup(); from celery.beat import Scheduler; "
               "from mailproxy.celery import app; app.finalize(); "
               "entries = Scheduler(app).schedule.items(); "
               "print(json.dumps({n: e.schedule.run_every.total_seconds() for n, e in entries}))")
    default, configured = in_parallel(
        (program, clean_environment(tmp_path / "a")),
        (program, clean_environment(tmp_path / "b", GMP_SEND_INTERVAL_SECONDS="2.5",
                                    GMP_CLEANUP_INTERVAL_SECONDS="600")),
    )
    assert default.returncode == 0, default.stderr
    assert configured.returncode == 0, configured.stderr
    before, after = json.loads(default.stdout), json.loads(configured.stdout)
    assert (before["dispatch sweep"], before["retention cleanup"], before["expired large files"]) == (1, 3600, 3600)
    assert (after["dispatch sweep"], after["retention cleanup"], after["expired large files"]) == (2.5, 600, 600)


@pytest.mark.django_db
@pytest.mark.usefixtures("_fresh_pool")
def test_queue_lifetime_decides_when_unreachable_mail_fails(
    tenant: Tenant, smtp_account: SmtpAccount, smtp_server: SmtpSink
) -> None:
    smtp_server.stop()
    enqueue_messages(scope=tenant, payloads=[message(id="m")])
    Message.objects.update(created_at=timezone.now() - timedelta(hours=2))
    delivery.send_due(account_pk=smtp_account.pk)
    assert Message.objects.get().status == Status.DEFERRED  # 2 h is well within the default 5 days
    SmtpAccount.objects.filter(pk=smtp_account.pk).update(paused_until=None)
    Message.objects.update(next_attempt_at=timezone.now())
    with override_settings(GMP_MAX_QUEUE_LIFETIME=3600):
        delivery.send_due(account_pk=smtp_account.pk)
    stored = Message.objects.get()
    assert stored.status == Status.ERROR
    assert stored.last_error.startswith("server unreachable since ")


@pytest.mark.django_db
@pytest.mark.usefixtures("_fresh_pool")
def test_batch_time_budget_hands_the_rest_back(
    tenant: Tenant, smtp_account: SmtpAccount, smtp_server: SmtpSink
) -> None:
    smtp_server.hang("mail", 0.5)  # every transaction takes half a second
    enqueue_messages(scope=tenant, payloads=[message(id=f"m{i}") for i in range(5)])
    with override_settings(GMP_BATCH_SECONDS=1):
        first = delivery.send_due(account_pk=smtp_account.pk)
    assert first.claimed == 5
    assert first.sent >= 1
    assert first.released == 5 - first.sent  # handed back, for the next task (another account's first)
    assert Message.objects.filter(status=Status.QUEUED, attempts=0).count() == first.released
    second = delivery.send_due(account_pk=smtp_account.pk)  # the default budget: a minute
    assert (second.sent, second.released) == (first.released, 0)


@pytest.mark.django_db
def test_ring_window_follows_the_setting(tenant: Tenant, account: SmtpAccount) -> None:
    enqueue_messages(scope=tenant, payloads=[message(id="m")])
    with override_settings(GMP_RING_SECONDS=45):
        assert dispatch.ring(dispatch.due_accounts()) == [account.pk]
    account.refresh_from_db()
    assert seconds_from_now(account.ring_until) == pytest.approx(45, abs=3)
    SmtpAccount.objects.filter(pk=account.pk).update(ring_until=None)
    assert dispatch.ring(dispatch.due_accounts()) == [account.pk]
    account.refresh_from_db()
    assert seconds_from_now(account.ring_until) == pytest.approx(20, abs=3)  # the default
    # The report tasks of tenants are rung the same way.
    Tenant.objects.filter(pk=tenant.pk).update(client_base_url="http://127.0.0.1:9/sync")
    MessageEvent.objects.create(tenant=tenant, external_id="m", event_type=EventType.SENT,
                                occurred_at=timezone.now(), details={"sent_ts": 1.0})
    with override_settings(GMP_RING_SECONDS=45):
        assert reports.ring_reports([tenant.pk]) == [tenant.pk]
    assert seconds_from_now(Tenant.objects.get(pk=tenant.pk).sync_ring_until) == pytest.approx(45, abs=3)


@pytest.mark.django_db
@pytest.mark.usefixtures("_fresh_pool")
def test_unreachable_server_backoff_follows_its_bounds(
    tenant: Tenant, smtp_account: SmtpAccount, smtp_server: SmtpSink
) -> None:
    smtp_server.stop()
    enqueue_messages(scope=tenant, payloads=[message(id="m")])
    steps = []
    with override_settings(GMP_BACKOFF_MIN_SECONDS=7, GMP_BACKOFF_MAX_SECONDS=10):
        for _ in range(3):
            delivery.send_due(account_pk=smtp_account.pk)
            smtp_account.refresh_from_db()
            steps.append(smtp_account.backoff_seconds)
            assert seconds_from_now(smtp_account.paused_until) == pytest.approx(smtp_account.backoff_seconds, abs=3)
            SmtpAccount.objects.filter(pk=smtp_account.pk).update(paused_until=None)
            Message.objects.update(next_attempt_at=timezone.now())
    assert steps == [7, 10, 10]  # the minimum, then doubled but capped by the maximum


@pytest.mark.django_db
@pytest.mark.usefixtures("_fresh_pool")
def test_refused_credentials_pause_the_account_for_the_auth_retry(tenant: Tenant, smtp_server: SmtpSink) -> None:
    smtp_server.auth("mailer", "right")
    account = save_account(tenant=tenant, data={
        "id": "main", "host": smtp_server.host, "port": smtp_server.port, "security": "none", "user": "mailer",
        "password": "wrong", "is_default": True,
    }).account
    enqueue_messages(scope=tenant, payloads=[message(id="m")])
    with override_settings(GMP_AUTH_RETRY_SECONDS=120):
        delivery.send_due(account_pk=account.pk)
    account.refresh_from_db()
    assert account.account_error.startswith("authentication failed: 535")
    assert seconds_from_now(account.paused_until) == pytest.approx(120, abs=5)  # not the default 900


# -- Delivery reports --------------------------------------------------------------------------


def point(tenant: Tenant, app: TenantApp) -> None:
    Tenant.objects.filter(pk=tenant.pk).update(client_base_url=app.url)


def event(tenant: Tenant, external_id: str) -> MessageEvent:
    return MessageEvent.objects.create(tenant=tenant, external_id=external_id, event_type=EventType.SENT,
                                       occurred_at=timezone.now(), details={"sent_ts": 1.0})


@pytest.mark.django_db
def test_report_batch_bounds_each_call(tenant: Tenant, tenant_app: TenantApp) -> None:
    point(tenant, tenant_app)
    for i in range(5):
        event(tenant, f"m{i}")
    with override_settings(GMP_REPORT_BATCH=2):
        reports.report_tenant(tenant_id=tenant.pk)
    assert [len(call.items) for call in tenant_app.calls] == [2, 2, 1]
    assert not MessageEvent.objects.filter(reported_at__isnull=True).exists()


@pytest.mark.django_db
def test_announced_mail_is_asked_for_at_most_every_min_interval(tenant: Tenant, tenant_app: TenantApp) -> None:
    point(tenant, tenant_app)
    tenant_app.default = Answer(body={"ok": True, "queued": 5})  # announces mail, never sends it
    reports.report_tenant(tenant_id=tenant.pk, force=True)
    Tenant.objects.filter(pk=tenant.pk).update(sync_last_call_at=timezone.now() - timedelta(seconds=3))
    assert reports.tenants_to_report() == ["acme"]  # the default: every 2 s
    with override_settings(GMP_SYNC_MIN_INTERVAL=10):
        assert reports.tenants_to_report() == []
        Tenant.objects.filter(pk=tenant.pk).update(sync_last_call_at=timezone.now() - timedelta(seconds=11))
        assert reports.tenants_to_report() == ["acme"]


@pytest.mark.django_db
def test_failed_report_calls_back_off_within_their_bounds(tenant: Tenant, tenant_app: TenantApp) -> None:
    point(tenant, tenant_app)
    event(tenant, "m")
    tenant_app.default = Answer(status=500)
    steps = []
    with override_settings(GMP_REPORT_BACKOFF_MIN_SECONDS=7, GMP_REPORT_BACKOFF_MAX_SECONDS=10):
        for _ in range(3):
            reports.report_tenant(tenant_id=tenant.pk)
            stored = Tenant.objects.get(pk=tenant.pk)
            steps.append(stored.sync_backoff_seconds)
            assert seconds_from_now(stored.sync_retry_at) == pytest.approx(stored.sync_backoff_seconds, abs=3)
            Tenant.objects.filter(pk=tenant.pk).update(sync_retry_at=None)
    assert steps == [7, 10, 10]
    assert len(tenant_app.calls) == 3


@pytest.mark.django_db
def test_reports_are_given_up_after_the_configured_time(tenant: Tenant, tenant_app: TenantApp) -> None:
    point(tenant, tenant_app)
    old = event(tenant, "m")
    two_hours_ago = timezone.now() - timedelta(hours=2)
    MessageEvent.objects.filter(pk=old.pk).update(occurred_at=two_hours_ago)
    Tenant.objects.filter(pk=tenant.pk).update(sync_failing_since=two_hours_ago, sync_backoff_seconds=5)
    tenant_app.default = Answer(status=503)
    reports.report_tenant(tenant_id=tenant.pk)
    old.refresh_from_db()
    assert old.undelivered_at is None  # the default gives a tenant 72 hours
    Tenant.objects.filter(pk=tenant.pk).update(sync_retry_at=None)
    with override_settings(GMP_REPORT_GIVE_UP_SECONDS=3600):
        reports.report_tenant(tenant_id=tenant.pk)
    old.refresh_from_db()
    assert old.undelivered_at is not None
    assert old.reported_at is None  # kept for run-now, never deleted


# -- Bounces -----------------------------------------------------------------------------------


PASSWORD = "instance-mailbox-pw"


@pytest.fixture(scope="module")
def imap() -> Iterator[ImapServer]:
    with ImapServer() as server:
        server.add_user("bounces", PASSWORD)
        yield server


def _sent(tenant: Tenant, external_id: str, recipient: str) -> Message:
    enqueue_messages(scope=tenant, payloads=[message(id=external_id, to=[recipient])])
    Message.objects.filter(external_id=external_id).update(status=Status.SENT, sent_at=timezone.now())
    return Message.objects.get(external_id=external_id)


@pytest.mark.django_db
def test_instance_wide_bounce_mailbox_is_read_with_its_settings(
    tenant: Tenant, account: SmtpAccount, imap: ImapServer
) -> None:
    mailbox = {"GMP_BOUNCE_IMAP_HOST": imap.host, "GMP_BOUNCE_IMAP_PORT": imap.port,
               "GMP_BOUNCE_IMAP_USER": "bounces", "GMP_BOUNCE_IMAP_PASSWORD": PASSWORD,
               "GMP_BOUNCE_IMAP_FOLDER": "Bounces", "GMP_BOUNCE_IMAP_SECURITY": "none",
               "GMP_BOUNCE_PROCESSED_FOLDER": "Done", "GMP_BOUNCE_POLL_INTERVAL": 300}
    first = _sent(tenant, "first", "gone@example.com")
    imap.append("bounces", "Bounces", dsn_for(original_of(first), "gone@example.com", "5.1.1", "550 user unknown"))
    imap.append("bounces", "INBOX", b"Subject: not a bounce, and not in the configured folder\r\n\r\nhi\r\n")

    assert bounces.poll_bounces(force=True) == 0  # no GMP_BOUNCE_IMAP_HOST: no instance-wide mailbox
    with override_settings(**{**mailbox, "GMP_BOUNCE_IMAP_SECURITY": "ssl"}):  # the default, on a plain port
        assert bounces.poll_bounces(force=True) == 0
        assert MailboxCursor.objects.get(key="bounce:instance").last_error
    with override_settings(**{**mailbox, "GMP_BOUNCE_IMAP_PASSWORD": "wrong"}):
        assert bounces.poll_bounces(force=True) == 0
    with override_settings(**mailbox):
        assert bounces.poll_bounces(force=True) == 1
    assert Bounce.objects.get().recipient == "gone@example.com"
    assert Suppression.objects.filter(tenant=tenant, address="gone@example.com").exists()
    assert imap.messages("bounces", "Bounces") == []
    assert len(imap.messages("bounces", "Done")) == 1
    assert len(imap.messages("bounces", "INBOX")) == 1  # the folder not configured is left alone

    second = _sent(tenant, "second", "left@example.com")
    imap.append("bounces", "Bounces", dsn_for(original_of(second), "left@example.com", "5.1.1", "550 user unknown"))
    MailboxCursor.objects.filter(key="bounce:instance").update(last_polled_at=timezone.now() - timedelta(seconds=120))
    with override_settings(**mailbox):
        assert bounces.poll_bounces() == 0  # polled 2 minutes ago, every 5 minutes
    with override_settings(**{**mailbox, "GMP_BOUNCE_POLL_INTERVAL": 60}):
        assert bounces.poll_bounces() == 1
    assert Bounce.objects.count() == 2


# -- Attachments -------------------------------------------------------------------------------


@pytest.fixture
def files() -> Iterator[FileServer]:
    server = FileServer()
    yield server
    server.close()


@pytest.mark.django_db
def test_disk_cache_size_zero_turns_the_disk_tier_off(files: FileServer, tenant: Tenant, tmp_path: Path) -> None:
    url = files.route("/doc.pdf", b"a document")

    def fetch() -> bytes:
        [attachment] = fetch_attachments([{"filename": "doc.pdf", "storage_path": url}], tenant=tenant)
        return attachment.content

    # No memory tier, as in a new process: only the disk can spare the second fetch.
    with override_settings(GMP_CACHE_DIR=str(tmp_path / "on"), GMP_CACHE_MEMORY_MB=0):
        assert fetch() == fetch() == b"a document"
    assert files.count("/doc.pdf") == 1
    with override_settings(GMP_CACHE_DIR=str(tmp_path / "off"), GMP_CACHE_MEMORY_MB=0, GMP_CACHE_DISK_MB=0):
        assert fetch() == fetch() == b"a document"
    assert files.count("/doc.pdf") == 3
    assert not (tmp_path / "off").exists()


# -- Command line ------------------------------------------------------------------------------


def test_gmp_home_is_where_the_cli_keeps_its_instances(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for home, name in ((tmp_path / "one", "first"), (tmp_path / "two", "second")):
        (home / name).mkdir(parents=True)
        (home / name / "instance.json").write_text(json.dumps({"name": name, "port": 8000}))
    for home, expected in ((tmp_path / "one", ["first"]), (tmp_path / "two", ["second"])):
        monkeypatch.setenv("GMP_HOME", str(home))
        assert cli.main(["list", "--json"]) == 0
        assert [row["name"] for row in json.loads(capsys.readouterr().out)] == expected


def test_traceback_variable_shows_unexpected_cli_errors_in_full(tmp_path: Path) -> None:
    # An instance whose database path is a folder: SQLite cannot open it, an error no rule expects.
    folder = tmp_path / "instances" / "broken"
    (folder / "mail_service.db").mkdir(parents=True)
    (folder / "instance.json").write_text(json.dumps({"name": "broken", "port": 8000}))
    program = "import sys; from mailproxy import cli; sys.exit(cli.main(['broken', 'info']))"
    home = {"GMP_HOME": str(tmp_path / "instances")}
    plain, full = in_parallel((program, clean_environment(tmp_path, **home)),
                              (program, clean_environment(tmp_path, **home, MAIL_PROXY_TRACEBACK="1")))
    assert plain.returncode == 1
    assert plain.stderr.splitlines() == ["mail-proxy: OperationalError: unable to open database file"]
    assert full.returncode == 1
    assert full.stderr.startswith("Traceback (most recent call last):")
    assert full.stderr.rstrip().endswith("OperationalError: unable to open database file")


# -- Operations --------------------------------------------------------------------------------


@pytest.mark.postgres
def test_connection_max_age_zero_closes_the_connection_after_each_request(tmp_path: Path) -> None:
    database = settings.DATABASES["default"]
    url = (f"postgresql://{database['USER']}:{database.get('PASSWORD') or ''}@{database['HOST'] or '127.0.0.1'}:"
           f"{database['PORT'] or 5432}/postgres")
    # As at the end of every request: Django closes the connection unless it may be kept.
    program = ("import django; django.setup(); from django.core.signals import request_finished; "
               "from django.db import connection; connection.ensure_connection(); "
               "request_finished.send(sender=None); print('closed' if connection.connection is None else 'kept')")
    default, zero = in_parallel((program, clean_environment(tmp_path / "a", DATABASE_URL=url)),
                                (program, clean_environment(tmp_path / "b", DATABASE_URL=url,
                                                            GMP_DB_CONN_MAX_AGE="0")))
    assert default.returncode == 0, default.stderr
    assert zero.returncode == 0, zero.stderr
    assert (default.stdout.strip(), zero.stdout.strip()) == ("kept", "closed")


def test_log_level_filters_the_console(tmp_path: Path) -> None:
    program = ("import logging, django; django.setup(); log = logging.getLogger('delivery.services'); "
               "log.info('an info line'); log.warning('a warning line')")
    default, quiet = in_parallel((program, clean_environment(tmp_path / "a")),
                                 (program, clean_environment(tmp_path / "b", GMP_LOG_LEVEL="WARNING")))
    assert "an info line" in default.stderr
    assert "a warning line" in default.stderr
    assert "an info line" not in quiet.stderr
    assert "a warning line" in quiet.stderr
