"""Build the RFC 5322 message of a queued message (SPEC §4.3) with the standard email package."""

from __future__ import annotations

import base64
import binascii
import mimetypes
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP, SMTPUTF8
from email.utils import format_datetime, getaddresses

from django.utils import timezone

from queueing.models import ContentType, Message

PROXY_ID_HEADERS = ("X-Mail-Proxy-ID", "X-Genro-Mail-ID")


class AttachmentError(Exception):
    """An attachment cannot be had; `permanent` says whether trying again could help."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class Envelope:
    mail_from: str
    recipients: list[str]
    data: bytes
    smtputf8: bool


def addr_spec(address: str) -> str:
    """The bare `local@domain` of `Name <local@domain>`."""
    parsed = getaddresses([address])
    return parsed[0][1] if parsed and parsed[0][1] else address


def _load_attachment(item: dict[str, object]) -> tuple[str, str, bytes]:
    filename = str(item["filename"])
    path = str(item["storage_path"])
    mode = item.get("fetch_mode") or ("base64" if path.startswith("base64:") else None)
    if mode != "base64":
        # Fetching from files, URLs and the tenant's endpoint is a separate component; until
        # it is installed such a message fails clearly instead of going out without its file.
        raise AttachmentError(f"attachment {filename!r}: fetch mode {mode or 'inferred'!r} is not available",
                              permanent=True)
    try:
        content = base64.b64decode(path.removeprefix("base64:"), validate=True)
    except (binascii.Error, ValueError):
        raise AttachmentError(f"attachment {filename!r}: storage_path is not valid base64", permanent=True) from None
    mime_type = str(item.get("mime_type") or mimetypes.guess_type(filename)[0] or "application/octet-stream")
    return filename, mime_type, content


def build_envelope(message: Message, *, recipients: list[str] | None = None) -> Envelope:
    """The bytes to send and the SMTP envelope: Bcc only in the envelope, never in a header."""
    mail = EmailMessage()
    mail["From"] = message.from_addr
    if message.to:
        mail["To"] = ", ".join(message.to)
    if message.cc:
        mail["Cc"] = ", ".join(message.cc)
    if message.reply_to:
        mail["Reply-To"] = message.reply_to
    mail["Subject"] = message.subject
    mail["Date"] = format_datetime(timezone.now())
    mail["Message-ID"] = message.message_id
    for name in PROXY_ID_HEADERS:
        mail[name] = str(message.pk)
    for name, value in message.headers.items():
        mail[name] = value

    if message.body_text or message.body_html:
        mail.set_content(message.body_text or "", subtype="plain", cte="quoted-printable")
        if message.body_html:
            mail.add_alternative(message.body_html, subtype="html", cte="quoted-printable")
    else:
        subtype = "html" if message.content_type == ContentType.HTML else "plain"
        mail.set_content(message.body or "", subtype=subtype, cte="quoted-printable")
    for item in message.attachments:
        filename, mime_type, content = _load_attachment(item)
        maintype, _, subtype = mime_type.partition("/")
        mail.add_attachment(content, maintype=maintype, subtype=subtype or "octet-stream", filename=filename)

    everyone = [addr_spec(a) for a in (*message.to, *message.cc, *message.bcc)]
    targets = recipients if recipients is not None else list(dict.fromkeys(everyone))
    mail_from = addr_spec(message.return_path or message.from_addr)
    # SMTPUTF8 only when an address needs it; otherwise non-ASCII text (subject, names,
    # file names) is RFC 2047/2231 encoded and any server takes the message.
    smtputf8 = not all(addr.isascii() for addr in (mail_from, addr_spec(message.from_addr), *everyone))
    data = mail.as_bytes(policy=SMTPUTF8 if smtputf8 else SMTP)
    return Envelope(mail_from=mail_from, recipients=targets, data=data, smtputf8=smtputf8)
