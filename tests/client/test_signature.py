"""Report signatures made by the proxy's own report code, checked with the client's helper."""

from __future__ import annotations

import time

import pytest
from django.utils import timezone

from delivery import reports
from mailproxy_client import InvalidSignature, check_report_signature, verify_report_signature
from mailproxy_client.signature import sign_report
from queueing.models import EventType, MessageEvent
from tenants.models import Tenant
from tenants.services import update_tenant
from tests.tenant_app import Call, TenantApp

pytestmark = pytest.mark.django_db

SECRET = "whsec-ünïcode-0123456789"


@pytest.fixture
def signed_call(tenant: Tenant, tenant_app: TenantApp) -> Call:
    """One real report request of the proxy to the tenant's application, signed with SECRET."""
    update_tenant(tenant=tenant, data={"client_base_url": tenant_app.url, "signing_secret": SECRET})
    MessageEvent.objects.create(tenant=tenant, external_id="m1", event_type=EventType.SENT,
                                occurred_at=timezone.now(), details={"sent_ts": time.time()})
    reports.report_tenant(tenant_id=tenant.pk)
    [call] = tenant_app.wait_for_calls(1)
    assert call.items[0]["id"] == "m1"
    return call


def parts(call: Call) -> tuple[bytes, str, str]:
    return call.raw, call.headers["x-mail-proxy-timestamp"], call.headers["x-mail-proxy-signature"]


def test_the_proxys_signature_verifies(signed_call: Call) -> None:
    body, stamp, signature = parts(signed_call)
    assert verify_report_signature(body, stamp, signature, SECRET) is True
    assert verify_report_signature(body, stamp, signature, SECRET.encode()) is True
    assert sign_report(body, stamp, SECRET) == signature
    check_report_signature(body, stamp, signature, SECRET)


def test_tampered_body_fails(signed_call: Call) -> None:
    body, stamp, signature = parts(signed_call)
    tampered = body.replace(b'"m1"', b'"m2"')
    assert tampered != body
    assert verify_report_signature(tampered, stamp, signature, SECRET) is False
    with pytest.raises(InvalidSignature) as caught:
        check_report_signature(tampered, stamp, signature, SECRET)
    assert caught.value.reason == "the signature does not match the body"


def test_wrong_secret_fails(signed_call: Call) -> None:
    assert verify_report_signature(*parts(signed_call), "another-secret") is False


def test_changed_timestamp_fails_even_when_fresh(signed_call: Call) -> None:
    body, stamp, signature = parts(signed_call)
    assert verify_report_signature(body, str(int(stamp) + 1), signature, SECRET) is False


def test_stale_or_future_timestamp_fails(signed_call: Call) -> None:
    body, stamp, signature = parts(signed_call)
    sent_at = int(stamp)
    assert verify_report_signature(body, stamp, signature, SECRET, now=sent_at + 299) is True
    assert verify_report_signature(body, stamp, signature, SECRET, now=sent_at + 301) is False
    assert verify_report_signature(body, stamp, signature, SECRET, now=sent_at - 301) is False
    assert verify_report_signature(body, stamp, signature, SECRET, now=sent_at + 3000,
                                   tolerance_seconds=3600) is True
    with pytest.raises(InvalidSignature) as caught:
        check_report_signature(body, stamp, signature, SECRET, now=sent_at + 301)
    assert caught.value.reason == "the timestamp is outside the tolerance window"


@pytest.mark.parametrize(("timestamp", "signature"), [
    (None, "sha256=00"), ("1700000000", None), ("", ""), ("17e8", "sha256=00"),
    ("\u0661\u0667\u0660\u0660", "sha256=00"),  # Arabic-Indic digits: isdigit() but not unix seconds
    ("1700000000", "md5=00"), ("1700000000", "sha256=ü"), ("1700000000", "sha256="),
])
def test_malformed_headers_fail_without_raising_other_errors(timestamp: str | None, signature: str | None) -> None:
    assert verify_report_signature(b"{}", timestamp, signature, SECRET, now=1700000000) is False


def test_uppercase_hex_and_surrounding_spaces_are_accepted() -> None:
    signature = sign_report(b"{}", "1700000000", SECRET)
    upper = "sha256=" + signature.removeprefix("sha256=").upper()
    assert verify_report_signature(b"{}", " 1700000000 ", f" {upper} ", SECRET, now=1700000000) is True


def test_empty_secret_never_verifies() -> None:
    signature = sign_report(b"{}", "1700000000", "")
    assert verify_report_signature(b"{}", "1700000000", signature, "", now=1700000000) is False
