"""The fault proxy itself, against a small echo server (no product code involved)."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from tests.reliability.faultproxy import FaultProxy

pytestmark = [pytest.mark.postgres, pytest.mark.reliability]


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: _EchoServer = self.server  # type: ignore[assignment]
        server.connections += 1
        while True:
            try:
                data = self.request.recv(65536)
            except OSError:
                return
            if not data:
                return
            with server.lock:
                server.received += data
            self.request.sendall(b"echo:" + data)


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Echo)
        self.lock = threading.Lock()
        self.received = b""
        self.connections = 0


@pytest.fixture
def echo() -> Iterator[_EchoServer]:
    server = _EchoServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(echo: _EchoServer) -> Iterator[FaultProxy]:
    with FaultProxy(echo.server_address) as running:  # type: ignore[arg-type]
        yield running


def connect(proxy: FaultProxy) -> socket.socket:
    return socket.create_connection(proxy.address, timeout=2)


def read_some(sock: socket.socket, timeout: float = 2.0) -> bytes:
    """What arrives within `timeout`; b"" when the peer closed (or reset) the connection."""
    sock.settimeout(timeout)
    try:
        return sock.recv(65536)
    except ConnectionResetError:
        return b""


def test_pass_through_forwards_both_ways(proxy: FaultProxy, echo: _EchoServer) -> None:
    with connect(proxy) as sock:
        sock.sendall(b"hello")
        assert read_some(sock) == b"echo:hello"
    assert echo.received == b"hello"


def test_latency_holds_every_chunk(proxy: FaultProxy) -> None:
    proxy.latency(0.5, direction="down")
    with connect(proxy) as sock:
        started = time.monotonic()
        sock.sendall(b"slow")
        assert read_some(sock, timeout=5) == b"echo:slow"
        assert time.monotonic() - started >= 0.5


def test_blackhole_accepts_and_never_forwards(proxy: FaultProxy, echo: _EchoServer) -> None:
    proxy.blackhole()
    with connect(proxy) as sock:
        sock.sendall(b"anyone?")
        with pytest.raises(TimeoutError):
            read_some(sock, timeout=0.5)
    assert echo.connections == 0
    proxy.pass_through()
    with connect(proxy) as sock:
        sock.sendall(b"back")
        assert read_some(sock) == b"echo:back"


def test_cut_after_bytes_gives_the_server_exactly_n_bytes(proxy: FaultProxy, echo: _EchoServer) -> None:
    proxy.cut_after_bytes(10, times=1)
    with connect(proxy) as sock:
        sock.sendall(b"0123456789abcdef")
        reply = read_some(sock)
        assert not reply.startswith(b"echo:0123456789a")
        assert read_some(sock) == b""  # cut
    deadline = time.monotonic() + 2
    while not echo.received and time.monotonic() < deadline:
        time.sleep(0.05)
    assert echo.received == b"0123456789"
    assert proxy.cuts == 1
    assert proxy.mode == "pass"  # used up
    with connect(proxy) as sock:
        sock.sendall(b"whole message")
        assert read_some(sock) == b"echo:whole message"


def test_cut_after_reply_loses_the_answer_to_the_end_of_data(proxy: FaultProxy, echo: _EchoServer) -> None:
    proxy.cut_after_reply(times=1)
    with connect(proxy) as sock:
        sock.sendall(b"MAIL FROM:<a@b>\r\n")
        assert read_some(sock) == b"echo:MAIL FROM:<a@b>\r\n"  # before the end of data: forwarded
        sock.sendall(b"Subject: x\r\n\r\nbody\r\n.\r\n")
        assert read_some(sock) == b""  # the server answered; the client never sees it
    deadline = time.monotonic() + 2
    while not echo.received.endswith(b"\r\n.\r\n") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert echo.received.endswith(b"body\r\n.\r\n")  # the server had the whole message
    assert proxy.cuts == 1


def test_refuse_closes_the_port_and_any_other_mode_opens_it_again(proxy: FaultProxy) -> None:
    proxy.refuse()
    with pytest.raises(ConnectionRefusedError):
        connect(proxy)
    proxy.pass_through()
    with connect(proxy) as sock:
        sock.sendall(b"again")
        assert read_some(sock) == b"echo:again"


def test_reset_and_close_connections(proxy: FaultProxy) -> None:
    with connect(proxy) as open_one:
        open_one.sendall(b"x")
        assert read_some(open_one) == b"echo:x"
        proxy.close_connections()
        assert read_some(open_one) == b""
    proxy.reset()
    with connect(proxy) as sock:
        assert read_some(sock) == b""
