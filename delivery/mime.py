"""Build the RFC 5322 message of a queued message (SPEC §4.3) with the standard email package."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP, SMTPUTF8
from email.utils import format_datetime, getaddresses

from django.utils import timezone

from delivery.attachments import Attachment
from delivery.largefiles import Link, render_links_html, render_links_text
from queueing.models import ContentType, Message

PROXY_ID_HEADERS = ("X-Mail-Proxy-ID", "X-Genro-Mail-ID")


@dataclass(frozen=True)
class Envelope:
    mail_from: str
    recipients: list[str]
    data: bytes
    smtputf8: bool


def _with_text_links(body: str, links: Sequence[Link]) -> str:
    return f"{body.rstrip()}\n\n{render_links_text(list(links))}" if links else body


def _with_html_links(body: str, links: Sequence[Link]) -> str:
    if not links:
        return body
    block = render_links_html(list(links))
    closing = body.lower().rfind("</body>")
    return body[:closing] + block + body[closing:] if closing >= 0 else body + block


def envelope_sender(message: Message) -> str:
    """MAIL FROM: the message's return_path, else the tenant's bounce address, else From.

    With `verp` in the tenant's bounce settings the address carries the message's number
    (`bounces+<pk>@domain`), so even a bounce that quotes nothing of the original is matched.
    """
    bounce = message.tenant.bounce or {}
    sender = addr_spec(message.return_path or bounce.get("return_path") or message.from_addr)
    if bounce.get("verp") and not message.return_path and "@" in sender:
        local, _, domain = sender.rpartition("@")
        return f"{local.split('+', 1)[0]}+{message.pk}@{domain}"
    return sender


def addr_spec(address: str) -> str:
    """The bare `local@domain` of `Name <local@domain>`."""
    parsed = getaddresses([address])
    return parsed[0][1] if parsed and parsed[0][1] else address


def build_envelope(message: Message, *, recipients: list[str] | None = None,
                   attachments: Sequence[Attachment] = (), links: Sequence[Link] = ()) -> Envelope:
    """The bytes to send and the SMTP envelope: Bcc only in the envelope, never in a header.

    `attachments` are the fetched files to attach; `links` the ones moved to storage,
    listed at the end of the text and HTML bodies.
    """
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
        mail.set_content(_with_text_links(message.body_text or "", links), subtype="plain", cte="quoted-printable")
        if message.body_html:
            mail.add_alternative(_with_html_links(message.body_html, links), subtype="html", cte="quoted-printable")
    elif message.content_type == ContentType.HTML:
        mail.set_content(_with_html_links(message.body or "", links), subtype="html", cte="quoted-printable")
    else:
        mail.set_content(_with_text_links(message.body or "", links), subtype="plain", cte="quoted-printable")
    for attachment in attachments:
        maintype, _, subtype = attachment.mime_type.partition("/")
        mail.add_attachment(attachment.content, maintype=maintype, subtype=subtype or "octet-stream",
                            filename=attachment.filename)

    everyone = [addr_spec(a) for a in (*message.to, *message.cc, *message.bcc)]
    targets = recipients if recipients is not None else list(dict.fromkeys(everyone))
    mail_from = envelope_sender(message)
    # SMTPUTF8 only when an address needs it; otherwise non-ASCII text (subject, names,
    # file names) is RFC 2047/2231 encoded and any server takes the message.
    smtputf8 = not all(addr.isascii() for addr in (mail_from, addr_spec(message.from_addr), *everyone))
    data = mail.as_bytes(policy=SMTPUTF8 if smtputf8 else SMTP)
    return Envelope(mail_from=mail_from, recipients=targets, data=data, smtputf8=smtputf8)
