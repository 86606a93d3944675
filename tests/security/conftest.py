"""Fixtures of the security suite: outbound-connection and file-open recorders, hostile servers."""

from __future__ import annotations

import ipaddress
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient

from tenants.models import Tenant
from tenants.services import create_api_key
from tests.file_server import FileServer
from tests.security.servers import HostileServer
from tests.test_isolation import victim  # noqa: F401 (a fixture shared with the isolation walk)


@dataclass
class Sentry:
    """Every outbound `connect()` of this process while active; only loopback ones go through.

    The guard under test must refuse before connecting. Should it ever fail to, a private,
    link-local or metadata address is still never contacted from a test run: the attempt is
    recorded and answered with ENETUNREACH.
    """

    attempts: list[tuple[str, int]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def to_port(self, port: int) -> list[tuple[str, int]]:
        with self._lock:
            return [attempt for attempt in self.attempts if attempt[1] == port]

    def outside_loopback(self) -> list[tuple[str, int]]:
        with self._lock:
            return [attempt for attempt in self.attempts if not _is_loopback(attempt[0])]


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


@pytest.fixture
def sentry(monkeypatch: pytest.MonkeyPatch) -> Sentry:
    record = Sentry()
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def check(address: Any) -> None:
        if isinstance(address, tuple) and len(address) >= 2 and isinstance(address[0], str):
            host, port = address[0], int(address[1])
            with record._lock:
                record.attempts.append((host, port))
            if not _is_loopback(host):
                raise OSError(101, f"the security suite blocks connections outside loopback ({host})")

    def connect(self: socket.socket, address: Any) -> None:
        check(address)
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        check(address)
        return real_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    return record


class OpenRecorder:
    """Paths this process opened (the `open` audit event: builtins.open and os.open) while recording."""

    def __init__(self) -> None:
        self.active = False
        self.paths: list[str] = []
        self._lock = threading.Lock()

    def hook(self, event: str, args: tuple[Any, ...]) -> None:
        if self.active and event == "open" and args and isinstance(args[0], str | bytes):
            path = args[0].decode(errors="replace") if isinstance(args[0], bytes) else args[0]
            with self._lock:
                self.paths.append(path)

    def under(self, folder: Path) -> list[str]:
        with self._lock:
            return [path for path in self.paths if str(folder) in path]


_RECORDER = OpenRecorder()
sys.addaudithook(_RECORDER.hook)  # audit hooks cannot be removed; this one records only while active


@pytest.fixture
def opened() -> Iterator[OpenRecorder]:
    _RECORDER.paths.clear()
    _RECORDER.active = True
    try:
        yield _RECORDER
    finally:
        _RECORDER.active = False


@pytest.fixture
def files() -> Iterator[FileServer]:
    server = FileServer()
    yield server
    server.close()


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    with HostileServer() as server:
        yield server


@pytest.fixture
def raw_client_for() -> Callable[[Tenant | None], APIClient]:
    """A client that answers a server error with the 500 page instead of raising in the test.

    `None` gives an admin client.
    """

    def make(tenant: Tenant | None) -> APIClient:
        from tests.conftest import ADMIN_TOKEN

        client = APIClient(raise_request_exception=False)
        client.credentials(HTTP_X_API_TOKEN=ADMIN_TOKEN if tenant is None else create_api_key(tenant=tenant).raw)
        return client

    return make


@pytest.fixture
def raw_client(tenant: Tenant, raw_client_for: Callable[[Tenant | None], APIClient]) -> APIClient:
    return raw_client_for(tenant)
