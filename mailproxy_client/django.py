"""A Django email backend that queues mail on a mail-proxy instance instead of speaking SMTP.

    EMAIL_BACKEND = "mailproxy_client.django.EmailBackend"
    MAIL_PROXY_URL = "https://mail-proxy.example.com"
    MAIL_PROXY_TOKEN = "<tenant API key>"

`send_mail()`, `EmailMessage.send()` and `EmailMultiAlternatives` work unchanged. Some
headers steer the proxy instead of going out: `X-Mail-Proxy-Priority`,
`X-Mail-Proxy-Batch-Code`, `X-Mail-Proxy-Account`, `X-Mail-Proxy-Message-Id`; a
`Message-ID` header becomes the message's Message-ID.
"""

from __future__ import annotations

import base64
import logging
import mimetypes
import uuid
from collections.abc import Sequence
from email.mime.base import MIMEBase
from email.utils import getaddresses
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.mail import EmailMessage
from django.core.mail.backends.base import BaseEmailBackend

from .client import MailProxyClient
from .errors import MailProxyError, MessagesRejected, Rejection

logger = logging.getLogger(__name__)

__all__ = ["EmailBackend", "UnsupportedMessage", "message_payload"]

# The proxy's own limit per add-messages request (GMP_MAX_BATCH default).
CHUNK_SIZE = 1000
DEFAULT_ATTACHMENT_TYPE = "application/octet-stream"
PRIORITY_HEADER = "x-mail-proxy-priority"
BATCH_HEADER = "x-mail-proxy-batch-code"
ACCOUNT_HEADER = "x-mail-proxy-account"
ID_HEADER = "x-mail-proxy-message-id"
MESSAGE_ID_HEADER = "message-id"
CONSUMED_HEADERS = frozenset({PRIORITY_HEADER, BATCH_HEADER, ACCOUNT_HEADER, ID_HEADER, MESSAGE_ID_HEADER})


class UnsupportedMessage(ValueError):
    """The message uses something the proxy cannot express (e.g. a text/calendar alternative)."""


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


def _first_address(values: Sequence[Any]) -> tuple[str | None, int]:
    """The first address of a Reply-To list (the proxy takes one), and how many there were."""
    found: list[tuple[str, str, str]] = []
    for value in values:
        text = _text(value).strip()
        pairs = [(name, addr) for name, addr in getaddresses([text]) if addr]
        found.extend((text if len(pairs) == 1 else "", name, addr) for name, addr in pairs)
    if not found:
        return None, 0
    original, name, addr = found[0]
    if original:
        return original, len(found)  # as written: the proxy checks and normalises it
    if name:
        escaped = name.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}" <{addr}>', len(found)
    return addr, len(found)


def _attachment_bytes(content: Any) -> bytes:
    if isinstance(content, bytes):
        return content
    if isinstance(content, str):
        return content.encode("utf-8")
    if isinstance(content, EmailMessage):  # a message/rfc822 attachment given as a Django message
        return content.message().as_bytes()
    if hasattr(content, "as_bytes"):  # an email.message.Message
        return bytes(content.as_bytes())
    raise UnsupportedMessage(f"attachment content of type {type(content).__name__} is not bytes or text")


def _plain_mime_type(value: str | None, filename: str) -> str:
    mime = (value or "").split(";", 1)[0].strip().lower()
    return mime or mimetypes.guess_type(filename)[0] or DEFAULT_ATTACHMENT_TYPE


def _fallback_filename(mime_type: str, number: int) -> str:
    return f"attachment-{number}{mimetypes.guess_extension(mime_type) or '.bin'}"


def _attachment(item: Any, number: int) -> dict[str, Any]:
    if isinstance(item, MIMEBase):
        mime_type = item.get_content_type()
        inner = item.get_payload(0) if mime_type == "message/rfc822" and item.is_multipart() else None
        if inner is not None and not isinstance(inner, str):
            data = inner.as_bytes()
        else:
            payload = item.get_payload(decode=True)
            if item.is_multipart() or not isinstance(payload, bytes):
                raise UnsupportedMessage(f"attachment of type {mime_type} is multipart; attach its files one by one")
            data = payload
        filename = item.get_filename() or _fallback_filename(mime_type, number)
    else:
        filename, content, given_type = item
        data = _attachment_bytes(content)
        mime_type = _plain_mime_type(given_type, filename or "")
        filename = filename or _fallback_filename(mime_type, number)
    return {"filename": str(filename), "storage_path": "base64:" + base64.b64encode(data).decode("ascii"),
            "mime_type": mime_type}


def _bodies(message: EmailMessage) -> dict[str, Any]:
    body = _text(message.body or "")
    subtype = message.content_subtype
    if subtype not in ("plain", "html"):
        raise UnsupportedMessage(f"content_subtype {subtype!r} is not plain or html")
    html: str | None = None
    text: str | None = None
    for content, mimetype in getattr(message, "alternatives", None) or []:
        kind = str(mimetype).split(";", 1)[0].strip().lower()
        if kind == "text/html" and html is None and subtype == "plain":
            html = _text(content)
        elif kind == "text/plain" and text is None and subtype == "html":
            text = _text(content)
        else:
            raise UnsupportedMessage(f"a {kind} alternative to a text/{subtype} body cannot be sent through the proxy")
    if html is not None:
        return {"body_text": body, "body_html": html}
    if text is not None:
        return {"body_text": text, "body_html": body}
    return {"body": body, "content_type": subtype}


def message_payload(message: EmailMessage, *, account_id: str | None = None,
                    batch_code: str | None = None) -> dict[str, Any]:
    """The add-messages payload of a Django message; sets `message.mail_proxy_id`.

    Raises `UnsupportedMessage` for what the proxy cannot carry.
    """
    headers: dict[str, str] = {}
    steering: dict[str, str] = {}
    from_header: str | None = None
    reply_to_header: str | None = None
    for name, value in (message.extra_headers or {}).items():
        key = str(name).lower()
        if key in CONSUMED_HEADERS:
            steering[key] = _text(value).strip()
        elif key == "from":
            from_header = _text(value)
        elif key == "reply-to":
            reply_to_header = _text(value)
        else:
            headers[str(name)] = _text(value)

    external_id = steering.get(ID_HEADER) or uuid.uuid4().hex
    message.mail_proxy_id = external_id  # type: ignore[attr-defined]
    envelope_from = _text(message.from_email or settings.DEFAULT_FROM_EMAIL)
    payload: dict[str, Any] = {
        "id": external_id,
        # Django sends a `From` header override with from_email as the envelope sender;
        # the proxy's return_path is that envelope sender.
        "from": from_header or envelope_from,
        "to": [_text(address) for address in message.to],
        "subject": _text(message.subject or ""),
        **_bodies(message),
    }
    if from_header and from_header.strip() != envelope_from.strip():
        payload["return_path"] = envelope_from
    if message.cc:
        payload["cc"] = [_text(address) for address in message.cc]
    if message.bcc:
        payload["bcc"] = [_text(address) for address in message.bcc]
    reply_to, count = _first_address([reply_to_header] if reply_to_header else list(message.reply_to or []))
    if reply_to:
        payload["reply_to"] = reply_to
        if count > 1:
            logger.warning("reply_to has %d addresses, the proxy takes the first id=%s", count, external_id)
    if headers:
        payload["headers"] = headers
    if steering.get(MESSAGE_ID_HEADER):
        payload["message_id"] = steering[MESSAGE_ID_HEADER]
    priority = steering.get(PRIORITY_HEADER)
    if priority:
        payload["priority"] = int(priority) if priority.isdigit() else priority.lower()
    batch = steering.get(BATCH_HEADER) or batch_code
    if batch:
        payload["batch_code"] = batch
    account = steering.get(ACCOUNT_HEADER) or account_id
    if account:
        payload["account_id"] = account
    attachments = [_attachment(item, number) for number, item in enumerate(message.attachments or [], start=1)]
    if attachments:
        payload["attachments"] = attachments
    return payload


def _setting(name: str, default: Any = None) -> Any:
    return getattr(settings, name, default)


class EmailBackend(BaseEmailBackend):
    """Queue Django's messages on the proxy, all of one `send_messages()` call in one request.

    Returns the number the proxy queued. With `fail_silently=False`, transport and HTTP
    errors raise the client's `MailProxyError`s and refused messages raise
    `MessagesRejected` (after the others were queued); with `fail_silently=True` nothing
    raises and the count says what was queued. Each message gets `mail_proxy_id` (the id
    in the delivery reports) and `mail_proxy_rejection` (None, or why it was refused).
    """

    def __init__(self, fail_silently: bool = False, *, url: str | None = None, token: str | None = None,
                 account_id: str | None = None, priority: int | str | None = None, batch_code: str | None = None,
                 timeout: float | None = None, **kwargs: Any) -> None:
        super().__init__(fail_silently=fail_silently, **kwargs)
        self.url = url or _setting("MAIL_PROXY_URL", "")
        self.token = token or _setting("MAIL_PROXY_TOKEN", "")
        if not self.url or not self.token:
            raise ImproperlyConfigured("the mail-proxy email backend needs MAIL_PROXY_URL and MAIL_PROXY_TOKEN")
        self.account_id = account_id or _setting("MAIL_PROXY_ACCOUNT_ID")
        self.priority = priority if priority is not None else _setting("MAIL_PROXY_PRIORITY")
        self.batch_code = batch_code or _setting("MAIL_PROXY_BATCH_CODE")
        self.timeout = float(timeout if timeout is not None else _setting("MAIL_PROXY_TIMEOUT", 30.0))
        self.client: MailProxyClient | None = None

    def _connect(self) -> tuple[MailProxyClient, bool]:
        if self.client is not None:
            return self.client, False
        self.client = MailProxyClient(self.url, self.token, timeout=self.timeout)
        return self.client, True

    def open(self) -> bool:
        """Make the HTTP client (one keep-alive session); False when it already exists."""
        return self._connect()[1]

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        if not email_messages:
            return 0
        payloads: list[dict[str, Any]] = []
        by_id: dict[str, EmailMessage] = {}
        rejected: list[Rejection] = []
        for message in email_messages:
            message.mail_proxy_rejection = None  # type: ignore[attr-defined]
            if not message.recipients():
                continue  # as Django's SMTP backend: nothing to send, not an error
            try:
                payload = message_payload(message, account_id=self.account_id, batch_code=self.batch_code)
            except (UnsupportedMessage, UnicodeDecodeError) as exc:
                external_id = getattr(message, "mail_proxy_id", None)
                rejected.append(Rejection(id=external_id, reason=f"not sent: {exc}"))
                message.mail_proxy_rejection = str(exc)  # type: ignore[attr-defined]
                continue
            payloads.append(payload)
            by_id[payload["id"]] = message

        queued = 0
        client, opened = self._connect()
        try:
            for start in range(0, len(payloads), CHUNK_SIZE):
                result = client.add_messages(payloads[start:start + CHUNK_SIZE], default_priority=self.priority)
                queued += result.queued
                for item in result.rejected:
                    rejected.append(item)
                    if item.id in by_id:
                        by_id[item.id].mail_proxy_rejection = item.reason  # type: ignore[attr-defined]
        except MailProxyError as exc:
            if not self.fail_silently:
                raise
            logger.warning("mail-proxy send failed queued=%d error=%s", queued, exc)
            return queued
        finally:
            if opened:
                self.close()
        if rejected:
            logger.warning("mail-proxy refused messages queued=%d rejected=%s", queued,
                           [item.id for item in rejected][:20])
            if not self.fail_silently:
                raise MessagesRejected(rejected, queued=queued)
        return queued
