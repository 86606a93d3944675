"""SSRF on the product paths: http_url attachments, endpoint attachments and report callbacks.

tests/test_safehttp.py proves the guard itself. Here every spelling of a forbidden address
goes through the real doors (add-messages, POST/PUT /tenant) and the real workers' paths
(`send_due` fetching attachments, `report_tenant` posting reports), against real servers on
loopback that count what reaches them: nothing may. The `sentry` fixture records every
outbound connect of the test process (and blocks any outside loopback), so "refused before
connecting" is observed, not assumed.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import pytest
from django.test import override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from delivery import reports, services
from queueing.models import EventType, Message, MessageEvent, Status
from tenants.models import SmtpAccount, Tenant
from tests.conftest import message
from tests.file_server import FileServer
from tests.security.conftest import Sentry
from tests.security.servers import HostileServer
from tests.smtp_sink import SmtpSink
from tests.tenant_app import TenantApp

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("_nothing_allowed")]


def _resolves_to_loopback(name: str) -> bool:
    try:
        return all(info[4][0] in ("127.0.0.1", "::1") or info[4][0].startswith("127.")
                   for info in socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM))
    except OSError:
        return False


# Spellings of this machine's loopback; the refusal must come before any connection.
LOOPBACK = [
    "127.0.0.1", "127.0.0.2", "[::1]", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[0:0:0:0:0:ffff:127.0.0.1]",
    "0.0.0.0", "[::]",  # noqa: S104 (an address to refuse, not one to bind)
]
# Refused by name at the door; at fetch time a name is judged by what it resolves to, so
# only those that resolve here (to loopback) are fetch-time cases.
LOOPBACK_NAMES = ["localhost", "localhost.", "LocalHost"]
LEGACY_NUMERIC = ["2130706433", "0x7f000001", "0177.0.0.1", "127.1", "0x7f.1", "0"]
# Names that resolve to loopback only through DNS or /etc/hosts: no door can judge them
# without a lookup, so only the fetch-time check applies.
HOSTNAMES = [name for name in {socket.gethostname()} if name and _resolves_to_loopback(name)]
# Never contacted: the sentry blocks them even if the guard failed.
ELSEWHERE = [
    "169.254.169.254", "[::ffff:169.254.169.254]", "[64:ff9b::a9fe:a9fe]", "10.0.0.1", "172.16.0.1",
    "192.168.1.1", "100.64.0.1", "[fd00::1]", "[fe80::1]", "224.0.0.1",
]
DOOR_FORMS = [*LOOPBACK, *LOOPBACK_NAMES, *ELSEWHERE,
              *LEGACY_NUMERIC]
FETCH_FORMS = [*LOOPBACK, *LEGACY_NUMERIC, *(name for name in LOOPBACK_NAMES if _resolves_to_loopback(name)),
               *HOSTNAMES, *ELSEWHERE]


@pytest.fixture
def _nothing_allowed() -> Any:
    # The suite's settings allow 127.0.0.1 for the tenant servers of other tests.
    with override_settings(GMP_ALLOWED_HOSTS=[]):
        yield


def _attachment(url: str) -> dict[str, Any]:
    return {"filename": "secret.txt", "storage_path": url, "fetch_mode": "http_url"}


# --- at the API door -------------------------------------------------------------------


@pytest.mark.parametrize("host", DOOR_FORMS)
def test_http_url_attachment_to_a_forbidden_address_is_refused_at_enqueue(
    tenant_client: APIClient, account: SmtpAccount, files: FileServer, sentry: Sentry, host: str
) -> None:
    url = f"http://{host}:{files.port}/secret"
    answer = tenant_client.post("/commands/add-messages", {"messages": [message(attachments=[_attachment(url)])]},
                                format="json").json()
    assert answer["queued"] == 0, f"{url} was accepted"
    [rejected] = answer["rejected"]
    assert rejected["field"] == "messages[0].attachments[0].storage_path"
    assert rejected["reason"].startswith("attachments[0].storage_path: ")
    assert not Message.objects.exists()
    assert files.requests == []
    assert sentry.to_port(files.port) == []


@pytest.mark.parametrize("host", DOOR_FORMS)
def test_client_base_url_to_a_forbidden_address_is_refused_when_saved(
    admin_client: APIClient, tenant_client: APIClient, tenant: Tenant, tenant_app: TenantApp, sentry: Sentry,
    host: str,
) -> None:
    url = f"http://{host}:{tenant_app.port}"
    created = admin_client.post("/tenant", {"id": "newco", "client_base_url": url}, format="json")
    assert created.status_code == 400, f"POST /tenant accepted {url}"
    assert set(created.json()["details"]) == {"client_base_url"}
    assert not Tenant.objects.filter(pk="newco").exists()
    updated = tenant_client.put("/tenant/acme", {"client_base_url": url}, format="json")
    assert updated.status_code == 400, f"PUT /tenant accepted {url}"
    assert set(updated.json()["details"]) == {"client_base_url"}
    tenant.refresh_from_db()
    assert tenant.client_base_url == ""
    assert tenant_app.calls == []
    assert sentry.to_port(tenant_app.port) == []


# --- at fetch and post time ------------------------------------------------------------


@pytest.fixture
def queued_with(tenant: Tenant, smtp_account: SmtpAccount) -> Callable[[list[dict[str, Any]]], Message]:
    """A message queued with a harmless attachment, then given the attachments under test in its row.

    The row is what the worker trusts; writing it directly stands for anything that got past
    the door (an older version, an allow-list changed since, a name that resolves differently).
    """

    def make(attachments: list[dict[str, Any]]) -> Message:
        from queueing.services import enqueue_messages

        enqueue_messages(scope=tenant, payloads=[message(attachments=[_attachment("https://files.example.com/a")])])
        Message.objects.update(attachments=attachments)
        return Message.objects.get()

    return make


def _assert_failed_naming_the_attachment(row: Message) -> None:
    row.refresh_from_db()
    assert row.status == Status.ERROR, (row.status, row.last_error)
    assert "secret.txt" in row.last_error, row.last_error
    assert "refused" in row.last_error, row.last_error


@pytest.mark.parametrize("host", FETCH_FORMS)
def test_http_url_attachment_is_refused_at_fetch_time_without_a_connection(
    queued_with: Callable[..., Message], smtp_account: SmtpAccount, smtp_server: SmtpSink, files: FileServer,
    sentry: Sentry, host: str,
) -> None:
    files.route("/secret", b"internal data")
    row = queued_with([_attachment(f"http://{host}:{files.port}/secret")])
    services.send_due(account_pk=smtp_account.pk)
    _assert_failed_naming_the_attachment(row)
    assert files.requests == []
    assert sentry.to_port(files.port) == []
    assert smtp_server.messages == []


@pytest.mark.parametrize("host", FETCH_FORMS)
def test_endpoint_attachment_of_a_tenant_aimed_inward_is_refused_without_a_connection(
    tenant: Tenant, queued_with: Callable[..., Message], smtp_account: SmtpAccount, smtp_server: SmtpSink,
    files: FileServer, sentry: Sentry, host: str,
) -> None:
    Tenant.objects.filter(pk=tenant.pk).update(client_base_url=f"http://{host}:{files.port}")
    row = queued_with([{"filename": "secret.txt", "storage_path": "doc_id=1", "fetch_mode": "endpoint"}])
    services.send_due(account_pk=smtp_account.pk)
    _assert_failed_naming_the_attachment(row)
    assert files.requests == []
    assert sentry.to_port(files.port) == []
    assert smtp_server.messages == []


@pytest.mark.parametrize("host", FETCH_FORMS)
def test_report_callback_aimed_inward_is_refused_and_nothing_is_acknowledged(
    tenant: Tenant, tenant_app: TenantApp, sentry: Sentry, host: str
) -> None:
    Tenant.objects.filter(pk=tenant.pk).update(client_base_url=f"http://{host}:{tenant_app.port}")
    MessageEvent.objects.create(tenant=tenant, external_id="m1", event_type=EventType.SENT,
                                occurred_at=timezone.now(), details={"sent_ts": 1.0})
    reports.report_tenant(tenant_id=tenant.pk)
    assert tenant_app.calls == []
    assert sentry.to_port(tenant_app.port) == []
    assert MessageEvent.objects.filter(reported_at__isnull=True).count() == 1
    tenant.refresh_from_db()
    assert "not public" in tenant.sync_last_error, tenant.sync_last_error


def test_no_attempt_ever_left_loopback(
    queued_with: Callable[..., Message], smtp_account: SmtpAccount, tenant: Tenant, tenant_app: TenantApp,
    sentry: Sentry,
) -> None:
    """The whole list of forbidden places, fetched and called back in one go: no connection outside loopback."""
    queued_with([_attachment(f"http://{host}/secret") for host in ELSEWHERE])
    services.send_due(account_pk=smtp_account.pk)
    for host in ELSEWHERE:
        Tenant.objects.filter(pk=tenant.pk).update(client_base_url=f"http://{host}", sync_retry_at=None,
                                                   sync_lease_until=None)
        MessageEvent.objects.create(tenant=tenant, external_id="m", event_type=EventType.SENT,
                                    occurred_at=timezone.now(), details={})
        reports.report_tenant(tenant_id=tenant.pk, force=True)
    assert sentry.outside_loopback() == []


# --- redirects from an allowed host inward ----------------------------------------------


@pytest.fixture
def allowed_redirector() -> Any:
    """A server on 127.0.0.2, the one host allowed, that redirects wherever it is told."""
    with HostileServer(host="127.0.0.2") as server, override_settings(GMP_ALLOWED_HOSTS=["127.0.0.2"]):
        yield server


def test_attachment_redirected_from_an_allowed_host_to_loopback_is_not_followed(
    queued_with: Callable[..., Message], smtp_account: SmtpAccount, smtp_server: SmtpSink, files: FileServer,
    allowed_redirector: HostileServer, sentry: Sentry,
) -> None:
    files.route("/secret", b"internal data")
    row = queued_with([_attachment(f"{allowed_redirector.url}/redirect?to=http://127.0.0.1:{files.port}/secret")])
    services.send_due(account_pk=smtp_account.pk)
    _assert_failed_naming_the_attachment(row)
    assert allowed_redirector.count("/redirect") == 1
    assert files.requests == []
    assert sentry.to_port(files.port) == []
    assert smtp_server.messages == []


def test_report_redirected_from_an_allowed_host_to_loopback_is_not_followed(
    tenant: Tenant, tenant_app: TenantApp, allowed_redirector: HostileServer, sentry: Sentry
) -> None:
    Tenant.objects.filter(pk=tenant.pk).update(
        client_base_url=allowed_redirector.url,
        client_sync_path=f"/redirect?to=http://127.0.0.1:{tenant_app.port}/mail-proxy/sync")
    MessageEvent.objects.create(tenant=tenant, external_id="m1", event_type=EventType.SENT,
                                occurred_at=timezone.now(), details={})
    reports.report_tenant(tenant_id=tenant.pk)
    assert allowed_redirector.count("/redirect") == 1
    assert tenant_app.calls == []
    assert sentry.to_port(tenant_app.port) == []
    assert MessageEvent.objects.filter(reported_at__isnull=True).count() == 1
