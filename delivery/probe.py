"""Try an SMTP account by hand: connect and authenticate, or send one test message.

For the admin console's action and `accounts test`: the answer is the server's own words,
so whoever set the account up sees exactly what the server said and at which step.
"""

from __future__ import annotations

import smtplib
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid

from django.utils import timezone

from delivery import smtp
from delivery.mime import addr_spec
from tenants.models import SmtpAccount


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    step: str  # connect, noop, mail, rcpt, data
    answer: str

    def __str__(self) -> str:
        return f"{'ok' if self.ok else 'failed'} at {self.step}: {self.answer}"


def _answer(code: int, text: bytes | str) -> str:
    words = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    return f"{code} {' '.join(words.split())}".strip()


def default_sender(account: SmtpAccount, recipient: str) -> str:
    """The account's user when it is an address (what most servers insist on), else the recipient."""
    return account.user if "@" in account.user else recipient


def probe_account(account: SmtpAccount, *, send_to: str | None = None, sender: str | None = None) -> ProbeResult:
    """Connect (TLS and login as configured); with `send_to`, also send a short test message."""
    try:
        client = smtp.connect(account)
    except (smtp.Unreachable, smtp.AuthRefused) as exc:
        return ProbeResult(False, "connect", str(exc))
    try:
        if not send_to:
            code, text = client.noop()
            return ProbeResult(code < 400, "noop", _answer(code, text))
        mail_from = addr_spec(sender or default_sender(account, send_to))
        code, text = client.mail(mail_from)
        if code >= 400:
            return ProbeResult(False, "mail", _answer(code, text))
        code, text = client.rcpt(addr_spec(send_to))
        if code >= 400:
            return ProbeResult(False, "rcpt", _answer(code, text))
        mail = EmailMessage()
        mail["From"] = sender or default_sender(account, send_to)
        mail["To"] = send_to
        mail["Subject"] = f"mail-proxy test message (account {account.external_id})"
        mail["Date"] = format_datetime(timezone.now())
        mail["Message-ID"] = make_msgid(domain=mail_from.rpartition("@")[2] or None)
        mail.set_content(f"This message tests the SMTP account {account.external_id} of tenant "
                         f"{account.tenant_id} ({account.host}:{account.port}).\n")
        try:
            code, text = client.data(mail.as_bytes(policy=SMTP))
        except smtplib.SMTPDataError as exc:
            return ProbeResult(False, "data", _answer(exc.smtp_code, exc.smtp_error))
        return ProbeResult(code < 400, "data", _answer(code, text))
    except (smtplib.SMTPException, OSError) as exc:
        return ProbeResult(False, "session", f"{type(exc).__name__}: {exc}")
    finally:
        try:
            client.quit()
        except (smtplib.SMTPException, OSError):
            client.close()
