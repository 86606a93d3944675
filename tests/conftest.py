from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from django.conf import settings
from django.db import connection
from rest_framework.test import APIClient

from tenants.models import SmtpAccount, Tenant
from tenants.services import create_api_key
from tests.factories import SmtpAccountFactory, TenantFactory
from tests.smtp_sink import SmtpSink
from tests.tenant_app import TenantApp


def pytest_report_header(config: pytest.Config) -> str:
    engine = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
    return f"database: {engine} ({settings.DATABASES['default'].get('HOST') or settings.DATABASES['default']['NAME']})"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
        return
    skip = pytest.mark.skip(reason="needs PostgreSQL; the PostgreSQL run of `make test` covers it")
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    terminalreporter.write_line(f"database vendor used: {connection.vendor}")


ADMIN_TOKEN = settings.GMP_API_TOKEN


@pytest.fixture(autouse=True)
def _fresh_redis() -> None:
    """Rate-limit buckets and queued tasks of one test must not reach the next (ids repeat)."""
    if settings.GMP_RATE_LIMITER == "redis":
        redis.Redis.from_url(settings.REDIS_URL).flushdb()


@pytest.fixture
def api_client() -> APIClient:
    return APIClient()


@pytest.fixture
def admin_client() -> APIClient:
    client = APIClient()
    client.credentials(HTTP_X_API_TOKEN=ADMIN_TOKEN)
    return client


@pytest.fixture
def tenant(db: None) -> Tenant:
    return TenantFactory(id="acme")


@pytest.fixture
def other_tenant(db: None) -> Tenant:
    return TenantFactory(id="globex")


@pytest.fixture
def account(tenant: Tenant) -> SmtpAccount:
    return SmtpAccountFactory(tenant=tenant, external_id="main")


@pytest.fixture
def other_account(other_tenant: Tenant) -> SmtpAccount:
    return SmtpAccountFactory(tenant=other_tenant, external_id="main")


@pytest.fixture
def client_for() -> Callable[[Tenant], APIClient]:
    """An API client authenticated with a fresh key of the given tenant."""

    def make(tenant: Tenant) -> APIClient:
        client = APIClient()
        client.credentials(HTTP_X_API_TOKEN=create_api_key(tenant=tenant).raw)
        return client

    return make


@pytest.fixture
def tenant_client(tenant: Tenant, client_for: Callable[[Tenant], APIClient]) -> APIClient:
    return client_for(tenant)


@pytest.fixture
def other_client(other_tenant: Tenant, client_for: Callable[[Tenant], APIClient]) -> APIClient:
    return client_for(other_tenant)


def message(**overrides: Any) -> dict[str, Any]:
    """A valid message payload; override any field."""
    payload: dict[str, Any] = {
        "id": "msg-1",
        "from": "Sender <sender@example.com>",
        "to": ["rcpt@example.com"],
        "subject": "Hello",
        "body": "Hi there",
    }
    payload.update(overrides)
    return {key: value for key, value in payload.items() if value is not ...}


@pytest.fixture
def smtp_server() -> Iterator[SmtpSink]:
    """A real SMTP server on a free loopback port, scriptable per test."""
    with SmtpSink() as sink:
        yield sink


@pytest.fixture
def smtp_account(tenant: Tenant, smtp_server: SmtpSink) -> SmtpAccount:
    """The tenant's default account, pointing at the test SMTP server (no TLS, no auth)."""
    return SmtpAccountFactory(tenant=tenant, external_id="main", host=smtp_server.host, port=smtp_server.port,
                              user="", password_encrypted="", security="none", timeout=5)


@pytest.fixture
def tenant_app() -> Iterator[TenantApp]:
    """The tenant's application on loopback: records report calls, answers per a plan."""
    with TenantApp() as app:
        yield app
