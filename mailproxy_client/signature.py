"""Checking the signature of a delivery report, for the application that receives it.

When a tenant has a signing secret, the proxy sends with every report request
`X-Mail-Proxy-Timestamp: <unix seconds>` and
`X-Mail-Proxy-Signature: sha256=<hex HMAC-SHA256 of b"<timestamp>." + body>`,
keyed with the secret's UTF-8 bytes. The timestamp is inside the signed text, so an old
request replayed later fails the freshness check even with its signature intact.
"""

from __future__ import annotations

import hashlib
import hmac
import time

__all__ = ["SIGNATURE_HEADER", "TIMESTAMP_HEADER", "InvalidSignature", "check_report_signature",
           "sign_report", "verify_report_signature"]

TIMESTAMP_HEADER = "X-Mail-Proxy-Timestamp"
SIGNATURE_HEADER = "X-Mail-Proxy-Signature"
SCHEME = "sha256="


class InvalidSignature(ValueError):
    """The report request is not proven to come from the proxy; `reason` says which check failed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _key(secret: str | bytes) -> bytes:
    return secret if isinstance(secret, bytes) else secret.encode("utf-8")


def sign_report(body: bytes, timestamp: str, secret: str | bytes) -> str:
    """The header value the proxy sends for this body and timestamp (`sha256=<hex>`)."""
    digest = hmac.new(_key(secret), timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()
    return SCHEME + digest


def check_report_signature(body: bytes, timestamp: str | None, signature: str | None, secret: str | bytes, *,
                           tolerance_seconds: float = 300, now: float | None = None) -> None:
    """Raise `InvalidSignature` unless the signature matches and the timestamp is fresh.

    `body` must be the raw request bytes as received, before any JSON parsing.
    """
    if not secret:
        raise InvalidSignature("no signing secret configured")
    if not timestamp or not signature:
        raise InvalidSignature("the timestamp or signature header is missing")
    stamp = timestamp.strip()
    if not stamp.isascii() or not stamp.isdigit():
        raise InvalidSignature("the timestamp is not unix seconds")
    current = time.time() if now is None else now
    if abs(current - int(stamp)) > tolerance_seconds:
        raise InvalidSignature("the timestamp is outside the tolerance window")
    given = signature.strip()
    if not given.isascii() or not given.lower().startswith(SCHEME):
        raise InvalidSignature("the signature is not of the form sha256=<hex>")
    expected = sign_report(body, stamp, secret)
    # Compared as bytes in constant time; the hex part is compared case-insensitively.
    if not hmac.compare_digest(expected.encode("ascii"), (SCHEME + given[len(SCHEME):].lower()).encode("ascii")):
        raise InvalidSignature("the signature does not match the body")


def verify_report_signature(body: bytes, timestamp: str | None, signature: str | None, secret: str | bytes, *,
                            tolerance_seconds: float = 300, now: float | None = None) -> bool:
    """True when the report request is signed with `secret` and its timestamp is fresh."""
    try:
        check_report_signature(body, timestamp, signature, secret, tolerance_seconds=tolerance_seconds, now=now)
    except InvalidSignature:
        return False
    return True
