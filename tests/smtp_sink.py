"""A scriptable SMTP server for the test suite, built on aiosmtpd.

The sink listens on a loopback port in a background thread with its own event loop, records every
accepted message in a thread-safe ledger and can be told, while running, to reject, stall or drop
connections at given stages of the SMTP dialogue::

    with SmtpSink() as sink:
        sink.on_rcpt("gone@example.com", 550, "5.1.1 no such user")
        sink.drop("after_data", times=1)  # accept the first message but lose the 250 reply
        ...  # point the code under test at (sink.host, sink.port)
        [received] = sink.wait_for(1)

Scripted rules are checked in order of registration; a rule with ``times=N`` applies to the next N
matching events only, a rule with ``times=None`` forever. ``reset_script()`` clears them all.
"""

from __future__ import annotations

import asyncio
import email
import email.message
import email.policy
import threading
import time
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from typing import Any, Literal, NoReturn

from aiosmtpd.controller import UnthreadedController
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

__all__ = ["DropStage", "HangStage", "Received", "SmtpSink"]

HangStage = Literal["banner", "mail", "rcpt", "data"]
DropStage = Literal["banner", "mail", "rcpt", "data", "after_data", "after_reply"]

_HANG_STAGES = frozenset({"banner", "mail", "rcpt", "data"})
_DROP_STAGES = frozenset({"banner", "mail", "rcpt", "data", "after_data", "after_reply"})
_SERVER_NAME = "smtp-sink.test"  # fixed, so aiosmtpd never calls socket.getfqdn()
_ANY = "*"


@dataclass(frozen=True)
class Received:
    """One message the sink accepted (the final reply to DATA was a 2xx)."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes  # the raw message as received, CRLF line endings, dot-stuffing removed
    received_at: float  # time.time() when the sink accepted the data, just before its reply
    message_id: str | None
    auth_login: str | None = None  # the AUTH user of the session, if it authenticated
    peer: tuple[str, int] | None = field(default=None, compare=False)

    @property
    def message(self) -> email.message.EmailMessage:
        """The message parsed with the modern email policy."""
        parsed = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(parsed, email.message.EmailMessage)
        return parsed

    @property
    def subject(self) -> str | None:
        subject = self.message["Subject"]
        return None if subject is None else str(subject)


@dataclass
class _Rule:
    kind: str  # "mail" | "rcpt" | "data" (reply overrides), "hang", "drop"
    key: str  # the recipient for "rcpt" ("*" for any), the stage for "hang"/"drop", "*" otherwise
    code: int = 0
    text: str = ""
    seconds: float = 0.0
    remaining: int | None = None  # None: forever

    @property
    def reply(self) -> str:
        return f"{self.code} {self.text}".rstrip()


class _Script:
    """The scripted behaviour: an ordered list of rules plus the AUTH settings, behind one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[_Rule] = []
        self._credentials: tuple[str, str] | None = None

    def add(self, rule: _Rule) -> None:
        if rule.remaining is not None and rule.remaining < 1:
            raise ValueError("times must be a positive number or None")
        with self._lock:
            self._rules.append(rule)

    def take(self, kind: str, key: str = _ANY) -> _Rule | None:
        """The first matching rule, consuming one of its uses."""
        with self._lock:
            for index, rule in enumerate(self._rules):
                if rule.kind != kind or rule.key not in (key, _ANY):
                    continue
                if rule.remaining is not None:
                    rule.remaining -= 1
                    if rule.remaining == 0:
                        del self._rules[index]
                return rule
        return None

    def reset(self) -> None:
        with self._lock:
            self._rules.clear()
            self._credentials = None

    def set_credentials(self, credentials: tuple[str, str] | None) -> None:
        with self._lock:
            self._credentials = credentials

    @property
    def credentials(self) -> tuple[str, str] | None:
        with self._lock:
            return self._credentials


def _reply(code: int, text: str) -> tuple[int, str]:
    if not 200 <= code <= 599:
        raise ValueError(f"not an SMTP reply code: {code}")
    return code, text


class _SinkSMTP(SMTP):
    """aiosmtpd's protocol, plus connection bookkeeping, the banner stage and a dynamic AUTH rule."""

    def __init__(self, sink: SmtpSink, handler: _Handler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.sink = sink

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None  # connection_made runs again after STARTTLS
        super().connection_made(transport)
        if first:
            self.sink._connection_made(self)

    def connection_lost(self, error: Exception | None) -> None:
        self.sink._connection_lost(self)
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        script = self.sink._script
        if rule := script.take("hang", "banner"):
            await asyncio.sleep(rule.seconds)
        if script.take("drop", "banner"):
            await _drop_connection(self)
        await super()._handle_client()

    async def check_auth_needed(self, caller_method: str) -> bool:
        # Decided per command rather than per connection, so sink.auth() applies to open connections.
        assert self.session is not None
        if self.sink._script.credentials is not None and not self.session.authenticated:
            await self.push("530 5.7.0 Authentication required")
            return True
        return False


async def _drop_connection(server: SMTP, *, graceful: bool = False) -> NoReturn:
    """Close the client connection without a reply and end the session.

    ``abort()`` discards anything still buffered, so whatever aiosmtpd would push next is never
    sent; closing the transport makes aiosmtpd cancel the session task, which is the one awaiting
    here, so the command being handled never returns.
    """
    transport = server.transport
    if transport is not None:
        if graceful:
            transport.close()
        else:
            transport.abort()  # type: ignore[attr-defined]
    await server.loop.create_future()  # cancelled by SMTP.connection_lost()
    raise AssertionError("unreachable")  # pragma: no cover


class _Handler:
    """aiosmtpd handler hooks that consult the sink's script."""

    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink
        self.script = sink._script

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        # aiosmtpd reads commands one line at a time, so pipelined ones are answered in order.
        session.host_name = hostname
        if self.sink.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def _stall_or_drop(self, server: SMTP, stage: str) -> None:
        if rule := self.script.take("hang", stage):
            await asyncio.sleep(rule.seconds)
        if self.script.take("drop", stage):
            await _drop_connection(server)

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        self.sink._count_transaction()
        await self._stall_or_drop(server, "mail")
        reply = "250 OK"
        if rule := self.script.take("mail"):
            reply = rule.reply
            if not 200 <= rule.code < 300:
                return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return reply

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        await self._stall_or_drop(server, "rcpt")
        reply = "250 OK"
        if rule := self.script.take("rcpt", address.lower()):
            reply = rule.reply
            if not 200 <= rule.code < 300:
                return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return reply

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.script.take("drop", "data"):
            await _drop_connection(server)
        rule = self.script.take("data")
        reply = rule.reply if rule else "250 2.0.0 OK: queued"
        if rule is None or 200 <= rule.code < 300:
            self.sink._record(session, envelope)
        if hang := self.script.take("hang", "data"):
            await asyncio.sleep(hang.seconds)
        if self.script.take("drop", "after_data"):
            await _drop_connection(server)
        if self.script.take("drop", "after_reply"):
            await server.push(reply)
            await _drop_connection(server, graceful=True)
        return reply


class _Controller(UnthreadedController):
    """aiosmtpd's controller creating our protocol class; the sink runs the loop in its own thread."""

    def __init__(self, sink: SmtpSink, port: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(
            _Handler(sink),
            hostname=sink.host,
            port=port,
            loop=loop,
            server_hostname=_SERVER_NAME,
            auth_require_tls=False,  # advertise AUTH on the plain connection; sink decides if it is required
            authenticator=sink._authenticate,
        )
        self.sink = sink

    def factory(self) -> _SinkSMTP:
        return _SinkSMTP(self.sink, self.handler, loop=self.loop, **self.SMTP_kwargs)


class SmtpSink:
    """An SMTP server on 127.0.0.1 that records what it accepts and misbehaves on demand.

    ``port=0`` (the default) picks a free port at the first ``start()``; later starts of the same
    instance reuse it, and ``SmtpSink(port=p)`` binds a given port (e.g. that of a stopped sink).
    The ledger and counters survive ``stop()``/``start()``. ``pipelining=False`` leaves PIPELINING
    out of the EHLO answer, so clients talk one command at a time.
    """

    host = "127.0.0.1"

    def __init__(self, port: int = 0, *, pipelining: bool = True) -> None:
        self.port = port
        self.pipelining = pipelining  # advertise PIPELINING (RFC 2920), as most servers do
        self._script = _Script()
        self._lock = threading.Condition()
        self._messages: list[Received] = []
        self._connections = 0
        self._transactions = 0
        self._live: set[_SinkSMTP] = set()  # touched only on the sink's event loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._controller: _Controller | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> SmtpSink:
        """Bind the port and serve in a background thread; returns self."""
        if self._thread is not None:
            raise RuntimeError("SmtpSink is already running")
        loop = asyncio.new_event_loop()
        controller = _Controller(self, self.port, loop)
        ready = threading.Event()
        failure: list[OSError] = []

        def serve() -> None:
            try:
                controller.begin()  # binds; sets this thread's event loop
            except OSError as error:  # e.g. the port is taken
                failure.append(error)
                loop.close()
                return
            finally:
                ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        thread = threading.Thread(target=serve, name=f"smtp-sink:{self.port or 'new'}", daemon=True)
        thread.start()
        if not ready.wait(10.0):
            raise RuntimeError("SmtpSink did not start within 10 s")
        if failure:
            thread.join()
            raise failure[0]
        if not isinstance(controller.server, asyncio.Server):
            raise RuntimeError("SmtpSink failed to start (see the thread's traceback)")
        self.port = controller.server.sockets[0].getsockname()[1]
        self._loop, self._controller, self._thread = loop, controller, thread
        return self

    def stop(self) -> None:
        """Close the listening socket and drop every open connection; a no-op when not running."""
        loop, controller, thread = self._loop, self._controller, self._thread
        if loop is None or controller is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(controller), loop).result(timeout=10.0)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10.0)
        self._loop = self._controller = self._thread = None

    async def _shutdown(self, controller: _Controller) -> None:
        assert controller.server is not None
        controller.server.close()  # no new connections from here on
        for protocol in list(self._live):
            if protocol.transport is not None:
                protocol.transport.abort()  # type: ignore[attr-defined]
        await controller.finalize()
        current = asyncio.current_task()
        tasks = [task for task in asyncio.all_tasks() if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0)  # let the aborted transports run their connection_lost callbacks

    @property
    def running(self) -> bool:
        return self._thread is not None

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<SmtpSink {self.host}:{self.port} {state}, {len(self.messages)} messages>"

    # -- ledger and counters -----------------------------------------------------------------

    @property
    def messages(self) -> list[Received]:
        """A copy of the accepted messages, oldest first."""
        with self._lock:
            return list(self._messages)

    @property
    def connections(self) -> int:
        """TCP connections accepted so far."""
        with self._lock:
            return self._connections

    @property
    def transactions(self) -> int:
        """MAIL FROM commands seen so far (rejected ones included)."""
        with self._lock:
            return self._transactions

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Block until at least ``count`` messages were accepted; AssertionError on timeout."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._messages) >= count, timeout):
                got = [(m.mail_from, m.rcpt_tos, m.message_id) for m in self._messages]
                raise AssertionError(f"expected {count} message(s) within {timeout} s, got {len(got)}: {got}")
            return list(self._messages)

    def clear(self) -> None:
        """Forget the accepted messages and reset the counters."""
        with self._lock:
            self._messages.clear()
            self._connections = 0
            self._transactions = 0

    # -- script ------------------------------------------------------------------------------

    def on_rcpt(self, address: str, code: int, text: str, times: int | None = None) -> None:
        """Reply ``code text`` to RCPT TO for ``address`` ("*" = any); a 2xx code still accepts it."""
        code, text = _reply(code, text)
        self._script.add(_Rule("rcpt", address.lower(), code=code, text=text, remaining=times))

    def on_mail(self, code: int, text: str, times: int | None = None) -> None:
        """Reply ``code text`` to MAIL FROM (any sender); a 2xx code still accepts it."""
        code, text = _reply(code, text)
        self._script.add(_Rule("mail", _ANY, code=code, text=text, remaining=times))

    def on_data(self, code: int, text: str, times: int | None = None) -> None:
        """Reply ``code text`` after the final dot; only a 2xx code puts the message in the ledger."""
        code, text = _reply(code, text)
        self._script.add(_Rule("data", _ANY, code=code, text=text, remaining=times))

    def hang(self, stage: HangStage, seconds: float, times: int | None = None) -> None:
        """Wait ``seconds`` before replying at ``stage``.

        "banner": before the 220 greeting; "mail"/"rcpt": before the reply to that command;
        "data": after the message was accepted (it is in the ledger) and before the final reply.
        """
        if stage not in _HANG_STAGES:
            raise ValueError(f"hang stage must be one of {sorted(_HANG_STAGES)}, not {stage!r}")
        self._script.add(_Rule("hang", stage, seconds=seconds, remaining=times))

    def drop(self, stage: DropStage, times: int | None = None) -> None:
        """Close the connection abruptly at ``stage``, without a reply.

        "banner": instead of the greeting; "mail"/"rcpt": on that command; "data": after the message
        arrived, not accepted; "after_data": accepted (in the ledger) but the reply is never sent;
        "after_reply": accepted, the reply sent, then the connection closed.
        """
        if stage not in _DROP_STAGES:
            raise ValueError(f"drop stage must be one of {sorted(_DROP_STAGES)}, not {stage!r}")
        self._script.add(_Rule("drop", stage, remaining=times))

    def auth(self, user: str, password: str) -> None:
        """Require AUTH (PLAIN or LOGIN, no TLS) with these credentials; others get 535."""
        self._script.set_credentials((user, password))

    def set_password(self, password: str) -> None:
        """Change the accepted password (for new AUTH commands; sessions already in stay in)."""
        credentials = self._script.credentials
        if credentials is None:
            raise RuntimeError("call auth(user, password) first")
        self._script.set_credentials((credentials[0], password))

    def reset_script(self) -> None:
        """Forget every scripted rule and the AUTH requirement; the ledger is kept."""
        self._script.reset()

    # -- callbacks from the event loop thread ------------------------------------------------

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        credentials = self._script.credentials
        login = auth_data.login.decode("utf-8", "replace")
        password = auth_data.password.decode("utf-8", "replace")
        if credentials is not None and (login, password) != credentials:
            return AuthResult(success=False, handled=False)  # aiosmtpd replies 535 5.7.8
        return AuthResult(success=True, auth_data=auth_data)

    def _connection_made(self, protocol: _SinkSMTP) -> None:
        self._live.add(protocol)
        with self._lock:
            self._connections += 1

    def _connection_lost(self, protocol: _SinkSMTP) -> None:
        self._live.discard(protocol)

    def _count_transaction(self) -> None:
        with self._lock:
            self._transactions += 1

    def _record(self, session: Session, envelope: Envelope) -> None:
        data = envelope.original_content or b""
        message_id = BytesHeaderParser(policy=email.policy.default).parsebytes(data)["Message-ID"]
        auth_data = session.auth_data
        received = Received(
            mail_from=envelope.mail_from or "",
            rcpt_tos=tuple(envelope.rcpt_tos),
            data=data,
            received_at=time.time(),
            message_id=None if message_id is None else str(message_id).strip(),
            auth_login=auth_data.login.decode("utf-8", "replace") if isinstance(auth_data, LoginPassword) else None,
            peer=session.peer if isinstance(session.peer, tuple) else None,
        )
        with self._lock:
            self._messages.append(received)
            self._lock.notify_all()
