"""MailProxyClient against the real API, served by a live HTTP server thread."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from django.test import override_settings
from pytest_django.live_server_helper import LiveServer

from delivery import services as delivery_services
from mailproxy_client import (
    AuthenticationError,
    Conflict,
    MailProxyClient,
    MailProxyError,
    MessageRejected,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    ServerError,
    TransportError,
    ValidationError,
)
from mailproxy_client.client import quote_message_id
from queueing.models import Message, MessageEvent, Status, Suppression
from tenants.models import SmtpAccount, Tenant
from tenants.services import save_account, save_tenant
from tests.conftest import message
from tests.smtp_sink import SmtpSink
from tests.tenant_app import Answer, TenantApp

pytestmark = pytest.mark.django_db(transaction=True)


def stored(external_id: str) -> Message:
    return Message.objects.get(external_id=external_id)


def test_send_queues_one_message(proxy: MailProxyClient, tenant: Tenant) -> None:
    result = proxy.send(message(id="one", subject="Via the client"))
    assert (result.ok, result.queued, result.rejected, result.suppressed) == (True, 1, [], [])
    row = stored("one")
    assert (row.tenant_id, row.subject, row.status) == ("acme", "Via the client", Status.QUEUED)


def test_send_raises_message_rejected_with_id_and_reason(proxy: MailProxyClient) -> None:
    with pytest.raises(MessageRejected) as caught:
        proxy.send(message(id="bad", to=["invalid-no-at"]))
    assert caught.value.id == "bad"
    assert caught.value.reason == "to: 'invalid-no-at' is not a valid address"
    assert not Message.objects.filter(external_id="bad").exists()


def test_add_messages_stores_the_valid_and_lists_the_rejected(proxy: MailProxyClient) -> None:
    result = proxy.add_messages([message(id="a"), message(id="bad", to="nobody"), message(id="b")],
                                default_priority="high")
    assert (result.ok, result.queued) == (True, 2)
    [rejection] = result.rejected
    assert (rejection.id, rejection.index, rejection.field) == ("bad", 1, "messages[1].to")
    assert rejection.reason == "to: 'nobody' is not a valid address"
    assert result.rejected_ids == {"bad"}
    assert sorted(Message.objects.values_list("external_id", "priority")) == [("a", 1), ("b", 1)]
    # The refusal is also an event, so the tenant's next report carries it.
    assert MessageEvent.objects.filter(external_id="bad", event_type="error").exists()


def test_add_messages_with_nothing_valid_is_not_ok(proxy: MailProxyClient) -> None:
    result = proxy.add_messages([message(id="bad", subject=None)])
    assert (result.ok, result.queued, [item.id for item in result.rejected]) == (False, 0, ["bad"])


def test_suppressed_recipients_are_returned(proxy: MailProxyClient, tenant: Tenant) -> None:
    Suppression.objects.create(tenant=tenant, address="gone@example.com", reason="5.1.1 user unknown")
    result = proxy.send(message(id="m", to=["ok@example.com", "gone@example.com"]))
    assert result.suppressed == [{"id": "m", "recipient": "gone@example.com", "reason": "5.1.1 user unknown"}]
    assert stored("m").to == ["ok@example.com"]


def test_messages_pages_follow_the_cursor(proxy: MailProxyClient) -> None:
    proxy.add_messages([message(id=f"m{i}") for i in range(7)])
    first = proxy.messages(limit=3)
    assert [record["id"] for record in first.messages] == ["m6", "m5", "m4"]
    assert first.next_cursor == str(stored("m4").pk)
    second = proxy.messages(limit=3, cursor=first.next_cursor)
    assert [record["id"] for record in second.messages] == ["m3", "m2", "m1"]
    every = [record["id"] for record in proxy.iter_messages(limit=3)]
    assert every == [f"m{i}" for i in range(6, -1, -1)]
    record = first.messages[0]
    assert (record["tenant_id"], record["account_id"], record["status"]) == ("acme", "main", "queued")
    assert "body" not in record


def test_messages_filters_reach_the_server(proxy: MailProxyClient) -> None:
    proxy.add_messages([message(id="a", batch_code="spring"), message(id="b", batch_code="autumn"),
                        message(id="c")])
    Message.objects.filter(external_id="c").update(status=Status.SENT)

    def ids(**filters: object) -> list[str]:
        return [record["id"] for record in proxy.iter_messages(**filters)]

    assert ids(batch_code="spring") == ["a"]
    assert ids(status="sent") == ["c"]
    assert ids(status=["queued", "sent"]) == ["c", "b", "a"]
    assert ids(active_only=True) == ["b", "a"]
    assert ids(account_id="main", tenant_id="acme") == ["c", "b", "a"]
    assert ids(since=datetime.now(tz=UTC) + timedelta(minutes=1)) == []
    assert ids(since=time.time() - 60) == ["c", "b", "a"]


def test_bad_filter_is_a_validation_error_naming_it(proxy: MailProxyClient) -> None:
    with pytest.raises(ValidationError) as caught:
        proxy.messages(status="nope")
    assert caught.value.status == 400
    assert "status" in caught.value.details
    assert "nope" in caught.value.error


def test_message_detail_has_the_event_timeline(proxy: MailProxyClient, smtp_account: SmtpAccount,
                                               smtp_server: SmtpSink) -> None:
    proxy.send(message(id="orders/2024/7?x#y"))
    delivery_services.send_due(account_pk=smtp_account.pk)
    smtp_server.wait_for(1)
    record = proxy.message("orders/2024/7?x#y")
    assert (record["id"], record["status"], record["attempts"]) == ("orders/2024/7?x#y", "sent", 1)
    assert [event["type"] for event in record["events"]] == ["sent"]
    assert record["events"][0]["details"]["sent_ts"] == pytest.approx(record["sent_ts"])
    assert record["message_id"] == smtp_server.messages[0].message_id


@pytest.mark.parametrize("external_id", ["..", ".", "a/../b", "100%", "ünïcode id"])
def test_message_ids_reach_the_server_as_given(proxy: MailProxyClient, external_id: str) -> None:
    proxy.send(message(id=external_id))
    assert proxy.message(external_id)["id"] == external_id


def test_message_id_quoting_keeps_one_path_segment() -> None:
    assert quote_message_id("a/b?c#d") == "a%2Fb%3Fc%23d"
    assert quote_message_id("..") == "%2E%2E"


def test_unknown_message_is_not_found(proxy: MailProxyClient) -> None:
    with pytest.raises(NotFound) as caught:
        proxy.message("never-sent")
    assert (caught.value.status, caught.value.error) == (404, "not found")


def test_other_tenants_message_is_not_found(proxy: MailProxyClient, live_server: LiveServer) -> None:
    saved = save_tenant(data={"id": "globex", "name": "Globex"})
    save_account(tenant=saved.tenant, data={"id": "main", "host": "127.0.0.1", "port": 2525, "security": "none"})
    assert saved.first_key is not None
    with MailProxyClient(live_server.url, saved.first_key.raw) as globex:
        globex.send(message(id="theirs"))
    with pytest.raises(NotFound):
        proxy.message("theirs")
    with pytest.raises(NotFound):
        proxy.message("theirs", tenant_id="globex")
    assert [record["id"] for record in proxy.iter_messages()] == []
    assert proxy.delete_messages(["theirs"]).not_found == ["theirs"]
    assert stored("theirs").status == Status.QUEUED


def test_run_now_rings_the_accounts_with_due_messages(proxy: MailProxyClient) -> None:
    proxy.send(message(id="due"))
    result = proxy.run_now()
    assert result.raw["ok"] is True
    assert result.accounts_rung == 1
    assert result.reports_resent == 0


def test_suspend_and_activate_a_batch_and_the_tenant(proxy: MailProxyClient, tenant: Tenant) -> None:
    proxy.add_messages([message(id="s1", batch_code="spring"), message(id="other")])
    held = proxy.suspend(batch_code="spring")
    assert (held.tenant_id, held.suspended, held.suspended_batches, held.held) == ("acme", False, ["spring"], 1)
    assert stored("s1").status == Status.HELD
    assert stored("other").status == Status.QUEUED

    whole = proxy.suspend(tenant_id="acme")
    assert whole.suspended is True
    assert stored("other").status == Status.HELD
    with pytest.raises(Conflict) as caught:
        proxy.activate(batch_code="spring")
    assert caught.value.status == 409
    assert "suspended as a whole" in caught.value.error
    assert stored("s1").status == Status.HELD

    released = proxy.activate()
    assert (released.suspended, released.suspended_batches) == (False, ["spring"])
    assert (stored("other").status, stored("s1").status) == (Status.QUEUED, Status.HELD)
    batch = proxy.activate(batch_code="spring")
    assert (batch.suspended_batches, batch.held) == ([], 0)
    assert stored("s1").status == Status.QUEUED


def test_suspending_another_tenant_is_not_found(proxy: MailProxyClient) -> None:
    save_tenant(data={"id": "globex"})
    with pytest.raises(NotFound):
        proxy.suspend(tenant_id="globex")


def test_delete_messages_withdraws_waiting_ones(proxy: MailProxyClient) -> None:
    proxy.add_messages([message(id="a"), message(id="b")])
    result = proxy.delete_messages(["a", "missing"], tenant_id="acme")
    assert (result.removed, result.removed_ids, result.not_found, result.unauthorized) == (1, ["a"], ["missing"], [])
    assert stored("a").status == Status.CANCELLED
    assert stored("b").status == Status.QUEUED


def test_bad_token_is_an_authentication_error(live_server: LiveServer, tenant: Tenant) -> None:
    with MailProxyClient(live_server.url, "mpk_wrong_token") as client, pytest.raises(AuthenticationError) as caught:
        client.messages()
    assert (caught.value.status, caught.value.error) == (401, "missing or invalid API token")
    assert isinstance(caught.value, MailProxyError)


def test_tenant_token_on_an_admin_endpoint_is_permission_denied(proxy: MailProxyClient) -> None:
    with pytest.raises(PermissionDenied) as caught:
        proxy.request("GET", "/tenants")
    assert caught.value.status == 403


def test_generic_request_reaches_other_endpoints(proxy: MailProxyClient) -> None:
    answer = proxy.request("GET", "/accounts")
    assert [account["id"] for account in answer["accounts"]] == ["main"]


@override_settings(GMP_MAX_REQUEST_MB=1)
def test_body_over_the_size_limit_is_payload_too_large(proxy: MailProxyClient) -> None:
    with pytest.raises(PayloadTooLarge) as caught:
        proxy.send(message(id="huge", body="x" * (1024 * 1024 + 10)))
    assert caught.value.status == 413
    assert "over the limit" in caught.value.error
    assert not Message.objects.exists()


@override_settings(GMP_MAX_BATCH=2)
def test_batch_over_the_limit_is_payload_too_large_with_details(proxy: MailProxyClient) -> None:
    with pytest.raises(PayloadTooLarge) as caught:
        proxy.add_messages([message(id=f"m{i}") for i in range(3)])
    assert caught.value.details == {"messages": 3, "limit": 2}


def test_connection_refused_is_a_transport_error(closed_port: int) -> None:
    with MailProxyClient(f"http://127.0.0.1:{closed_port}", "token") as client, \
            pytest.raises(TransportError) as caught:
        client.run_now()
    assert caught.value.status is None
    assert "token" not in str(caught.value)


@pytest.fixture
def silent_server() -> Iterator[str]:
    """Accepts connections and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    listener.close()


def test_timeout_is_a_transport_error(silent_server: str) -> None:
    with MailProxyClient(silent_server, "token", timeout=0.3) as client, pytest.raises(TransportError) as caught:
        client.messages()
    assert "timed out" in caught.value.error


def test_answer_that_is_not_json_is_a_transport_error(tenant_app: TenantApp) -> None:
    tenant_app.default = Answer(status=200, raw=b"<html>login page</html>")
    with MailProxyClient(tenant_app.url, "token") as client, pytest.raises(TransportError) as caught:
        client.run_now()
    assert caught.value.status == 200


def test_html_error_page_in_front_of_the_proxy_is_a_server_error(tenant_app: TenantApp) -> None:
    tenant_app.default = Answer(status=502, raw=b"<html>Bad Gateway</html>")
    with MailProxyClient(tenant_app.url, "token") as client, pytest.raises(ServerError) as caught:
        client.run_now()
    assert caught.value.status == 502
    assert "Bad Gateway" in caught.value.error
    assert tenant_app.calls[0].headers["x-api-token"] == "token"
    assert tenant_app.calls[0].path == "/commands/run-now"


def test_token_is_not_in_the_repr() -> None:
    client = MailProxyClient("http://127.0.0.1:1/", "secret-token")
    assert "secret-token" not in repr(client)
    assert client.base_url == "http://127.0.0.1:1"
    client.close()
