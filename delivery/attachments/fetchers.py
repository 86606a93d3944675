"""Attachment fetchers by fetch mode (SPEC §8): base64, filesystem, http_url, endpoint.

A fetcher turns one stored attachment item into its bytes or raises `FetchError`, which
says whether trying again could help and leaves naming the attachment to the caller (one
fetch can serve several items that share a cache key).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import stat
import time
from collections.abc import Mapping
from typing import Any, Protocol

from django.conf import settings

from mailproxy import safehttp
from queueing.validation import inside_base_dirs
from tenants import crypto
from tenants.models import AuthMethod, Tenant

Item = Mapping[str, Any]

MARKER = re.compile(r"\{MD5:([0-9a-f]{32})\}", re.IGNORECASE)
MD5_HEX = re.compile(r"[0-9a-f]{32}", re.IGNORECASE)
DEFAULT_ATTACHMENT_PATH = "/mail-proxy/attachments"
# Statuses that say "later" rather than "never", though they are 4xx.
TEMPORARY_STATUSES = frozenset({408, 425, 429})
# safehttp reports its size cap as an OutboundError with this text; a file over the cap
# stays over it, so that one failure is permanent.
SIZE_CAP_TEXT = "answer larger than"


class FetchError(Exception):
    """A fetch failed; `permanent` says whether trying again could help."""

    def __init__(self, reason: str, *, permanent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


def split_marker(filename: str) -> tuple[str, str | None]:
    """The file name without its `{MD5:<32 hex>}` marker, and the marker's MD5 (lower case) or None.

    One `_` next to the marker goes with it (`report_{MD5:…}.pdf` → `report.pdf`), unless
    that would leave a name that is only an extension; a name that would be empty becomes
    `attachment`. Only the first marker counts; anything else in braces is kept as is.
    """
    match = MARKER.search(filename)
    if match is None:
        return filename, None
    before, after = filename[: match.start()], filename[match.end():]
    if before.endswith("_") and _has_stem(before[:-1] + after):
        before = before[:-1]
    elif after.startswith("_") and _has_stem(before + after[1:]):
        after = after[1:]
    return (before + after) or "attachment", match.group(1).lower()


def _has_stem(name: str) -> bool:
    return bool(name) and not name.startswith(".")


def max_bytes() -> int:
    return int(settings.GMP_MAX_ATTACHMENT_MB) * 1024 * 1024


def _too_big() -> FetchError:
    return FetchError(f"larger than {settings.GMP_MAX_ATTACHMENT_MB} MB (GMP_MAX_ATTACHMENT_MB)", permanent=True)


def item_auth_headers(auth: object) -> dict[str, str]:
    """The Authorization header of a per-attachment `auth` (stored sealed, or plain from older rows)."""
    if isinstance(auth, Mapping) and isinstance(auth.get("sealed"), str):
        try:
            auth = json.loads(_decrypt(auth["sealed"]))  # opened only to build this request
        except ValueError:
            raise FetchError("the attachment's auth cannot be opened", permanent=True) from None
    if not isinstance(auth, Mapping):
        raise FetchError("auth must be an object with a method", permanent=True)
    method = auth.get("method")
    if method == AuthMethod.NONE:
        return {}
    if method == AuthMethod.BEARER and isinstance(auth.get("token"), str) and auth["token"]:
        return {"Authorization": f"Bearer {auth['token']}"}
    if method == AuthMethod.BASIC and isinstance(auth.get("user"), str) and isinstance(auth.get("password"), str):
        return {"Authorization": _basic(auth["user"], auth["password"])}
    raise FetchError("auth is not a valid bearer, basic or none setting", permanent=True)


def tenant_auth_headers(tenant: Tenant) -> dict[str, str]:
    """The Authorization header of the tenant's client_auth (as delivery.reports builds it)."""
    secret = _decrypt(tenant.client_auth_secret_encrypted)  # opened only to build this request
    if tenant.client_auth_method == AuthMethod.BEARER and secret:
        return {"Authorization": f"Bearer {secret}"}
    if tenant.client_auth_method == AuthMethod.BASIC and secret:
        return {"Authorization": _basic(tenant.client_auth_user, secret)}
    return {}


def signature_headers(tenant: Tenant, body: bytes) -> dict[str, str]:
    """SPEC §7: every request to the tenant carries the HMAC of "timestamp.body" when it has a signing secret."""
    signing = _decrypt(tenant.signing_secret_encrypted)
    if not signing:
        return {}
    stamp = str(int(time.time()))
    digest = hmac.new(signing.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {"X-Mail-Proxy-Timestamp": stamp, "X-Mail-Proxy-Signature": f"sha256={digest}"}


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def _decrypt(stored: str) -> str:
    try:
        return crypto.decrypt(stored)
    except crypto.DecryptionError:
        # A key problem the operator can fix (MAIL_PROXY_ENCRYPTION_OLD_KEYS), so not permanent;
        # the error text names the key id, never the secret.
        raise FetchError("the tenant's stored credentials cannot be decrypted", permanent=False) from None


def _exchange(method: str, url: str, *, body: bytes | None = None, headers: dict[str, str]) -> safehttp.Response:
    try:
        response = safehttp.request(method, url, body=body, headers=headers,
                                    timeout=settings.GMP_FETCH_TIMEOUT, max_bytes=max_bytes())
    except safehttp.OutboundRefused as exc:
        raise FetchError(f"refused: {exc}", permanent=True) from None
    except safehttp.OutboundError as exc:
        if str(exc).startswith(SIZE_CAP_TEXT):
            raise _too_big() from None
        raise FetchError(f"fetch failed: {exc}", permanent=False) from None
    if 200 <= response.status < 300:
        return response
    permanent = response.status < 500 and response.status not in TEMPORARY_STATUSES
    raise FetchError(f"HTTP {response.status}", permanent=permanent)


def _header(response: safehttp.Response, name: str) -> str:
    return next((value for key, value in response.headers.items() if key.lower() == name), "")


class Fetcher(Protocol):
    def fetch(self, item: Item, tenant: Tenant) -> bytes: ...


class Base64Fetcher:
    """The bytes are in storage_path itself, with or without the `base64:` prefix."""

    def fetch(self, item: Item, tenant: Tenant) -> bytes:
        try:
            content = base64.b64decode(str(item["storage_path"]).removeprefix("base64:"), validate=True)
        except (binascii.Error, ValueError):
            raise FetchError("storage_path is not valid base64", permanent=True) from None
        if len(content) > max_bytes():  # stored before the limit was lowered, or written by hand
            raise _too_big()
        return content


class FilesystemFetcher:
    """A file read from GMP_ATTACHMENT_BASE_DIRS, after symlinks are resolved; relative paths from the first folder."""

    def fetch(self, item: Item, tenant: Tenant) -> bytes:
        path = self.confine(str(item["storage_path"]))
        try:
            info = os.stat(path)
            if not stat.S_ISREG(info.st_mode):
                raise FetchError("not a regular file", permanent=True)
            if info.st_size > max_bytes():
                raise _too_big()
            # The folders are the operator's: swapping a checked path for a link needs write
            # access inside them. O_NOFOLLOW and O_NONBLOCK still keep a late swap to a link
            # or a FIFO from being followed or hanging the worker.
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as file:
                content = file.read(max_bytes() + 1)
        except FileNotFoundError:
            raise FetchError("not found", permanent=True) from None
        except (PermissionError, IsADirectoryError, NotADirectoryError):
            raise FetchError("cannot be read (permission or file type)", permanent=True) from None
        except OSError as exc:
            raise FetchError(f"read failed: {exc.strerror or type(exc).__name__}", permanent=False) from None
        if len(content) > max_bytes():
            raise _too_big()
        return content

    @staticmethod
    def confine(storage_path: str) -> str:
        """The resolved path, if it lies inside one of the allowed folders (the rule enqueue applies too)."""
        real = inside_base_dirs(storage_path)
        if real is None:
            raise FetchError("not inside the allowed folders", permanent=True)
        return real


class HttpUrlFetcher:
    """A GET of storage_path through the outbound guard, authorized only by the item's own `auth`."""

    def fetch(self, item: Item, tenant: Tenant) -> bytes:
        headers = item_auth_headers(item["auth"]) if item.get("auth") is not None else {}
        return _exchange("GET", str(item["storage_path"]), headers=headers).body


class EndpointFetcher:
    """A POST of `{"storage_path": …}` to the tenant's attachment endpoint, with its auth and signature.

    The answer body is the file. An answer of Content-Type application/json whose object has
    a string `content` is taken as that content in base64 instead (for applications that
    can only answer JSON); any other JSON answer is itself the file.
    """

    def fetch(self, item: Item, tenant: Tenant) -> bytes:
        if not tenant.client_base_url:
            raise FetchError("the tenant has no client_base_url for endpoint attachments", permanent=True)
        path = tenant.client_attachment_path or DEFAULT_ATTACHMENT_PATH
        url = tenant.client_base_url.rstrip("/") + (path if path.startswith("/") else f"/{path}")
        body = json.dumps({"storage_path": item["storage_path"]}, separators=(",", ":")).encode()
        auth = item_auth_headers(item["auth"]) if item.get("auth") is not None else tenant_auth_headers(tenant)
        headers = {"Content-Type": "application/json", "Accept": "application/octet-stream, application/json",
                   **auth, **signature_headers(tenant, body)}
        response = _exchange("POST", url, body=body, headers=headers)
        if _header(response, "content-type").split(";", 1)[0].strip().lower() != "application/json":
            return response.body
        try:
            data = json.loads(response.body)
        except ValueError:
            return response.body
        if not isinstance(data, dict) or not isinstance(data.get("content"), str):
            return response.body
        try:
            return base64.b64decode(data["content"], validate=True)
        except (binascii.Error, ValueError):
            raise FetchError("the endpoint's JSON content is not valid base64", permanent=True) from None


FETCHERS: dict[str, Fetcher] = {
    "base64": Base64Fetcher(),
    "filesystem": FilesystemFetcher(),
    "http_url": HttpUrlFetcher(),
    "endpoint": EndpointFetcher(),
}
