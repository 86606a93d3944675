"""Errors raised by the client, one class per kind of failure a caller handles differently."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class MailProxyError(Exception):
    """Base of every client error.

    `status` is the HTTP status of the answer (None when there was no usable answer),
    `error` the proxy's human text and `details` its structured details (for a
    validation error, the offending fields).
    """

    def __init__(self, error: str, *, status: int | None = None, details: Any = None) -> None:
        super().__init__(f"HTTP {status}: {error}" if status is not None else error)
        self.error = error
        self.status = status
        self.details = details


class AuthenticationError(MailProxyError):
    """401: the token is missing, unknown, expired or revoked."""


class PermissionDenied(MailProxyError):
    """403: a tenant token on an admin-only endpoint."""


class NotFound(MailProxyError):
    """404: missing, or belonging to another tenant (the proxy answers both the same)."""


class Conflict(MailProxyError):
    """409: the request contradicts the current state (e.g. a batch inside a suspended tenant)."""


class ValidationError(MailProxyError):
    """400, 422 and other 4xx: the request was refused as it stands."""


class PayloadTooLarge(MailProxyError):
    """413: the body is over the instance's size limit, or the batch has too many messages."""


class ServerError(MailProxyError):
    """5xx: the proxy (or a proxy in front of it) failed; retrying later may work."""


class TransportError(MailProxyError):
    """No usable answer: connection refused, timeout, TLS failure, or an answer that is not JSON."""


@dataclass(frozen=True)
class Rejection:
    """One message the proxy refused; `id` is None when the message had no usable id."""

    id: str | None
    reason: str
    field: str | None = None
    index: int | None = None


class MessageRejected(MailProxyError):
    """The single message given to `send()` was refused (HTTP 200, but not queued)."""

    def __init__(self, reason: str, id: str | None) -> None:
        super().__init__(f"message {id!r} rejected: {reason}", status=200, details={"id": id, "reason": reason})
        self.reason = reason
        self.id = id


class MessagesRejected(MailProxyError):
    """Some messages of a batch were refused; `queued` says how many others were stored."""

    def __init__(self, rejected: list[Rejection], *, queued: int) -> None:
        listed = "; ".join(f"{item.id}: {item.reason}" for item in rejected[:10])
        more = f" (and {len(rejected) - 10} more)" if len(rejected) > 10 else ""
        super().__init__(f"{len(rejected)} message(s) rejected, {queued} queued: {listed}{more}",
                         details=[{"id": item.id, "reason": item.reason} for item in rejected])
        self.rejected = rejected
        self.queued = queued


def error_class_for(status: int) -> type[MailProxyError]:
    """The error class the caller catches for an HTTP error status."""
    known: dict[int, type[MailProxyError]] = {
        401: AuthenticationError, 403: PermissionDenied, 404: NotFound, 409: Conflict, 413: PayloadTooLarge,
    }
    if status in known:
        return known[status]
    if status >= 500:
        return ServerError
    if status >= 400:
        return ValidationError
    return MailProxyError
