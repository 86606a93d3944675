from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from pytest_django.live_server_helper import LiveServer

from delivery import smtp
from mailproxy_client import MailProxyClient
from tenants.models import SmtpAccount, Tenant
from tenants.services import create_api_key


@pytest.fixture
def api_key(tenant: Tenant) -> str:
    """A fresh raw API key of the `acme` tenant."""
    return create_api_key(tenant=tenant, label="client tests").raw


@pytest.fixture
def proxy(live_server: LiveServer, api_key: str, smtp_account: SmtpAccount) -> Iterator[MailProxyClient]:
    """The client against the real API served by a live HTTP server thread."""
    with MailProxyClient(live_server.url, api_key, timeout=20) as client:
        yield client


@pytest.fixture
def closed_port() -> int:
    """A loopback port nobody listens on (bound once to pick it, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(autouse=True)
def _fresh_pool() -> Iterator[None]:
    # Pooled SMTP connections point at the previous test's sink.
    smtp.pool.close_all()
    yield
    smtp.pool.close_all()
