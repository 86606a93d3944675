"""Validation of submitted messages (SPEC §4.1), one message at a time.

Hand-written rather than a DRF serializer: a batch of 1,000 messages must be checked in
a small fraction of a second, and each refusal must read `field: reason` with the
offending value. The documented shape for OpenAPI is `serializers.MessageInSerializer`.
"""

from __future__ import annotations

import base64
import binascii
import email.policy
import json
import math
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.headerregistry import Address
from email.parser import BytesHeaderParser
from functools import lru_cache
from typing import Any

from django.conf import settings
from email_validator import EmailNotValidError, validate_email

from mailproxy import safehttp
from queueing.models import PRIORITY_BY_LABEL, ContentType
from tenants import crypto

MAX_ID_LENGTH = 200
MAX_RECIPIENTS = 1000
MAX_FILENAME_LENGTH = 255
FETCH_MODES = ("base64", "filesystem", "http_url", "endpoint")

MESSAGE_FIELDS = frozenset({
    "id", "tenant_id", "account_id", "from", "to", "cc", "bcc", "reply_to", "return_path", "subject", "body",
    "content_type", "body_text", "body_html", "headers", "message_id", "priority", "deferred_ts", "expires_ts",
    "batch_code", "attachments", "eml",
})
# With `eml` the message is given whole; these parts would contradict it.
EML_EXCLUSIVE = ("body", "body_text", "body_html", "content_type", "headers", "attachments")
ATTACHMENT_FIELDS = frozenset({"filename", "storage_path", "fetch_mode", "mime_type", "content_md5", "auth"})

# Headers the proxy writes itself; a client value would be ignored or would conflict.
FORBIDDEN_HEADERS = frozenset({
    "from", "to", "cc", "bcc", "message-id", "date", "subject", "reply-to", "return-path",
    "x-mail-proxy-id", "x-genro-mail-id", "mime-version", "content-type", "content-transfer-encoding",
    "content-disposition",
})
HEADER_NAME = re.compile(r"^[!-9;-~]{1,76}$")  # RFC 5322 field-name: printable ASCII but ':'
MIME_TYPE = re.compile(r"^[\w.+-]+/[\w.+-]+$")
MD5_HEX = re.compile(r"^[0-9a-fA-F]{32}$")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Every character the email package (str.splitlines) takes for a line end, CR and LF among them.
LINE_BREAK = re.compile("[\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
UNENCODABLE = re.compile("[\ud800-\udfff]")  # lone surrogates: no database or encoder takes them
MAX_SUBJECT_LENGTH = 10000  # folding a longer one costs the worker seconds
NAMED_ADDRESS = re.compile(r'^(?P<name>[^"<>]*?[^\s"<>])\s*<(?P<address>[^<>]+)>$')


class Invalid(ValueError):
    """One field of one message is wrong; `reason` reads `field: what is wrong`."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.reason = f"{field}: {problem}"


@dataclass(frozen=True)
class MessageIn:
    external_id: str
    tenant_id: str | None
    account_id: str | None
    from_addr: str
    to: list[str]
    cc: list[str] = field(default_factory=list)
    bcc: list[str] = field(default_factory=list)
    reply_to: str = ""
    return_path: str = ""
    subject: str = ""
    body: str = ""
    content_type: str = ContentType.PLAIN
    body_text: str = ""
    body_html: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    message_id: str | None = None
    priority: int | None = None
    deferred_until: datetime | None = None
    expires_at: datetime | None = None
    batch_code: str = ""
    attachments: list[dict[str, Any]] = field(default_factory=list)
    raw_eml: str = ""  # base64 of a whole RFC 5322 message, sent as given


def parse_priority(value: Any, name: str = "priority") -> int:
    if isinstance(value, str):
        label = value.strip().lower()
        if label in PRIORITY_BY_LABEL:
            return PRIORITY_BY_LABEL[label]
        if label.isdigit():
            value = int(label)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 3:
        return value
    raise Invalid(name, f"{value!r} is not a priority; use 0-3 or immediate, high, medium, low")


def client_id_of(raw: Any) -> str | None:
    """The message's id if it has a usable one (to name it in a rejection and its report)."""
    if not isinstance(raw, dict):
        return None
    value = raw.get("id")
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH and not CONTROL.search(value) \
            and not UNENCODABLE.search(value):
        return value
    return None


def _text(raw: dict[str, Any], name: str, *, required: bool = False, single_line: bool = False,
          max_length: int | None = None) -> str:
    value = raw.get(name)
    if value is None:
        if required:
            raise Invalid(name, "is required")
        return ""
    if not isinstance(value, str):
        raise Invalid(name, "must be a string")
    if single_line and LINE_BREAK.search(value):
        raise Invalid(name, "must not contain CR, LF or another line break")
    if "\x00" in value:
        raise Invalid(name, "must not contain NUL")
    if UNENCODABLE.search(value):
        raise Invalid(name, "must not contain a lone surrogate (not valid Unicode text)")
    if max_length is not None and len(value) > max_length:
        raise Invalid(name, f"is longer than {max_length} characters")
    return value


@lru_cache(maxsize=4096)
def _address(token: str) -> str | None:
    """The address in canonical form (`Name <local@domain>`), or None when invalid."""
    try:
        result = validate_email(token, check_deliverability=False, allow_smtputf8=True, allow_display_name=True)
    except EmailNotValidError:
        # `Jürgen <j@example.com>`: RFC 5322 wants a non-ASCII or punctuated name quoted,
        # people and mail programs do not; quoting it for them loses nothing.
        named = NAMED_ADDRESS.match(token)
        if named is None:
            return None
        quoted = '"' + named["name"].replace("\\", "\\\\").replace('"', '\\"') + '"'
        try:
            result = validate_email(f"{quoted} <{named['address']}>", check_deliverability=False,
                                    allow_smtputf8=True, allow_display_name=True)
        except EmailNotValidError:
            return None
    if result.display_name:
        return str(Address(display_name=result.display_name, addr_spec=result.normalized))
    return result.normalized


def _split_addresses(text: str) -> list[str]:
    """Split a comma-separated list, keeping commas inside quotes or angle brackets."""
    tokens: list[str] = []
    current: list[str] = []
    quoted, angle = False, 0
    escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "<" and not quoted:
            angle += 1
        elif char == ">" and not quoted and angle:
            angle -= 1
        elif char == "," and not quoted and not angle:
            tokens.append("".join(current))
            current = []
            continue
        current.append(char)
    tokens.append("".join(current))
    return [token.strip() for token in tokens if token.strip()]


def clean_text(value: str) -> bool:
    """Text any database and encoder takes: no NUL, no other control character, no lone surrogate."""
    return not CONTROL.search(value) and not UNENCODABLE.search(value)


def one_address(name: str, token: str) -> str:
    if "\r" in token or "\n" in token:
        raise Invalid(name, "must not contain CR or LF")
    address = _address(token)
    if address is None:
        raise Invalid(name, f"{token!r} is not a valid address")
    return address


def _address_list(raw: dict[str, Any], name: str, *, required: bool = False) -> list[str]:
    value = raw.get(name)
    if value is None or value == "" or value == []:
        if required:
            raise Invalid(name, "at least one address is required")
        return []
    if isinstance(value, str):
        items = [value]
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        items = value
    else:
        raise Invalid(name, "must be an address, a comma-separated string or a list of addresses")
    addresses: list[str] = []
    for item in items:
        if "\r" in item or "\n" in item:
            raise Invalid(name, "must not contain CR or LF")
        addresses.extend(one_address(name, token) for token in _split_addresses(item))
    if required and not addresses:
        raise Invalid(name, "at least one address is required")
    return addresses


def _timestamp(raw: dict[str, Any], name: str) -> datetime | None:
    value = raw.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise Invalid(name, "must be unix seconds (a number >= 0)")
    try:
        return datetime.fromtimestamp(value, tz=UTC)
    except (OverflowError, OSError, ValueError):
        raise Invalid(name, f"{value!r} is out of range") from None


def _headers(raw: dict[str, Any]) -> dict[str, str]:
    value = raw.get("headers")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Invalid("headers", "must be an object of header name to string value")
    headers: dict[str, str] = {}
    for name, text in value.items():
        if not HEADER_NAME.match(name):
            raise Invalid("headers", f"{name!r} is not a valid header name")
        if name.lower() in FORBIDDEN_HEADERS:
            raise Invalid(f"headers.{name}", "is set by the proxy and cannot be given")
        if not isinstance(text, str):
            raise Invalid(f"headers.{name}", "must be a string")
        if LINE_BREAK.search(text) or "\x00" in text or UNENCODABLE.search(text):
            raise Invalid(f"headers.{name}", "must not contain CR, LF, another line break, NUL or a lone surrogate")
        headers[name] = text
    return headers


def _message_id(raw: dict[str, Any]) -> str | None:
    value = _text(raw, "message_id", single_line=True, max_length=400)
    if not value:
        return None
    value = value.strip()
    inner = value[1:-1] if value.startswith("<") and value.endswith(">") else value
    left, at, right = inner.partition("@")
    if not (left and at and right) or any(ch.isspace() or ch in "<>" for ch in inner):
        raise Invalid("message_id", f"{value!r} must look like <left@right>")
    return f"<{inner}>"


def _attachments(raw: dict[str, Any]) -> list[dict[str, Any]]:
    value = raw.get("attachments")
    if value is None:
        return []
    if not isinstance(value, list):
        raise Invalid("attachments", "must be a list")
    result = []
    for index, item in enumerate(value):
        name = f"attachments[{index}]"
        if not isinstance(item, dict):
            raise Invalid(name, "must be an object")
        unknown = sorted(set(item) - ATTACHMENT_FIELDS)
        if unknown:
            raise Invalid(f"{name}.{unknown[0]}", "is not a known attachment field")
        filename = item.get("filename")
        if not isinstance(filename, str) or not filename.strip():
            raise Invalid(f"{name}.filename", "is required")
        if len(filename) > MAX_FILENAME_LENGTH or CONTROL.search(filename):
            raise Invalid(f"{name}.filename", "must be at most 255 characters without control characters")
        path = item.get("storage_path")
        if not isinstance(path, str) or not path:
            raise Invalid(f"{name}.storage_path", "is required")
        if "\x00" in path or UNENCODABLE.search(path):
            raise Invalid(f"{name}.storage_path", "must not contain NUL or a lone surrogate")
        if UNENCODABLE.search(filename):
            raise Invalid(f"{name}.filename", "must not contain a lone surrogate")
        mode = item.get("fetch_mode")
        if mode is not None and mode not in FETCH_MODES:
            raise Invalid(f"{name}.fetch_mode", f"{mode!r} is not one of {', '.join(FETCH_MODES)}")
        mime_type = item.get("mime_type")
        if mime_type is not None and (not isinstance(mime_type, str) or not MIME_TYPE.match(mime_type)):
            raise Invalid(f"{name}.mime_type", f"{mime_type!r} is not a MIME type like application/pdf")
        md5 = item.get("content_md5")
        if md5 is not None and (not isinstance(md5, str) or not MD5_HEX.match(md5)):
            raise Invalid(f"{name}.content_md5", "must be 32 hexadecimal characters")
        auth = item.get("auth")
        if auth is not None and not isinstance(auth, dict):
            raise Invalid(f"{name}.auth", "must be an object")
        if auth is not None and not all(isinstance(k, str) and isinstance(v, str) and clean_text(k) and clean_text(v)
                                        for k, v in auth.items()):
            raise Invalid(f"{name}.auth", "must hold text values without NUL or control characters")
        problem = _source_problem(mode or infer_fetch_mode(path), path)
        if problem:
            raise Invalid(f"{name}.storage_path", problem)
        if auth is not None:
            # A credential like client_auth's: stored sealed, opened only to make the fetch.
            item = {**item, "auth": {"sealed": crypto.encrypt(json.dumps(auth))}}
        result.append(item)
    return result


def infer_fetch_mode(storage_path: str) -> str:
    """SPEC §8: `base64:` → base64, an http(s) URL → http_url, `/…` → filesystem, else endpoint."""
    if storage_path.startswith("base64:"):
        return "base64"
    if storage_path[:8].lower().startswith(("http://", "https://")):
        return "http_url"
    if storage_path.startswith("/"):
        return "filesystem"
    return "endpoint"


def inside_base_dirs(path: str) -> str | None:
    """The real path of `path` if it lies inside GMP_ATTACHMENT_BASE_DIRS (symlinks resolved), else None."""
    bases = [os.path.realpath(os.path.expanduser(folder)) for folder in settings.GMP_ATTACHMENT_BASE_DIRS if folder]
    if not bases or "\x00" in path:
        return None
    real = os.path.realpath(os.path.join(bases[0], path))  # join keeps an absolute path as is
    if any(os.path.commonpath([real, base]) == base for base in bases):
        return real
    return None


def _source_problem(mode: str, path: str) -> str | None:
    """What can be refused before the worker tries: bad base64, a path outside, a forbidden address."""
    if mode == "base64":
        try:
            content = base64.b64decode(path.removeprefix("base64:"), validate=True)
        except (binascii.Error, ValueError):
            return "is not valid base64"
        if len(content) > settings.GMP_MAX_ATTACHMENT_MB * 1024 * 1024:
            return f"is {len(content)} bytes, over the {settings.GMP_MAX_ATTACHMENT_MB} MB attachment limit"
    elif mode == "filesystem":
        if inside_base_dirs(path) is None:
            return f"{path!r} is not inside the folders attachments may be read from (GMP_ATTACHMENT_BASE_DIRS)"
    elif mode == "http_url":
        try:
            safehttp.check_literal(path)
        except safehttp.OutboundRefused as exc:
            return str(exc)
    return None


def eml_headers(value: str) -> dict[str, str]:
    """To, Cc and Bcc of a base64 eml, best effort (for the suppression lookup before validation)."""
    try:
        headers = BytesHeaderParser(policy=email.policy.default).parsebytes(base64.b64decode(value, validate=True))
        return {name.lower(): " ".join(str(headers[name]).split()) for name in ("To", "Cc", "Bcc") if headers[name]}
    except (binascii.Error, ValueError, IndexError, TypeError):
        return {}


def _eml(raw: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A message given whole (`eml`, base64 of RFC 5322 bytes): its canonical base64 and
    the fields its headers supply where the request leaves them out.

    Fields given in the request win: `to` given with an eml sends that eml to those
    recipients, its own headers unchanged.
    """
    value = raw.get("eml")
    if not isinstance(value, str) or not value:
        raise Invalid("eml", "must be the base64 of an RFC 5322 message")
    for name in EML_EXCLUSIVE:
        if raw.get(name) not in (None, "", [], {}):
            raise Invalid(name, "cannot be given with eml: the eml is the whole message")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise Invalid("eml", "is not valid base64") from None
    headers = BytesHeaderParser(policy=email.policy.default).parsebytes(data)
    if not data.strip() or not headers.keys():
        raise Invalid("eml", "has no header section: not an RFC 5322 message")
    found: dict[str, Any] = {}

    def header(name: str) -> str | None:
        try:
            text = headers.get(name)
        except (ValueError, IndexError, TypeError):  # a header the parser cannot make sense of
            raise Invalid(f"eml.{name}", "cannot be parsed") from None
        return None if text is None else " ".join(str(text).split())

    for field_name, header_name in (("from", "From"), ("to", "To"), ("cc", "Cc"), ("bcc", "Bcc"),
                                    ("reply_to", "Reply-To"), ("subject", "Subject"),
                                    ("message_id", "Message-ID")):
        text = header(header_name)
        if field_name == "message_id" and text:
            try:
                _message_id({"message_id": text})
            except Invalid:  # a malformed Message-ID of the eml: a fresh one replaces it
                continue
        if text and raw.get(field_name) in (None, "", []):
            found[field_name] = text
    found.setdefault("subject", raw.get("subject") or "")
    return base64.b64encode(data).decode("ascii"), found


def parse_message(raw: Any, *, now: datetime) -> MessageIn:
    """Check one submitted message; raise `Invalid` naming the first wrong field."""
    if not isinstance(raw, dict):
        raise Invalid("message", "must be an object")
    unknown = sorted(set(raw) - MESSAGE_FIELDS)
    if unknown:
        raise Invalid(unknown[0], "is not a known message field")
    external_id = client_id_of(raw)
    if external_id is None:
        raise Invalid("id", f"is required: a string of 1-{MAX_ID_LENGTH} characters without control characters")
    raw_eml = ""
    if raw.get("eml") is not None:
        raw_eml, from_headers = _eml(raw)
        raw = {**raw, **from_headers}

    body = _text(raw, "body")
    body_text = _text(raw, "body_text")
    body_html = _text(raw, "body_html")
    if body and (body_text or body_html):
        raise Invalid("body", "give either body or body_text/body_html, not both")
    content_type = raw.get("content_type", ContentType.PLAIN) or ContentType.PLAIN
    if content_type not in ContentType.values:
        raise Invalid("content_type", f"{content_type!r} is not plain or html")

    deferred_until = _timestamp(raw, "deferred_ts")
    if deferred_until is not None and deferred_until < now:
        deferred_until = None  # a time already past means "now"
    expires_at = _timestamp(raw, "expires_ts")
    if expires_at is not None and expires_at <= now:
        raise Invalid("expires_ts", "is already in the past")
    if expires_at is not None and deferred_until is not None and expires_at <= deferred_until:
        raise Invalid("expires_ts", "is not after deferred_ts")

    to = _address_list(raw, "to", required=True)
    cc = _address_list(raw, "cc")
    bcc = _address_list(raw, "bcc")
    if len(to) + len(cc) + len(bcc) > MAX_RECIPIENTS:
        raise Invalid("to", f"more than {MAX_RECIPIENTS} recipients in one message")

    def optional_address(name: str) -> str:
        text = _text(raw, name, single_line=True)
        return one_address(name, text) if text else ""

    priority = raw.get("priority")
    return MessageIn(
        external_id=external_id,
        tenant_id=_text(raw, "tenant_id", single_line=True, max_length=64) or None,
        account_id=_text(raw, "account_id", single_line=True, max_length=100) or None,
        from_addr=one_address("from", _text(raw, "from", required=True, single_line=True)),
        to=to,
        cc=cc,
        bcc=bcc,
        reply_to=optional_address("reply_to"),
        return_path=optional_address("return_path"),
        subject=_text(raw, "subject", required=True, single_line=True, max_length=MAX_SUBJECT_LENGTH),
        body=body,
        content_type=content_type,
        body_text=body_text,
        body_html=body_html,
        headers=_headers(raw),
        message_id=_message_id(raw),
        priority=None if priority is None else parse_priority(priority),
        deferred_until=deferred_until,
        expires_at=expires_at,
        batch_code=_text(raw, "batch_code", single_line=True, max_length=200),
        attachments=_attachments(raw),
        raw_eml=raw_eml,
    )
