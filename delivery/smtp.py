"""SMTP sessions: a per-process pool of connections per account, and one transaction.

`smtplib` in the worker (synchronous Celery workers, no event loop). The transaction is
driven command by command instead of `sendmail()`, so the worker knows exactly where a
failure happened: before the final dot nothing was delivered; after it, the server may
hold a copy (the one case where a duplicate is possible).
"""

from __future__ import annotations

import logging
import os
import re
import smtplib
import ssl
import time
from dataclasses import dataclass, field
from datetime import datetime

from delivery.mime import Envelope
from mailproxy import metrics
from tenants import crypto
from tenants.models import Security, SmtpAccount

logger = logging.getLogger(__name__)

IDLE_CHECK_SECONDS = 30
AUTH_CODES = (530, 534, 535)
CRLF = b"\r\n"
CR_OR_LF = re.compile(r"[\r\n]")


class Unreachable(Exception):
    """No session with the server: refused, timed out, TLS failed, or 421 at the greeting."""


class AuthRefused(Exception):
    """The server refused the account's credentials (or wants some it was not given)."""


@dataclass
class Outcome:
    """What one transaction achieved. `kind`: sent, temporary, permanent or unknown."""

    kind: str
    code: int | None = None
    error: str = ""
    refused: list[dict[str, object]] = field(default_factory=list)  # 5xx per recipient
    pending: list[str] = field(default_factory=list)  # 4xx per recipient: retry them alone
    broken: bool = False  # the connection must not be reused


def _reply(code: int, text: bytes | str) -> str:
    message = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    return f"{code} {' '.join(message.split())}".strip()


def _tls_context(account: SmtpAccount) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if not account.verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def connect(account: SmtpAccount) -> smtplib.SMTP:
    """Open, secure and authenticate a session for the account."""
    client: smtplib.SMTP | None = None
    try:
        if account.security == Security.SSL:
            client = smtplib.SMTP_SSL(account.host, account.port, timeout=account.timeout,
                                      context=_tls_context(account))
        else:
            client = smtplib.SMTP(account.host, account.port, timeout=account.timeout)
        client.ehlo()
        if account.security == Security.STARTTLS:
            client.starttls(context=_tls_context(account))
            client.ehlo()
        if account.user:
            client.login(account.user, crypto.decrypt(account.password_encrypted))
        return client
    except smtplib.SMTPAuthenticationError as exc:
        _close(client)
        raise AuthRefused(_reply(exc.smtp_code, exc.smtp_error)) from None
    except smtplib.SMTPNotSupportedError as exc:
        _close(client)
        raise Unreachable(f"server does not support what the account needs: {exc}") from None
    except smtplib.SMTPResponseException as exc:
        _close(client)
        raise Unreachable(_reply(exc.smtp_code, exc.smtp_error)) from None
    except smtplib.SMTPException as exc:  # e.g. "No suitable authentication method found"
        _close(client)
        if account.user and "auth" in str(exc).lower():
            raise AuthRefused(str(exc)) from None
        raise Unreachable(str(exc) or type(exc).__name__) from None
    except (OSError, ssl.SSLError) as exc:
        _close(client)
        raise Unreachable(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from None


def _close(client: smtplib.SMTP | None) -> None:
    if client is None:
        return
    try:
        client.quit()
    except (smtplib.SMTPException, OSError):
        client.close()


def _classify(code: int, text: bytes | str, *, broken: bool = False) -> Outcome:
    if code in AUTH_CODES:
        raise AuthRefused(_reply(code, text))
    kind = "temporary" if 400 <= code < 500 else "permanent"
    return Outcome(kind=kind, code=code, error=_reply(code, text), broken=broken or code == 421)


def _dot_stuff(data: bytes) -> bytes:
    # RFC 5321 §4.5.2: a line starting with a dot gets one more.
    stuffed = re.sub(rb"(?m)^\.", b"..", data)
    return stuffed if stuffed.endswith(CRLF) else stuffed + CRLF


def transact(client: smtplib.SMTP, envelope: Envelope) -> Outcome:
    """MAIL, RCPT for each recipient, DATA; never raises for the server's answers."""
    started = time.monotonic()
    try:
        return _transact(client, envelope)
    finally:
        metrics.observe("smtp_seconds", time.monotonic() - started)


def _transact(client: smtplib.SMTP, envelope: Envelope) -> Outcome:
    after_dot = False
    try:
        options: list[str] = []
        if envelope.smtputf8:
            if not client.has_extn("smtputf8"):
                return Outcome(kind="permanent", error="an address needs SMTPUTF8, which the server does not offer")
            options.append("SMTPUTF8")
        if client.has_extn("8bitmime"):
            options.append("BODY=8BITMIME")
        # RFC 2920: with PIPELINING, MAIL, every RCPT and DATA go in one write and their
        # replies are read in order: two round trips per message instead of 3 + recipients.
        pipelined = client.has_extn("pipelining")
        if pipelined:
            if any(CR_OR_LF.search(address) for address in (envelope.mail_from, *envelope.recipients)):
                return Outcome(kind="permanent", error="an address contains a line break")
            _send_group(client, envelope, options)
            code, text = client.getreply()
        else:
            code, text = client.mail(envelope.mail_from, options)
        if code >= 400:
            # The RCPT and DATA refusals that follow are read first; a server that hangs up
            # meanwhile changes nothing of the answer to MAIL.
            if pipelined and (code == 421 or not _drain(client, len(envelope.recipients) + 1)):
                client.close()
                return _classify(code, text, broken=True)
            _reset(client)
            return _classify(code, text)
        accepted: list[str] = []
        refused: list[dict[str, object]] = []
        pending: list[str] = []
        for recipient in envelope.recipients:
            code, text = client.getreply() if pipelined else client.rcpt(recipient)
            if code < 300:
                accepted.append(recipient)
            elif code < 500:
                pending.append(recipient)
                if code == 421:  # the server is closing: the rest waits for the next session
                    pending.extend(r for r in envelope.recipients if r not in accepted and r not in pending)
                    return Outcome(kind="temporary", code=code, error=_reply(code, text), refused=refused,
                                   pending=pending, broken=True)
            else:
                refused.append({"recipient": recipient, "code": code, "reason": _reply(code, text)})
        data_code, data_text = client.getreply() if pipelined else (0, b"")
        if not accepted:
            if data_code == 354:  # a server that opened DATA with no recipient: close it empty
                client.send(b"." + CRLF)
                client.getreply()
            _reset(client)
            if pending:
                return Outcome(kind="temporary", code=code, error=f"every recipient deferred: {_reply(code, text)}",
                               refused=refused, pending=pending)
            return Outcome(kind="permanent", code=code, error=f"every recipient refused: {_reply(code, text)}",
                           refused=refused)
        code, text = (data_code, data_text) if pipelined else client.docmd("DATA")
        if code != 354:
            _reset(client)
            return _classify(code, text)
        client.send(_dot_stuff(envelope.data) + b"." + CRLF)
        after_dot = True
        code, text = client.getreply()
        if code >= 300:
            return _classify(code, text)
        return Outcome(kind="sent", code=code, refused=refused, pending=pending)
    except (smtplib.SMTPServerDisconnected, OSError) as exc:
        reason = f"connection lost: {type(exc).__name__}{f': {exc}' if str(exc) else ''}"
        if after_dot:
            return Outcome(kind="unknown", error=f"{reason} after the final dot", broken=True)
        return Outcome(kind="temporary", error=reason, broken=True)


def _send_group(client: smtplib.SMTP, envelope: Envelope, options: list[str]) -> None:
    """MAIL FROM, RCPT TO for each recipient and DATA, written at once."""
    extra = "".join(f" {option}" for option in options)
    lines = [f"MAIL FROM:{smtplib.quoteaddr(envelope.mail_from)}{extra}"]
    lines += [f"RCPT TO:{smtplib.quoteaddr(recipient)}" for recipient in envelope.recipients]
    lines.append("DATA")
    client.send("".join(f"{line}\r\n" for line in lines).encode("utf-8" if envelope.smtputf8 else "ascii"))


def _drain(client: smtplib.SMTP, count: int) -> bool:
    """Read `count` replies; False when the server closed the connection first."""
    try:
        for _ in range(count):
            if client.getreply()[0] == 421:
                return False
    except (smtplib.SMTPServerDisconnected, OSError):
        return False
    return True


def _reset(client: smtplib.SMTP) -> None:
    try:
        client.rset()
    except (smtplib.SMTPException, OSError):
        client.close()


@dataclass
class _Pooled:
    client: smtplib.SMTP
    account_version: datetime
    opened: float
    last_used: float


class Pool:
    """Idle connections per account, kept in this process only (never across a fork)."""

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._idle: dict[int, list[_Pooled]] = {}

    def _check_process(self) -> None:
        if os.getpid() != self._pid:  # a forked child must not talk on its parent's sockets
            self._idle = {}
            self._pid = os.getpid()

    def acquire(self, account: SmtpAccount) -> _Pooled:
        self._check_process()
        now = time.monotonic()
        idle = self._idle.get(account.pk, [])
        while idle:
            pooled = idle.pop()
            if pooled.account_version != account.updated_at or now - pooled.opened > account.connection_ttl:
                _close(pooled.client)
                continue
            if now - pooled.last_used > IDLE_CHECK_SECONDS and not _alive(pooled.client):
                pooled.client.close()
                continue
            return pooled
        client = connect(account)
        return _Pooled(client=client, account_version=account.updated_at, opened=now, last_used=now)

    def release(self, account: SmtpAccount, pooled: _Pooled, *, broken: bool = False) -> None:
        """Keep a connection for the next message, or close it when it cannot serve again."""
        if broken:
            pooled.client.close()
            return
        pooled.last_used = time.monotonic()
        idle = self._idle.setdefault(account.pk, [])
        if len(idle) >= account.max_connections:
            _close(pooled.client)
            return
        idle.append(pooled)

    def close_all(self) -> None:
        for idle in self._idle.values():
            for pooled in idle:
                _close(pooled.client)
        self._idle = {}


def _alive(client: smtplib.SMTP) -> bool:
    try:
        return client.noop()[0] == 250
    except (smtplib.SMTPException, OSError):
        return False


pool = Pool()
