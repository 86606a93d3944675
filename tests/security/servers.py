"""A hostile HTTP server on loopback: endless bodies, compression bombs, redirects inward.

It counts requests per path and the bytes it managed to write, so a test can tell how much
a client read before it gave up.
"""

from __future__ import annotations

import functools
import threading
import zlib
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

CHUNK = 64 * 1024


@cache
@functools.lru_cache(maxsize=8)
def gzip_of_zeros(size: int) -> bytes:
    """`size` zero bytes, gzip-compressed (about 1,000 to 1), built 1 MB at a time: the server
    itself never holds the inflated size (a test measures the client's memory)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: the gzip container
    chunk = b"\0" * (1024 * 1024)
    parts = [packer.compress(chunk) for _ in range(size // len(chunk))]
    parts.append(packer.compress(b"\0" * (size % len(chunk))))
    parts.append(packer.flush())
    return b"".join(parts)


class HostileServer:
    """Routes: `/stream?mb=N` (N MB with no Content-Length), `/gzip?mb=N` (a gzip bomb of N MB),
    `/redirect?to=URL` (302 to URL); anything else 404."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.requests: list[str] = []
        self.bytes_written: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, 0), self._handler())
        self._server.daemon_threads = True
        self.port = int(self._server.server_port)
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)

    def __enter__(self) -> HostileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def count(self, path: str) -> int:
        with self._lock:
            return sum(1 for seen in self.requests if urlsplit(seen).path == path)

    def _wrote(self, path: str, amount: int) -> None:
        with self._lock:
            self.bytes_written[path] = self.bytes_written.get(path, 0) + amount

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # the body ends when the connection closes

            def do_GET(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                self._answer()

            def _answer(self) -> None:
                with server._lock:
                    server.requests.append(self.path)
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                try:
                    if parts.path == "/stream":
                        self._stream(int(float(query.get("mb", ["1"])[0]) * 1024 * 1024))
                    elif parts.path == "/gzip":
                        body = gzip_of_zeros(int(float(query.get("mb", ["1"])[0]) * 1024 * 1024))
                        self.send_response(200)
                        self.send_header("Content-Type", "application/octet-stream")
                        self.send_header("Content-Encoding", "gzip")
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        self.wfile.write(body)
                        server._wrote(parts.path, len(body))
                    elif parts.path == "/redirect":
                        self.send_response(302)
                        self.send_header("Location", query["to"][0])
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                    else:
                        self.send_response(404)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                except OSError:
                    pass  # the client hung up: what it read is what it got

            def _stream(self, total: int) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                block = b"A" * CHUNK
                sent = 0
                while sent < total:
                    piece = block[: min(CHUNK, total - sent)]
                    self.wfile.write(piece)
                    sent += len(piece)
                    server._wrote("/stream", len(piece))

            def log_message(self, format: str, *args: object) -> None:
                return

        return Handler
