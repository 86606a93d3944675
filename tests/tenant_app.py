"""A real HTTP server on loopback playing a tenant's application (the sync endpoint).

It records every request and answers per a plan: a list of answers used in order, then
the default answer. An optional hook runs on each call (e.g. to submit the next messages
before answering), as a real application would.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Call:
    path: str
    headers: dict[str, str]
    raw: bytes
    received_at: float

    @property
    def items(self) -> list[dict[str, Any]]:
        return list(json.loads(self.raw)["delivery_report"])


@dataclass
class Answer:
    status: int = 200
    body: Any = field(default_factory=lambda: {"ok": True, "queued": 0})
    delay: float = 0.0
    raw: bytes | None = None  # sent as is (for non-JSON answers)


class TenantApp:
    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.plan: list[Answer] = []
        self.default = Answer()
        self.hook: Callable[[Call], Answer | None] | None = None
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        app = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # the http.server API names it so
                length = int(self.headers.get("Content-Length") or 0)
                call = Call(path=self.path, headers={k.lower(): v for k, v in self.headers.items()},
                            raw=self.rfile.read(length), received_at=time.time())
                answer = app._answer_for(call)
                if answer.delay:
                    time.sleep(answer.delay)
                payload = answer.raw if answer.raw is not None else json.dumps(answer.body).encode()
                try:
                    self.send_response(answer.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the proxy gave up waiting (a timeout test)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def _answer_for(self, call: Call) -> Answer:
        answer = self.hook(call) if self.hook else None
        with self._changed:
            self.calls.append(call)
            if answer is None:
                answer = self.plan.pop(0) if self.plan else self.default
            self._changed.notify_all()
        return answer

    def start(self) -> TenantApp:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> TenantApp:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reported_ids(self) -> list[int]:
        with self._lock:
            return [item["event_id"] for call in self.calls for item in call.items]

    def wait_for_calls(self, count: int, timeout: float = 10.0) -> list[Call]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.calls) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"expected {count} calls, got {len(self.calls)}")
                self._changed.wait(left)
            return list(self.calls)
