"""Bounce parsing (SPEC §12.2): RFC 3464 delivery status notifications first, then heuristics."""

from __future__ import annotations

import email
import email.policy
import html
import itertools
import re
from dataclasses import dataclass, field
from email.message import Message


@dataclass(frozen=True)
class BouncedRecipient:
    """One recipient of a delivery report and what happened to it."""

    recipient: str
    status: str | None
    action: str | None
    smtp_code: int | None
    diagnostic: str
    kind: str | None


@dataclass(frozen=True)
class DsnReport:
    """What a bounce, a delay report or any other inbound message says about our deliveries."""

    is_bounce: bool
    recipients: tuple[BouncedRecipient, ...]
    original_message_id: str | None
    proxy_id: str | None
    verp_token: str | None


_NOT_A_BOUNCE = DsnReport(False, (), None, None, None)
_MAX_TEXT = 200_000  # characters read from one text part: notices are short, this bounds the regex work
_ACTIONS = ("failed", "delayed", "delivered", "relayed", "expanded")

# RFC 3463 §2 class.subject.detail; the look-arounds keep version strings ("4.1.0.193") and IPs out.
_STATUS_RE = re.compile(r"(?<![\w.])([245]\.\d{1,3}\.\d{1,3})(?![\d.]*\d)")
# An SMTP reply code (RFC 5321 §4.2), alone or opening a multi-line "550-" reply.
_SMTP_RE = re.compile(r"(?<![\w.#/:=-])([245][0-5]\d)(?=[\s-]|$)")
# Bounded like RFC 5321 §4.5.3.1 (64-octet local part, 63-octet labels), which also keeps scans linear.
_ADDR_RE = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63})*", re.ASCII)
_VERP_RE = re.compile(r"(?<![\w.+-])bounces\+([\w.=-]+)@", re.ASCII | re.IGNORECASE)
_PROXY_ID_RE = re.compile(r"^[ >]*X-(?:Mail-Proxy|Genro-Mail)-ID:\s*(\d+)", re.IGNORECASE | re.MULTILINE)
_MSGID_LINE_RE = re.compile(r"^[ >]*Message-ID:\s*(<[^<>\s]+>)", re.IGNORECASE | re.MULTILINE)
_QUOTA_RE = re.compile(
    r"mailbox (?:is )?full|full mailbox|quota exceeded|over ?quota|exceeded (?:the |its |his |her )?(?:storage )?quota"
    r"|insufficient (?:system )?storage|mailbox size limit|mailbox exceeds",
    re.IGNORECASE,
)
_DAEMON_RE = re.compile(r"mailer-daemon|mail-?daemon|post_?master|mdaemon|mail delivery|mailer daemon", re.I)
_BOUNCE_SUBJECT_RE = re.compile(
    r"undeliver|deliver(?:y|ed)? (?:status|fail|report|notification|problem|has failed|incomplete)|returned mail"
    r"|failure notice|failed mail|mail delivery|non-?delivery|not delivered|could not be delivered|delivery failure"
    r"|mail system error|delayed mail|warning: |mail error|returning (?:message|to sender)|error sending"
    r"|nondeliverable|delivery warning|mail failed",
    re.IGNORECASE,
)
# Wording of the human part of bounces (Postfix, Sendmail, Exim, qmail, Exchange, Gmail, Yahoo, Domino, ...).
_BOUNCE_BODY_RE = re.compile(
    r"could(?: not|n.t) be delivered|wasn.t delivered|was not delivered|not be delivered|undeliverable"
    r"|delivery (?:has )?failed|failed permanently|permanent (?:fatal )?error|unable to deliver|wasn.t able to deliver"
    r"|delivery to the following recipient|did not reach|not yet been delivered|has been delayed|message delayed"
    r"|delivery of email to this address|following address(?:es)? failed|delivery incomplete|returned to sender"
    r"|could not deliver|user unknown|unknown user|no such user|address not found|message not delivered"
    r"|does not exist|failed to deliver|delivery problem|was rejected|message was not accepted|user not found"
    r"|invalid mailbox|mailbox unavailable|failed recipients|has been returned|could not be sent|delivery error"
    r"|failed addresses|no valid recipients|not accepting mail",
    re.IGNORECASE,
)
# Delay notices: Exim "has not yet been delivered", Sendmail "WARNING MESSAGE ONLY", Gmail "has been delayed".
_DELAY_RE = re.compile(
    r"not yet been delivered|warning message only|this is a warning|warning only|just a warning|advisory-only"
    r"|has been delayed|will be retried|will retry|will continue to (?:try|attempt)|delivery attempts will continue"
    r"|still being retried|delivery incomplete|has been postponed|no action is required on your part",
    re.IGNORECASE,
)
_DELAY_SUBJECT_RE = re.compile(r"delay|warning|postponed|still being retried|not yet delivered", re.IGNORECASE)
_AUTOREPLY_SUBJECT_RE = re.compile(
    r"out of (?:the )?office|auto(?:matic)?[ -]?(?:reply|response|answer)|\bauto:|vacation|away until|abwesen"
    r"|absence|r.ponse automatique|automatische antwort",
    re.IGNORECASE,
)
# Where a notice stops and the quoted original begins (qmail, Exim, Sendmail, Gmail, Yahoo, SMTP32, ...).
_ORIGINAL_MARK_RE = re.compile(
    r"^[ \t>*=|-]*(?:(?:a|here is a|following is a) )?(?:below (?:this|the next) line|this is a copy of (?:the|your)"
    r"|original message|(?:the )?first \d+ lines|unsent message|returned message|message headers? follows|start of"
    r"|text of the original|copy of the (?:original )?message|undelivered message|end of message|your message reads"
    r"|headers? of the (?:original|source|returned)|the original message headers|returned mail follows"
    r"|message text follows|copy of the first part|content-type:\s*(?:message/rfc822|text/rfc822-headers))",
    re.IGNORECASE | re.MULTILINE,
)
# Address mentions in a notice: one that starts a line (Postfix, qmail, Exim, Yahoo, Gmail, Exchange) or
# follows a phrase naming a recipient is strong; any other is weak, used only when there is no strong one.
_LINE_START_RE = re.compile(r"[\s>]*[<\"'(\[]?")
_AFTER_ADDR_RE = re.compile(r"[>\"')\]]*\s*(?::|\.\.\.|;|,|\(|$|\s+on\s|\s+-|\s+\(|\s+<|\s*\n|\s{2})", re.I)
_LEAD_IN_RE = re.compile(
    r"(?:unknown user|user unknown|no such user|recipient|addressee|undeliverable to|deliver(?:ed|y)? to|message to"
    r"|mailbox|address|failed for|rcpt to|not found|user|sent to|addressed to)\s*[:=]?\s*[<\"'(\[]*$",
    re.IGNORECASE,
)
_EXPANDED_RE = re.compile(r"expanded from:?\s*<?$", re.IGNORECASE)
_QUOTED_HEADER_RE = re.compile(
    r"\s*(?:from|sender|reply-to|return-path|message-id|references|in-reply-to|errors-to|to|cc|x-[\w-]+)\s*:", re.I
)
_NOT_A_RECIPIENT_RE = re.compile(r"(?:[/=?]|mailto:|id\s*<|envelope-from\s*<?|from:?\s*<?|contact\s*<?)$", re.I)
_KNOWN_HEADERS = frozenset(
    {"from", "to", "cc", "subject", "date", "received", "message-id", "content-type", "return-path", "sender",
     "mime-version", "delivered-to", "reply-to", "auto-submitted", "precedence", "references", "in-reply-to"}
)


def classify(*, status: str | None, smtp_code: int | None, action: str | None, diagnostic: str = "") -> str | None:
    """Return "hard", "soft", "delayed" or None (not a failure) per SPEC §12.2."""
    if action == "delayed":
        return "delayed"
    if action in ("delivered", "relayed", "expanded"):
        return None
    if status:
        if status.startswith("5."):
            return "soft" if status == "5.2.2" else "hard"
        return "soft" if status.startswith("4.") else None
    # No enhanced code: quota wording goes before the reply code because MTAs often send 550 for it.
    if _QUOTA_RE.search(" ".join(diagnostic.split())) or smtp_code == 552:
        return "soft"
    if smtp_code is not None and 400 <= smtp_code < 600:
        return "hard" if smtp_code >= 500 else "soft"
    # RFC 3464 §2.3.3: "failed" means the MTA gave up, so a failure without any code is permanent.
    return "hard" if action == "failed" else None


@dataclass
class _Parts:
    """A message sorted out: notice texts, delivery-status texts, the original's headers and text."""

    notices: list[str] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    originals: list[Message] = field(default_factory=list)
    original_texts: list[str] = field(default_factory=list)
    feedback: bool = False


def parse_dsn(raw: bytes) -> DsnReport:
    """Read a bounce or delay report; anything unreadable or not a bounce gives is_bounce False."""
    try:
        return _parse(raw)
    except Exception:  # noqa: BLE001 - hostile or broken input must never stop the mailbox reader
        return _NOT_A_BOUNCE


def _parse(raw: bytes) -> DsnReport:
    """Do the work of parse_dsn."""
    # One line ending for all: CR-only (old Mac) and CRLF files otherwise break header and field parsing.
    data = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").lstrip(b" \t\n")
    if data.startswith(b"From "):  # an mbox separator line is not a header
        data = data.split(b"\n", 1)[-1]
    msg = email.message_from_bytes(data, policy=email.policy.default)
    if not any(name.lower() in _KNOWN_HEADERS or name.lower().startswith("x-") for name in msg):
        # A bare notice text (a pasted bounce): a first line such as "[https://..." is no header.
        msg = email.message_from_bytes(b"\n" + data, policy=email.policy.default)
    parts = _Parts()
    _collect(msg, parts, top=True)
    forwarded = [o for o in parts.originals if o.get_content_type() == "multipart/report"]
    if not parts.statuses and forwarded:
        # A DSN forwarded as an attachment (a relay or a helpdesk re-wrapping it): read the inner report.
        inner = _Parts()
        _collect(forwarded[0], inner)
        parts = inner if inner.statuses else parts
    verp = _verp_token(msg)
    if parts.feedback:  # RFC 5965 feedback report (a complaint), not a delivery failure
        return DsnReport(False, (), None, None, verp)
    original_id, proxy_id = _original_ids(msg, parts)
    subject = _header(msg, "subject")
    recipients = _from_status_parts(parts)
    if recipients:
        # A DSN that only reports deliveries or relays (RFC 3464 success notices) is not a bounce.
        is_bounce = any(r.kind is not None for r in recipients)
    else:
        is_bounce = bool(parts.statuses) and not _is_autoreply(msg, subject)
        if _looks_like_bounce(msg, subject, parts):
            recipients, is_bounce = _from_text(msg, subject, parts), True
    return DsnReport(is_bounce, tuple(recipients) if is_bounce else (), original_id, proxy_id, verp)


def _header(msg: Message, name: str) -> str:
    """A header as one line of text; empty when missing or unreadable."""
    try:
        value = msg.get(name)
        return " ".join(str(value).split()) if value is not None else ""
    except Exception:  # noqa: BLE001 - the default policy raises on some malformed headers
        return ""


def _text(part: Message) -> str:
    """The decoded text of a leaf part, HTML reduced to text."""
    try:
        payload = part.get_payload(decode=True)
    except Exception:  # noqa: BLE001 - broken transfer encodings
        payload = None
    if not isinstance(payload, bytes):
        value = part.get_payload()
        payload = value.encode("utf-8", "replace") if isinstance(value, str) else b""
    payload = payload[: _MAX_TEXT * 4]
    try:
        text = payload.decode(part.get_content_charset() or "utf-8", "replace")
    except LookupError:  # an unknown charset name ("unicode-1-1-utf-7")
        text = payload.decode("latin-1")
    if part.get_content_subtype() == "html":
        text = _html_text(text[:_MAX_TEXT])
    return text[:_MAX_TEXT].replace("\r\n", "\n").replace("\r", "\n")


def _html_text(text: str) -> str:
    """HTML reduced to its text, in linear time (unclosed tags make html.parser and lazy regexes quadratic)."""
    for tag in ("script", "style"):
        pieces = re.split(rf"(?i)<{tag}\b", text)
        ends = [(piece, piece.lower().find(f"</{tag}")) for piece in pieces[1:]]
        text = " ".join([pieces[0], *(piece[end:] for piece, end in ends if end >= 0)])
    text = re.sub(r"(?i)<(?:br|/p|/div|/tr|/li)\b[^<>]{0,2000}>", "\n", text)
    return html.unescape(re.sub(r"<[^<>]{0,2000}>", " ", text))


def _collect(part: Message, parts: _Parts, *, top: bool = False) -> None:
    """Sort a MIME tree into notices, status fields and the original, without entering the original."""
    ctype = part.get_content_type()
    if ctype == "message/feedback-report" or part.get_param("report-type") == "feedback-report":
        parts.feedback = True
    payload = part.get_payload()
    if ctype in ("message/rfc822", "message/global", "message/partial", "message/rfc822-headers"):
        inner = payload[0] if isinstance(payload, list) and payload else None
        if isinstance(inner, Message):
            parts.originals.append(inner)
            parts.original_texts.append(_flatten(inner))
        return
    if ctype in ("message/delivery-status", "message/global-delivery-status"):  # RFC 3464, RFC 6533
        blocks = [b for b in payload if isinstance(b, Message)] if isinstance(payload, list) else []
        # A field the parser cannot read (an unindented continuation line) ends a block's "headers" early:
        # the rest lands in the block's body, so that is read as fields too.
        texts = [_flatten(b) + "\n" + ("" if b.is_multipart() else str(b.get_payload())) for b in blocks]
        parts.statuses.append("\n\n".join(texts) if texts else _text(part))
        return
    if ctype == "text/rfc822-headers":
        text = _text(part)
        parts.original_texts.append(text)
        parts.originals.append(email.message_from_string(text, policy=email.policy.default))
        return
    if part.is_multipart():
        for sub in payload if isinstance(payload, list) else []:
            if isinstance(sub, Message):
                _collect(sub, parts)
        return
    if not top and (part.get("message-id") or part.get("received")):
        # A returned original whose own headers became the MIME part's headers (lost boundary lines).
        parts.originals.append(part)
        parts.original_texts.append(_flatten(part))
        return
    # A multipart whose boundary parameter got lost (a broken fold) arrives as one leaf: read it as text.
    if part.get_content_maintype() in ("text", "multipart") or top:
        text = _text(part)
        # Some MTAs (IIS, old Exchange, SurfControl) send the RFC 3464 fields as text/plain.
        if re.search(r"(?im)^(?:final|original)-recipient\s*:", text) and re.search(r"(?im)^status\s*:", text):
            parts.statuses.append(text)
        if cut := _ORIGINAL_MARK_RE.search(text):
            parts.original_texts.append(text[cut.start() :])
            text = text[: cut.start()]
        if part.get_content_subtype() != "html" or not parts.notices:  # HTML only when nothing plainer came
            parts.notices.append(text)


def _flatten(msg: Message) -> str:
    """The header fields of a message (or of one delivery-status block) as unparsed "Name: value" lines."""
    return "\n".join(f"{name}: {value}" for name, value in msg.raw_items())


# -- RFC 3464 ----------------------------------------------------------------------------------------------


def _field_blocks(text: str) -> list[dict[str, str]]:
    """Split RFC 3464 §2.1 field groups into dictionaries of lower-cased names (first value wins)."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last = ""
    for line in [*text.split("\n"), ""]:
        if not line.strip():
            if current:
                blocks.append(current)
            current, last = {}, ""
        elif line[0] in " \t" and last:
            current[last] += " " + line.strip()
        elif found := re.match(r"\s*([A-Za-z][\w-]*)\s*:\s*(.*)", line):
            last = found.group(1).lower()
            if last in current:
                # Without blank lines between recipients, a second Final-Recipient starts the next group.
                if last not in ("final-recipient", "original-recipient") or "final-recipient" not in current:
                    last = "-repeated"
                else:
                    blocks.append(current)
                    current = {}
            current[last] = found.group(2).strip()
    return blocks


def _recipient_of(block: dict[str, str]) -> str:
    """Final-Recipient (RFC 3464 §2.3.2), or Original-Recipient when the final one is no plain rfc822 address."""
    for name in ("final-recipient", "original-recipient"):
        value = block.get(name, "")
        address_type = value.split(";", 1)[0].strip().lower() if ";" in value else "rfc822"
        address = _address(value)
        # X.400 forms ("/S=user/O=org/"), source routes ("@relay:user@host") and "<>" cannot be correlated.
        if address_type == "rfc822" and re.fullmatch(r"[^@\s:/]+@[^@\s]+", address):
            return address
    return _address(block.get("final-recipient") or block.get("original-recipient") or "")


def _address(value: str) -> str:
    """The addr-spec of a recipient field ("rfc822; <User@Example.org>"), lower-cased."""
    value = (value.split(";", 1)[1] if ";" in value else value).strip()
    if len(value.split()) > 1:  # a display name or a comment around it
        found = _ADDR_RE.search(value)
        value = found.group(0) if found else value.split()[0]
    return value.strip("<>\"'.,; ").lower()


def _from_status_parts(parts: _Parts) -> list[BouncedRecipient]:
    """The per-recipient fields of RFC 3464 §2.3, one entry per recipient."""
    found: dict[str, BouncedRecipient] = {}
    notice = "\n".join(parts.notices)
    lowered = notice.lower()
    for text in parts.statuses:
        blocks = _field_blocks(text)
        message_action = next((b["action"] for b in blocks if "action" in b and "final-recipient" not in b), "")
        for block in blocks:
            recipient = _recipient_of(block)
            if not recipient or recipient in found:
                continue
            diagnostic = block.get("diagnostic-code", "")
            diagnostic = _one_line(diagnostic.split(";", 1)[1] if ";" in diagnostic[:20] else diagnostic)
            word = (block.get("action") or message_action).strip().lower()
            # Some MTAs write "failure" or "Delayed (retrying)": the RFC 3464 §2.3.3 word is the stem.
            action = next((a for a in _ACTIONS if word.startswith(a[:5])), None)
            status = _status(block.get("status", ""))
            remote = _status(diagnostic)
            if remote and (status is None or remote[0] == status[0]):
                # The remote server's own code is more precise than the reporting MTA's summary
                # (Amazon SES says 5.1.0 for every failure, Sendmail 4.4.7 for every expiry).
                status = remote
            smtp_code = _smtp_code(diagnostic) or _smtp_code(block.get("status", ""))
            if not diagnostic:
                diagnostic = _line_about(recipient, notice, lowered)
                smtp_code = smtp_code or _smtp_code(diagnostic, "45")
            kind = classify(status=status, smtp_code=smtp_code, action=action, diagnostic=diagnostic)
            found[recipient] = BouncedRecipient(recipient, status, action, smtp_code, diagnostic, kind)
    return list(found.values())


def _status(text: str, classes: str = "245") -> str | None:
    """The enhanced code given with the remote server's reply ("550-'5.7.1 ..."), else the first one."""
    code = rf"([{classes}]\.\d{{1,3}}\.\d{{1,3}})(?![\d.]*\d)"
    found = re.search(rf"(?<![\w.])[245]\d\d[ -]['\"]?{code}", text) or re.search(rf"(?<![\w.]){code}", text)
    return found.group(1) if found else None


def _smtp_code(text: str, classes: str = "245") -> int | None:
    """The first SMTP reply code of the given classes in a text."""
    found = next((m for m in _SMTP_RE.finditer(text) if m.group(1)[0] in classes), None)
    return int(found.group(1)) if found else None


def _one_line(text: str) -> str:
    """Whitespace collapsed, cut at 500 characters."""
    return " ".join(text.split())[:500]


def _line_about(recipient: str, notice: str, lowered: str) -> str:
    """The line of the human-readable part that names a recipient, with its indented continuation."""
    at = lowered.find(recipient)
    if at < 0:
        return ""
    start = notice.rfind("\n", 0, at) + 1
    lines = notice[start:].split("\n", 4)
    more = [x for x in lines[1:4] if x.startswith((" ", "\t")) and x.strip()]
    return _one_line(" ".join([lines[0], *more]))


# -- correlation -----------------------------------------------------------------------------------------


def _verp_token(msg: Message) -> str | None:
    """The token of the VERP address bounces+<token>@domain the bounce was sent to."""
    for name in ("delivered-to", "x-original-to", "to", "envelope-to"):
        if found := _VERP_RE.search(_header(msg, name)):
            return found.group(1)
    return None


def _original_ids(msg: Message, parts: _Parts) -> tuple[str | None, str | None]:
    """Message-ID and proxy id of the original: attached headers first, then lines quoted in the text."""
    message_id = proxy_id = None
    for original in parts.originals:
        if not message_id and (found := re.search(r"<[^<>\s]+>", _header(original, "message-id"))):
            message_id = found.group(0)
        for name in ("x-mail-proxy-id", "x-genro-mail-id"):
            if not proxy_id and (value := _header(original, name)).isdigit():
                proxy_id = value
    own_id = _header(msg, "message-id")
    # Status texts come last: a broken boundary can leave the original's headers inside them.
    for text in parts.original_texts + parts.notices + parts.statuses:
        if not message_id:
            message_id = next((m for m in _MSGID_LINE_RE.findall(text) if m != own_id), None)
        if not proxy_id and (found := _PROXY_ID_RE.search(text)):
            proxy_id = found.group(1)
    return message_id, proxy_id


# -- non-standard bounces -------------------------------------------------------------------------------


def _is_autoreply(msg: Message, subject: str) -> bool:
    """RFC 3834 auto-replies and out-of-office notices (mail systems set Auto-Submitted on bounces too)."""
    if _DAEMON_RE.search(_header(msg, "from")):
        return False
    auto = _header(msg, "auto-submitted").lower().startswith("auto-replied") or _header(msg, "x-autoreply")
    return bool(auto or _AUTOREPLY_SUBJECT_RE.search(subject))


def _looks_like_bounce(msg: Message, subject: str, parts: _Parts) -> bool:
    """Heuristic for reports without status fields: sender, subject and wording together."""
    if _is_autoreply(msg, subject):
        return False
    if _header(msg, "x-failed-recipients"):  # Exim, Gmail
        return True
    daemon = bool(_DAEMON_RE.search(_header(msg, "from")) or _header(msg, "return-path") == "<>")
    worded = bool(_BOUNCE_BODY_RE.search(" ".join(" ".join(parts.notices).split())))  # wording wraps lines
    titled = bool(_BOUNCE_SUBJECT_RE.search(subject))
    # qmail-style "<user@host>:" lines from a mail system are a bounce in any language (Sina, mail.ru).
    listed = bool(re.search(r"(?m)^\s*<[^<>@\s]+@[^<>\s]+>:", "\n".join(parts.notices)))
    # Failure wording next to the returned original is a bounce whatever the sender is called (KDDI).
    context = titled or not msg.keys() or bool(parts.originals)
    return (daemon and (worded or titled or listed)) or (worded and context)


def _from_text(msg: Message, subject: str, parts: _Parts) -> list[BouncedRecipient]:
    """Recipients, codes and wording from the human-readable text of a non-standard bounce."""
    notice = "\n".join(parts.notices)
    delayed = bool(_DELAY_RE.search(" ".join(notice.split())) or _DELAY_SUBJECT_RE.search(subject))
    action = "delayed" if delayed else "failed"
    result = []
    for recipient, context in _text_recipients(msg, notice, parts):
        # Failure classes only: "2.1.6" in a notice is a version (Mailman 2.1.6), "220" a greeting.
        status, smtp_code = _status(context, "45"), _smtp_code(context, "45")
        kind = classify(status=status, smtp_code=smtp_code, action=action, diagnostic=context)
        result.append(BouncedRecipient(recipient, status, action, smtp_code, _diagnostic_line(context), kind))
    return result


def _diagnostic_line(context: str) -> str:
    """The most telling line of a recipient's part of a notice: one with a code, else the one after the address."""
    lines = [x.strip() for x in context.split("\n") if x.strip()]
    coded = [x for x in lines if _STATUS_RE.search(x) or _SMTP_RE.search(x)]
    return _one_line((coded or lines[1:2] or lines[:1] or [""])[0])


def _text_recipients(msg: Message, notice: str, parts: _Parts) -> list[tuple[str, str]]:
    """Failed addresses named in a notice, each with the stretch of text that concerns it."""
    strong: list[tuple[int, str]] = []
    weak: list[tuple[int, str]] = []
    for m in itertools.islice(_ADDR_RE.finditer(notice), 1000):  # a notice naming more is no notice
        addr = _clean_address(m.group(0))
        line_begin = notice.rfind("\n", 0, m.start()) + 1
        whole_line = m.start() - line_begin <= 200  # prefixes are cut at 200 characters to bound the regex work
        prefix, rest = notice[max(line_begin, m.start() - 200) : m.start()], notice[m.end() : m.end() + 12]
        if _EXPANDED_RE.search(prefix) and strong:
            # "<alias@x> (expanded from <list@y>)": the sender only knows the address it used (Postfix, Sendmail).
            strong[-1] = (strong[-1][0], addr)
            continue
        if (whole_line and _QUOTED_HEADER_RE.match(prefix)) or _NOT_A_RECIPIENT_RE.search(prefix):
            continue
        # A server reply just before it on the line ("552 Quota violation for a@b") names the recipient,
        # an address further on in the reply's prose ("... or write to abuse@rbl.example") does not.
        ends = [c.end() for c in (*_SMTP_RE.finditer(prefix), *_STATUS_RE.finditer(prefix))]
        after = prefix[max(ends) :] if ends else ""
        reply = bool(ends) and len(after) <= 40 and not re.search(r"contact|http|www\.|visit|send|write", after, re.I)
        line_start = bool(whole_line and _LINE_START_RE.fullmatch(prefix) and _AFTER_ADDR_RE.match(rest))
        (strong if line_start or reply or _LEAD_IN_RE.search(prefix) else weak).append((m.start(), addr))
    ours = {a.lower() for a in _ADDR_RE.findall(" ".join(_header(msg, n) for n in ("from", "to", "return-path")))}
    senders = set(ours)
    for original in parts.originals:
        for name in ("from", "sender", "reply-to", "return-path", "errors-to"):
            senders.update(a.lower() for a in _ADDR_RE.findall(_header(original, name)))
    named = [a for _, a in strong if a not in ours]
    candidates = (
        [_clean_address(a) for a in _ADDR_RE.findall(_header(msg, "x-failed-recipients"))]
        or [a for a in named if not _is_daemon(a)]
        or named  # a mailbox called postmaster can bounce too, when nobody else is named
        or [a for _, a in weak if a not in senders and not _is_daemon(a)]
        or _screen_names(msg, notice)
    )
    ordered = list(dict.fromkeys(candidates))
    if len(ordered) == 1:
        return [(ordered[0], notice)]
    mentions = sorted(strong + weak)
    result = []
    for addr in ordered:
        begin = next((pos for pos, a in mentions if a == addr), 0)
        end = min((pos for pos, a in mentions if a != addr and a in ordered and pos > begin), default=len(notice))
        result.append((addr, notice[notice.rfind("\n", 0, begin) + 1 : end]))
    return result


def _screen_names(msg: Message, notice: str) -> list[str]:
    """AOL lists bare screen names under "the following recipients"; they are @aol.com addresses."""
    if not re.search(r"@aol\.com\b", _header(msg, "from"), re.IGNORECASE):
        return []
    listed = re.search(r"following recipients[^\n]*\n((?:[ \t]+[\w.-]+[ \t]*\n?)+)", notice, re.IGNORECASE)
    return [f"{name.lower()}@aol.com" for name in listed.group(1).split()] if listed else []


def _clean_address(addr: str) -> str:
    """An address found in text, without quotes, trailing dots or an X.400 "SMTP=" prefix (Exchange 5.5)."""
    return re.sub(r"^(?:smtp|rfc-?822)=", "", addr.strip("'.").lower())


def _is_daemon(addr: str) -> bool:
    """Addresses of mail systems rather than people: postmaster, mailer-daemon and the like."""
    return bool(re.match(r"(?:postmaster|mailer-daemon|mail-daemon|mailerdaemon|mdaemon|abuse|root|uucp)@", addr))
