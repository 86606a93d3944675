"""Canary secrets through a whole scenario: they may only appear where they are meant to go.

Tenants and accounts are created through the API with unique canary secrets (SMTP and IMAP
passwords, bearer token, basic password, signing secret, bounce mailbox password, API
keys); messages go in through the API, out through `send_due` to a real SMTP server that
demands the canary password, and reports go to a real tenant server. Then every place a
secret could leak is searched, for the canary and its base64 forms: every API answer of the
scenario, every log record (all loggers at DEBUG, SQL included, and a file handler), the
Celery messages in the broker, the database rows, the callback bodies and headers, the
mail itself, and every page of the admin console.

Allowed: the SMTP AUTH exchange (the sink's own log), the Authorization header of the
calls to the tenant, and each raw API key in the one answer that creates it.
"""

from __future__ import annotations

import base64
import logging
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from delivery import reports, services
from queueing.models import Message
from tenants.models import SmtpAccount
from tests.conftest import ADMIN_TOKEN, message
from tests.file_server import FileServer
from tests.security.dumps import broker_text, database_text
from tests.smtp_sink import SmtpSink
from tests.tenant_app import TenantApp

pytestmark = pytest.mark.django_db

SINK_LOGGERS = ("mail.log", "mail.debug")  # the test SMTP server's own log: the AUTH exchange is its to see


def _canary(name: str) -> str:
    return f"CANARY-{name}-{secrets.token_hex(6)}"


@dataclass
class Canaries:
    smtp_password: str = field(default_factory=lambda: _canary("SMTP"))
    wrong_smtp_password: str = field(default_factory=lambda: _canary("SMTPWRONG"))
    imap_password: str = field(default_factory=lambda: _canary("IMAP"))
    bearer_token: str = field(default_factory=lambda: _canary("BEARER"))
    basic_password: str = field(default_factory=lambda: _canary("BASIC"))
    signing_secret: str = field(default_factory=lambda: _canary("SIGNING"))
    bounce_password: str = field(default_factory=lambda: _canary("BOUNCE"))
    api_keys: dict[str, str] = field(default_factory=dict)  # raw key -> the answer that may show it

    def forms(self) -> dict[str, str]:
        """Every canary, as is and as the base64 a header or a Celery body would carry."""
        plain = {name: value for name, value in vars(self).items() if isinstance(value, str)}
        plain |= {f"api key {index}": raw for index, raw in enumerate(self.api_keys)}
        found = dict(plain)
        for name, value in plain.items():
            found[f"{name} (base64)"] = base64.b64encode(value.encode()).decode().rstrip("=")
        found["basic pair (base64)"] = base64.b64encode(f"reporter:{self.basic_password}".encode()).decode()
        found["AUTH PLAIN (base64)"] = base64.b64encode(f"\0mailer\0{self.smtp_password}".encode()).decode()
        return found


def hits(text: str, canaries: Canaries, *, allowed: set[str] = frozenset()) -> list[str]:  # type: ignore[assignment]
    return [name for name, value in canaries.forms().items() if value in text and value not in allowed]


@dataclass
class Evidence:
    answers: list[tuple[str, str, set[str]]] = field(default_factory=list)  # where, body, canaries allowed

    def record(self, where: str, response: Any, *, allowed: set[str] = frozenset()) -> Any:  # type: ignore[assignment]
        assert response.status_code < 500, f"{where}: {response.status_code}"
        self.answers.append((where, response.content.decode("utf-8", "replace"), set(allowed)))
        return response


@pytest.fixture
def every_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Iterator[Path]:
    """Every logger at DEBUG into caplog and a file, SQL statements included."""
    log_file = tmp_path / "scenario.log"
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)] + [logging.root]
    levels = {lg: lg.level for lg in loggers}
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
    logging.root.addHandler(handler)
    caplog.set_level(logging.DEBUG)
    debug_cursor = connection.force_debug_cursor
    connection.force_debug_cursor = True  # django.db.backends logs every statement with its parameters
    try:
        yield log_file
    finally:
        connection.force_debug_cursor = debug_cursor
        logging.root.removeHandler(handler)
        handler.close()
        for lg, level in levels.items():
            lg.setLevel(level)


def _client(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_X_API_TOKEN=token)
    return client


def _scenario(canaries: Canaries, evidence: Evidence, smtp_server: SmtpSink, tenant_app: TenantApp,
              files: FileServer, capture: Any) -> None:
    admin_api = _client(ADMIN_TOKEN)
    smtp_server.auth("mailer", canaries.smtp_password)
    files.route("/doc.pdf", b"%PDF-public document")

    created = evidence.record("POST /tenant (bearer)", admin_api.post("/tenant", {
        "id": "bearer-co", "name": "Bearer Co", "client_base_url": tenant_app.url,
        "client_auth": {"method": "bearer", "token": canaries.bearer_token},
        "signing_secret": canaries.signing_secret,
        "bounce": {"enabled": False, "imap_host": "imap.example.com", "imap_user": "bounces",
                   "imap_password": canaries.bounce_password},
    }, format="json"), allowed=set())
    bearer_key = created.json()["api_key"]
    canaries.api_keys[bearer_key] = "POST /tenant (bearer)"
    evidence.answers[-1][2].add(bearer_key)
    created = evidence.record("POST /tenant (basic)", admin_api.post("/tenant", {
        "id": "basic-co", "client_base_url": tenant_app.url,
        "client_auth": {"method": "basic", "user": "reporter", "password": canaries.basic_password},
    }, format="json"))
    basic_key = created.json()["api_key"]
    canaries.api_keys[basic_key] = "POST /tenant (basic)"
    evidence.answers[-1][2].add(basic_key)

    bearer, basic = _client(bearer_key), _client(basic_key)
    account = {"host": smtp_server.host, "port": smtp_server.port, "user": "mailer", "security": "none",
               "timeout": 5, "imap_host": "imap.example.com", "imap_user": "pec",
               "imap_password": canaries.imap_password}
    evidence.record("POST /account main", bearer.post("/account", {
        **account, "id": "main", "password": canaries.smtp_password, "is_default": True}, format="json"))
    evidence.record("POST /account broken", bearer.post("/account", {
        **account, "id": "broken", "password": canaries.wrong_smtp_password}, format="json"))
    evidence.record("POST /account basic", basic.post("/account", {
        **account, "id": "main", "password": canaries.smtp_password, "is_default": True}, format="json"))
    # Refused inputs that carry a secret: the error must not echo it.
    evidence.record("POST /account invalid", bearer.post("/account", {
        **account, "id": "bad", "port": "not-a-port", "password": canaries.smtp_password}, format="json"))
    evidence.record("PUT /tenant invalid", bearer.put("/tenant/bearer-co", {
        "client_auth": {"method": "bearer", "token": canaries.bearer_token, "user": ""},
        "signing_secret": canaries.signing_secret * 40}, format="json"))

    extra = evidence.record("POST api-keys", bearer.post("/tenant/bearer-co/api-keys", {"label": "ci"},
                                                         format="json")).json()
    canaries.api_keys[extra["api_key"]] = "POST api-keys"
    evidence.answers[-1][2].add(extra["api_key"])
    rotated = evidence.record("POST rotate", bearer.post(f"/tenant/bearer-co/api-keys/{extra['prefix']}/rotate"))
    canaries.api_keys[rotated.json()["api_key"]] = "POST rotate"
    evidence.answers[-1][2].add(rotated.json()["api_key"])

    with capture(execute=True):  # what goes to the broker goes there on commit
        evidence.record("add-messages bearer", bearer.post("/commands/add-messages", {"messages": [
            message(id="now", priority="immediate"),
            message(id="later", attachments=[{"filename": "doc.pdf", "storage_path": f"{files.url}/doc.pdf"}]),
            message(id="refused", to="not-an-address"),
            message(id="stuck", account_id="broken", priority="immediate"),
        ]}, format="json"))
        evidence.record("add-messages basic", basic.post("/commands/add-messages", {"messages": [
            message(id="basic-1", priority="high")]}, format="json"))
        evidence.record("run-now bearer", bearer.post("/commands/run-now"))
        evidence.record("run-now admin", admin_api.post("/commands/run-now"))

    for row in SmtpAccount.objects.all():
        services.send_due(account_pk=row.pk)
    for tenant_id in ("bearer-co", "basic-co"):
        reports.report_tenant(tenant_id=tenant_id, force=True)

    for path in ("/tenants", "/tenants/sync-status", "/tenant/bearer-co", "/tenant/basic-co", "/accounts",
                 "/messages?all=true", "/tenant/bearer-co/api-keys", "/metrics", "/suppressions?tenant_id=bearer-co"):
        evidence.record(f"admin GET {path}", admin_api.get(path))
    for path in ("/tenant/bearer-co", "/accounts", "/account/main", "/account/broken", "/messages",
                 "/tenant/bearer-co/api-keys", "/suppressions", *(f"/messages/{m}" for m in
                                                                  ("now", "later", "refused", "stuck"))):
        evidence.record(f"tenant GET {path}", bearer.get(path))


def _admin_pages(evidence: Evidence) -> None:
    User.objects.create_superuser("root", "root@example.com", "pw-for-tests")
    staff = Client()
    staff.login(username="root", password="pw-for-tests")
    evidence.record("admin index", staff.get(reverse("admin:index")))
    for model in admin.site._registry:
        opts = model._meta
        prefix = f"admin:{opts.app_label}_{opts.model_name}"
        evidence.record(f"admin {opts.label} list", staff.get(reverse(f"{prefix}_changelist")))
        add_page = staff.get(reverse(f"{prefix}_add"))
        if add_page.status_code != 403:  # some models come in only through the API
            evidence.record(f"admin {opts.label} add", add_page)
        for pk in model._default_manager.values_list("pk", flat=True)[:10]:
            url = reverse(f"{prefix}_change", args=[pk])
            evidence.record(f"admin {opts.label} {pk}", staff.get(url))


def test_no_canary_leaves_its_intended_place(
    smtp_server: SmtpSink, tenant_app: TenantApp, files: FileServer, every_log: Path,
    caplog: pytest.LogCaptureFixture, django_capture_on_commit_callbacks: Any,
) -> None:
    canaries, evidence = Canaries(), Evidence()
    _scenario(canaries, evidence, smtp_server, tenant_app, files, django_capture_on_commit_callbacks)
    leaks: dict[str, list[str]] = {}

    def check(where: str, text: str, allowed: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        found = hits(text, canaries, allowed=allowed)
        if found:
            leaks[where] = found

    # The scenario really ran: mail went out with the canary AUTH, reports with their auth.
    sent = smtp_server.messages
    assert len(sent) == 3, [(m.rcpt_tos, m.subject) for m in sent]
    assert {m.auth_login for m in smtp_server.messages} == {"mailer"}
    assert Message.objects.get(external_id="stuck").status != "sent"  # its account's password is refused
    assert SmtpAccount.objects.get(external_id="broken").account_error.startswith("authentication failed")
    calls_by_auth = {call.headers.get("authorization") for call in tenant_app.calls}
    assert f"Bearer {canaries.bearer_token}" in calls_by_auth
    assert "Basic " + base64.b64encode(f"reporter:{canaries.basic_password}".encode()).decode() in calls_by_auth
    assert files.count("/doc.pdf") == 1
    broker = broker_text()
    assert "delivery.send_batch" in broker or "delivery.report" in broker, "no Celery message reached the broker"

    _admin_pages(evidence)
    for where, body, allowed in evidence.answers:
        check(f"answer of {where}", body, allowed)
    for record in caplog.records:
        if not record.name.startswith(SINK_LOGGERS):
            check(f"log record {record.name}", f"{record.getMessage()} {record.exc_text or ''} {record.args!r}")
    check("log file", "\n".join(line for line in every_log.read_text(encoding="utf-8").splitlines()
                                if not line.startswith(SINK_LOGGERS)))
    check("broker", broker)
    check("database", database_text())
    for index, call in enumerate(tenant_app.calls):
        check(f"report call {index} body", call.raw.decode("utf-8", "replace"))
        check(f"report call {index} headers",
              repr({k: v for k, v in call.headers.items() if k != "authorization"}))
    for request in files.requests:
        check(f"attachment fetch {request.path}", repr(request.headers) + request.body.decode("utf-8", "replace"))
    for index, mail in enumerate(sent):
        check(f"mail {index}", mail.data.decode("utf-8", "replace"))
    assert leaks == {}


def test_a_per_attachment_token_only_reaches_the_file_server(
    tenant_client: APIClient, smtp_account: SmtpAccount, smtp_server: SmtpSink, files: FileServer,
    every_log: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    token = _canary("ATTACHMENT")
    files.route("/doc.pdf", b"%PDF-document")
    attachment = {"filename": "doc.pdf", "storage_path": f"{files.url}/doc.pdf",
                  "auth": {"method": "bearer", "token": token}}
    answers = [tenant_client.post("/commands/add-messages", {"messages": [message(attachments=[attachment])]},
                                  format="json")]
    services.send_due(account_pk=smtp_account.pk)
    assert files.last("/doc.pdf").headers["Authorization"] == f"Bearer {token}"
    answers += [tenant_client.get("/messages"), tenant_client.get("/messages/msg-1")]
    User.objects.create_superuser("root", "root@example.com", "pw-for-tests")
    staff = Client()
    staff.login(username="root", password="pw-for-tests")
    answers.append(staff.get(reverse("admin:queueing_message_change", args=[Message.objects.get().pk])))
    places = {
        **{f"answer {index}": answer.content.decode() for index, answer in enumerate(answers)},
        "logs": every_log.read_text(encoding="utf-8") + " ".join(r.getMessage() for r in caplog.records),
        "database": database_text(),
        "mail": smtp_server.messages[0].data.decode("utf-8", "replace"),
    }
    assert [where for where, text in places.items() if token in text] == []
