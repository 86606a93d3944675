"""A TCP fault proxy for the reliability suite, switchable while it runs.

It sits between the proxy's workers and a server of the test (the SMTP sink, a tenant's
HTTP application) and misbehaves on demand::

    with FaultProxy(sink.address) as proxy:
        account.port = proxy.port
        proxy.blackhole()           # accept, never forward: the worker waits for a banner
        proxy.pass_through()
        proxy.cut_after_reply(times=1)  # the server's final reply never reaches the worker

Modes:

- ``pass_through()``: forward both ways.
- ``latency(seconds, direction)``: hold every chunk that long before forwarding it
  (``"up"`` client→server, ``"down"`` server→client, ``"both"``).
- ``blackhole()``: new connections are accepted and never connected upstream; chunks of
  open connections are dropped. Nothing is answered.
- ``cut_after_bytes(n, times)``: the next ``times`` connections are cut (both sides
  closed) once ``n`` bytes went client→server; the server gets exactly ``n`` bytes.
- ``cut_after_reply(times)``: the next ``times`` connections are cut at the server's
  first bytes after the client's end of data (``CRLF.CRLF``), and those bytes are not
  forwarded: the server has answered, the client never reads it.
- ``refuse()``: the listening socket is closed: connecting fails with ECONNREFUSED. Any
  other mode binds the same port again.
- ``reset()``: connections are accepted and reset at once (RST).

The modes with ``times`` fall back to pass-through when used up. One thread accepts, one
thread per connection moves the bytes (a ``select`` loop, so a mode change is seen
within 50 ms, even by open connections).
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass

__all__ = ["FaultProxy"]

END_OF_DATA = b"\r\n.\r\n"
_TICK = 0.05


@dataclass(frozen=True)
class _Mode:
    kind: str = "pass"  # pass | latency | blackhole | cut_bytes | cut_reply | refuse | reset
    seconds: float = 0.0
    direction: str = "both"
    limit: int = 0
    times: int | None = None


class _Link:
    """One client connection and its upstream connection (None when blackholed)."""

    def __init__(self, client: socket.socket, upstream: socket.socket | None, mode: _Mode) -> None:
        self.client = client
        self.upstream = upstream
        self.cut_at = mode.limit if mode.kind == "cut_bytes" else None
        self.cut_on_reply = mode.kind == "cut_reply"
        self.forwarded_up = 0
        self.tail = b""  # the last bytes client→server, to see CRLF.CRLF across chunks
        self.data_ended = False
        self.pending: deque[tuple[float, socket.socket, bytes]] = deque()


def _abort(sock: socket.socket | None) -> None:
    """Close with RST, as a crashed peer or a cut cable would."""
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class FaultProxy:
    host = "127.0.0.1"

    def __init__(self, upstream: tuple[str, int], port: int = 0) -> None:
        self.upstream = upstream
        self.port = port
        self._mode = _Mode()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._links: set[_Link] = set()
        self.accepted = 0  # connections accepted (reset ones included)
        self.cuts = 0  # connections cut by cut_after_bytes / cut_after_reply

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._bind()
        self._thread = threading.Thread(target=self._accept_loop, name=f"faultproxy:{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._unbind()
        self.close_connections()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def mode(self) -> str:
        return self._mode.kind

    def close_connections(self) -> None:
        """Reset every open connection (e.g. pooled SMTP sessions when an outage begins)."""
        with self._lock:
            links, self._links = list(self._links), set()
        for link in links:
            _abort(link.client)
            _abort(link.upstream)

    # -- modes ---------------------------------------------------------------------------

    def pass_through(self) -> None:
        self._set(_Mode())

    def latency(self, seconds: float, direction: str = "both") -> None:
        if direction not in ("up", "down", "both"):
            raise ValueError("direction must be up, down or both")
        self._set(_Mode("latency", seconds=seconds, direction=direction))

    def blackhole(self) -> None:
        self._set(_Mode("blackhole"))

    def cut_after_bytes(self, limit: int, times: int | None = None) -> None:
        self._set(_Mode("cut_bytes", limit=limit, times=times))

    def cut_after_reply(self, times: int | None = None) -> None:
        self._set(_Mode("cut_reply", times=times))

    def refuse(self) -> None:
        self._set(_Mode("refuse"))

    def reset(self) -> None:
        self._set(_Mode("reset"))

    def _set(self, mode: _Mode) -> None:
        if mode.times is not None and mode.times < 1:
            raise ValueError("times must be a positive number or None")
        with self._lock:
            self._mode = mode
        if mode.kind == "refuse":
            self._unbind()
        elif self._listener is None and not self._stopping.is_set():
            self._bind()

    def _take_mode(self) -> _Mode:
        """The mode for a new connection, consuming one use of a counted mode."""
        with self._lock:
            mode = self._mode
            if mode.times is not None:
                left = mode.times - 1
                self._mode = _Mode() if left == 0 else _Mode(mode.kind, mode.seconds, mode.direction, mode.limit, left)
            return mode

    # -- listening -----------------------------------------------------------------------

    def _bind(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        self._listener = listener

    def _unbind(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            # shutdown() first: the accept thread's select() holds the socket open, and a
            # merely closed listener would go on accepting until that select returns.
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            listener = self._listener
            if listener is None:
                time.sleep(_TICK)
                continue
            try:
                ready, _, _ = select.select([listener], [], [], _TICK)
                if not ready:
                    continue
                client, _ = listener.accept()
            except (OSError, ValueError):  # closed by refuse() under our feet
                continue
            self.accepted += 1
            mode = self._take_mode()
            if mode.kind == "reset":
                _abort(client)
                continue
            threading.Thread(target=self._serve, args=(client, mode), daemon=True).start()

    # -- moving bytes --------------------------------------------------------------------

    def _serve(self, client: socket.socket, mode: _Mode) -> None:
        upstream = None
        if mode.kind != "blackhole":
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _abort(client)
                return
        # A small receive buffer: what the client believes written is close to what was forwarded.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        link = _Link(client, upstream, mode)
        with self._lock:
            self._links.add(link)
        try:
            self._pump(link)
        except (OSError, ValueError):  # a peer vanished, or close_connections() closed the sockets
            pass
        finally:
            with self._lock:
                self._links.discard(link)
            for sock in (link.client, link.upstream):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()

    def _pump(self, link: _Link) -> None:
        sockets = [link.client] if link.upstream is None else [link.client, link.upstream]
        while not self._stopping.is_set():
            if any(sock.fileno() == -1 for sock in sockets):
                return  # closed by close_connections()
            ready, _, _ = select.select(sockets, [], [], _TICK)
            for sock in ready:
                data = sock.recv(65536)
                if not data:
                    self._flush(link, until=float("inf"))
                    return  # one side closed: close the other too
                if not self._handle(link, sock, data):
                    return
            self._flush(link, until=time.monotonic())

    def _handle(self, link: _Link, source: socket.socket, data: bytes) -> bool:
        """Forward (or hold, or drop) one chunk; False when the link was cut."""
        mode = self._mode
        up = source is link.client
        if link.upstream is None or mode.kind == "blackhole":
            return True  # swallowed
        if up:
            if link.cut_at is not None and link.forwarded_up + len(data) >= link.cut_at:
                data = data[: link.cut_at - link.forwarded_up]
                self._flush(link, until=float("inf"))
                if data:
                    link.upstream.sendall(data)
                self.cuts += 1
                _abort(link.client)  # at once: a client still writing sees the reset mid-write
                time.sleep(0.2)  # let the server read its bytes before it sees the connection die
                _abort(link.upstream)
                return False
            link.forwarded_up += len(data)
            if link.cut_on_reply:
                link.tail = (link.tail + data)[-len(END_OF_DATA):]
                if link.tail == END_OF_DATA or data.endswith(END_OF_DATA):
                    link.data_ended = True
        elif link.cut_on_reply and link.data_ended:
            return self._cut(link)  # the server's reply to the end of data: never delivered
        delay = mode.seconds if mode.kind == "latency" and mode.direction in ("both", "up" if up else "down") else 0
        target = link.upstream if up else link.client
        link.pending.append((time.monotonic() + delay, target, data))
        return True

    def _cut(self, link: _Link) -> bool:
        self.cuts += 1
        _abort(link.client)
        _abort(link.upstream)
        return False

    def _flush(self, link: _Link, *, until: float) -> None:
        while link.pending and link.pending[0][0] <= until:
            due, target, data = link.pending.popleft()
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            target.sendall(data)
