"""Recognise Italian PEC receipts and transport envelopes and read their certified data (SPEC §13)."""

from __future__ import annotations

import contextlib
import email
import email.errors
import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from email.header import decode_header, make_header
from email.message import Message
from email.utils import collapse_rfc2231_value, parseaddr, parsedate_to_datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

logger = logging.getLogger(__name__)

# X-Ricevuta values defined by the PEC technical rules (DM 2 Nov 2005), mapped to SPEC §13 events.
PROXY_EVENTS: dict[str, str] = {
    "accettazione": "pec_acceptance",
    "presa-in-carico": "pec_relay",
    "avvenuta-consegna": "pec_delivery",
    "non-accettazione": "pec_error",
    "errore-consegna": "pec_error",
    "preavviso-errore-consegna": "pec_error",
    "rilevazione-virus": "pec_error",
}

# X-Trasporto values: "posta-certificata" (busta di trasporto) and "errore" (busta di anomalia).
TRANSPORT_TYPES: frozenset[str] = frozenset({"posta-certificata", "errore"})

# Receipts that concern one recipient: their daticert <consegna> names it, while <destinatari> lists everyone.
_PER_RECIPIENT_TYPES: frozenset[str] = frozenset(
    {"avvenuta-consegna", "errore-consegna", "preavviso-errore-consegna", "rilevazione-virus"}
)

# Standard subjects, most specific first: "AVVISO DI NON ACCETTAZIONE" and "NON ACCETTAZIONE" must be
# tried before "ACCETTAZIONE:", and every prefix is anchored at the start so that a rejection can never
# read as an acceptance. Case-sensitive on purpose: providers write them in capitals, while a person's
# "Consegna: ..." in a PEC mailbox is not a receipt.
_SUBJECT_PREFIXES: tuple[tuple[str, str], ...] = (
    ("AVVISO DI NON ACCETTAZIONE PER VIRUS", "non-accettazione"),
    ("AVVISO DI NON ACCETTAZIONE", "non-accettazione"),
    ("NON ACCETTAZIONE", "non-accettazione"),
    ("ACCETTAZIONE:", "accettazione"),
    ("PRESA IN CARICO:", "presa-in-carico"),
    # The 12-hour warning of the technical rules; the plain form below is the final notice.
    ("AVVISO DI MANCATA CONSEGNA PER SUP. TEMPO MASSIMO", "preavviso-errore-consegna"),
    ("AVVISO DI MANCATA CONSEGNA", "errore-consegna"),
    ("CONSEGNA:", "avvenuta-consegna"),
    ("PROBLEMA DI SICUREZZA:", "rilevazione-virus"),
    ("POSTA CERTIFICATA:", "posta-certificata"),
    ("ANOMALIA MESSAGGIO:", "errore"),
)

_VIRUS_SUBJECTS: tuple[str, ...] = ("AVVISO DI NON ACCETTAZIONE PER VIRUS", "AVVISO DI MANCATA CONSEGNA PER VIRUS")

_PROXY_ID_HEADERS: tuple[str, ...] = ("X-Mail-Proxy-ID", "X-Genro-Mail-ID")

# A daticert.xml is a few hundred bytes; anything this large is not one and is not worth parsing.
_MAX_DATICERT_BYTES = 256 * 1024
# Real receipts nest three or four levels; the limit keeps hostile nesting from costing time.
_MAX_MIME_DEPTH = 20

_ZONE_RE = re.compile(r"([+-])(\d{2}):?(\d{2})")
_DAY_RE = re.compile(r"(\d{1,2})/(\d{1,2})/(\d{4})")
_TIME_RE = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2}))?")

# Everything the email and XML layers are known to raise on broken input; the parser's contract is
# never to raise, and these are the failures of malformed data rather than of the code.
_PARSE_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    LookupError,
    AttributeError,
    RecursionError,
    email.errors.MessageError,
    ET.ParseError,
)


@dataclass(frozen=True)
class PecReceipt:
    """What a PEC receipt or transport envelope certifies, as far as the message shows it."""

    receipt_type: str | None
    proxy_event: str | None
    msgid: str | None
    recipients: tuple[str, ...]
    timestamp: datetime | None
    error: str | None
    identificativo: str | None
    is_transport: bool
    proxy_id: str | None


@dataclass(frozen=True)
class _Daticert:
    """The fields of a daticert.xml that the receipt needs."""

    tipo: str | None
    errore: str | None
    errore_esteso: str | None
    destinatari: tuple[str, ...]
    consegna: tuple[str, ...]
    msgid: str | None
    identificativo: str | None
    timestamp: datetime | None


def parse_receipt(raw: bytes) -> PecReceipt | None:
    """Parse a message from a PEC mailbox; None when it is not PEC at all. Never raises."""
    try:
        return _parse(raw)
    except _PARSE_ERRORS as exc:
        # Only the exception class: the message text may quote the receipt's content.
        logger.warning("unparseable PEC message (%s)", type(exc).__name__)
        return None


def _parse(raw: bytes) -> PecReceipt | None:
    """Do the work of parse_receipt, letting malformed-input errors escape to its guard."""
    msg = email.message_from_bytes(bytes(raw))
    leaves, enclosed = _split_parts(msg)
    daticert = _find_daticert(leaves)

    x_ricevuta = _token(_header(msg, "X-Ricevuta"))
    x_trasporto = _token(_header(msg, "X-Trasporto"))
    x_riferimento = _header(msg, "X-Riferimento-Message-ID")
    subject = _header(msg, "Subject")
    subject_type = _subject_type(subject)

    # Recognition order of SPEC §13: X-Ricevuta, then X-Trasporto (no X-Ricevuta means an envelope),
    # then daticert tipo, then the subject. An unknown header value does not stop the search, so a
    # provider's odd spelling still yields the daticert answer.
    receipt_type: str | None = None
    for candidate in (x_ricevuta, x_trasporto, daticert.tipo if daticert else None, subject_type):
        if candidate in PROXY_EVENTS or candidate in TRANSPORT_TYPES:
            receipt_type = candidate
            break
    else:
        receipt_type = x_ricevuta or x_trasporto or (daticert.tipo if daticert else None)

    if receipt_type is None and x_riferimento is None:
        return None

    is_transport = x_ricevuta is None and (x_trasporto is not None or receipt_type in TRANSPORT_TYPES)
    proxy_event = None if is_transport else PROXY_EVENTS.get(receipt_type or "")

    msgid = _angle(daticert.msgid if daticert else None) or _angle(x_riferimento)

    recipients: tuple[str, ...] = ()
    if daticert is not None:
        if receipt_type in _PER_RECIPIENT_TYPES and daticert.consegna:
            recipients = daticert.consegna
        else:
            recipients = daticert.destinatari

    timestamp = (daticert.timestamp if daticert else None) or _date_header(msg)

    error: str | None = None
    if proxy_event == "pec_error":
        error = _error_text(daticert, subject)

    return PecReceipt(
        receipt_type=receipt_type,
        proxy_event=proxy_event,
        msgid=msgid,
        recipients=recipients,
        timestamp=timestamp,
        error=error,
        identificativo=daticert.identificativo if daticert else None,
        is_transport=is_transport,
        proxy_id=_proxy_id(msg, leaves, enclosed),
    )


def _split_parts(msg: Message) -> tuple[list[Message], list[Message]]:
    """Leaf parts of the message itself, and the messages it encloses (postacert.eml), not entered."""
    # An enclosed message is the original (or the certified mail itself); its own daticert or
    # X-Ricevuta, if any, belong to another exchange and must not be read as this receipt's.
    leaves: list[Message] = []
    enclosed: list[Message] = []
    stack: list[tuple[Message, int]] = [(msg, 0)]
    while stack:
        part, depth = stack.pop()
        ctype = part.get_content_type()
        if ctype == "message/rfc822":
            inner = _enclosed_message(part)
            if inner is not None:
                enclosed.append(inner)
            continue
        # application/pkcs7-mime (opaque S/MIME) carries the signed MIME inside DER-encoded CMS; it is
        # not parsed here (that needs an ASN.1 reader), so such a receipt is recognised from its
        # headers and subject only. multipart/signed keeps the content in clear and is walked below.
        payload = part.get_payload()
        if isinstance(payload, list):
            if depth < _MAX_MIME_DEPTH:
                children = [child for child in payload if isinstance(child, Message)]
                stack.extend((child, depth + 1) for child in reversed(children))
            continue
        leaves.append(part)
    return leaves, enclosed


def _enclosed_message(part: Message) -> Message | None:
    """The message inside a message/rfc822 part, also when a provider base64-encoded it."""
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        inner = payload[0]
        if len(inner.keys()) > 0:
            return inner
    # RFC 2046 §5.2.1 forbids encoding message/rfc822, but some software does; decode it by hand.
    data = part.get_payload(decode=True)
    if isinstance(data, bytes) and data:
        return email.message_from_bytes(data)
    return None


def _find_daticert(leaves: Iterable[Message]) -> _Daticert | None:
    """The parsed daticert.xml among the leaf parts: by file name, else any XML part rooted in postacert."""
    xml_parts: list[Message] = []
    for part in leaves:
        name = (_filename(part) or "").strip().lower()
        if name == "daticert.xml":
            found = _parse_daticert(part.get_payload(decode=True))
            if found is not None:
                return found
        elif part.get_content_type() in ("application/xml", "text/xml"):
            xml_parts.append(part)
    for part in xml_parts:
        found = _parse_daticert(part.get_payload(decode=True))
        if found is not None:
            return found
    return None


def _filename(part: Message) -> str | None:
    """The part's file name from Content-Disposition or the Content-Type name parameter."""
    name = part.get_filename() or part.get_param("name")
    if isinstance(name, tuple):
        # An RFC 2231 parameter the email package could not collapse: (charset, language, value).
        return collapse_rfc2231_value(name)
    return name if isinstance(name, str) else None


def _parse_daticert(data: object) -> _Daticert | None:
    """Read a daticert.xml; None when it is absent, unsafe or not a postacert document."""
    if not isinstance(data, bytes) or not data or len(data) > _MAX_DATICERT_BYTES:
        return None
    upper = data.upper()
    # defusedxml's rule without the dependency: a daticert never declares a DTD or entities, and
    # refusing them closes entity expansion and external entities. NUL bytes mean UTF-16/32, which
    # would hide those markers from this byte check (daticert is UTF-8 or ISO-8859-1).
    if b"<!DOCTYPE" in upper or b"<!ENTITY" in upper or b"\x00" in data:
        return None
    try:
        root = ET.fromstring(data)  # noqa: S314 - DTDs and entities are refused just above
    except (ET.ParseError, ValueError, LookupError):
        return None
    if _local(root.tag) != "postacert":
        return None

    dati = _first(root, "dati")
    scope = dati if dati is not None else root
    return _Daticert(
        tipo=_token(root.get("tipo")),
        errore=_token(root.get("errore")),
        errore_esteso=_text(_first(scope, "errore-esteso")),
        destinatari=_addresses(_text(el) for el in _all(root, "destinatari")),
        consegna=_addresses(_text(el) for el in _all(scope, "consegna")),
        msgid=_text(_first(scope, "msgid")),
        identificativo=_text(_first(scope, "identificativo")),
        timestamp=_certified_time(_first(scope, "data")),
    )


def _certified_time(data: ET.Element | None) -> datetime | None:
    """The aware datetime of a daticert <data zona="+0100"><giorno>…</giorno><ora>…</ora></data>."""
    if data is None:
        return None
    day = _DAY_RE.fullmatch(_text(_first(data, "giorno")) or "")
    clock = _TIME_RE.fullmatch(_text(_first(data, "ora")) or "")
    if day is None or clock is None:
        return None
    tz = _zone(data.get("zona"))
    if tz is None:
        return None
    try:
        return datetime(
            int(day.group(3)),
            int(day.group(2)),
            int(day.group(1)),
            int(clock.group(1)),
            int(clock.group(2)),
            int(clock.group(3) or 0),
            tzinfo=tz,
        )
    except ValueError:
        return None


def _zone(zona: str | None) -> timezone | ZoneInfo | None:
    """The fixed offset of a zona attribute ("+0100", "+01:00"); Italian time when it is missing."""
    if zona is None or not zona.strip():
        # The technical rules always write zona; without it the time is the provider's, i.e. Italy's.
        try:
            return ZoneInfo("Europe/Rome")
        except ZoneInfoNotFoundError:
            return None
    match = _ZONE_RE.fullmatch(zona.strip())
    if match is None:
        return None
    hours, minutes = int(match.group(2)), int(match.group(3))
    if hours > 23 or minutes > 59:
        return None
    offset = timedelta(hours=hours, minutes=minutes)
    return timezone(-offset if match.group(1) == "-" else offset)


def _date_header(msg: Message) -> datetime | None:
    """The Date header as an aware datetime; "-0000" (zone unknown) is read as UTC."""
    value = _header(msg, "Date")
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (ValueError, TypeError, IndexError):
        return None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed


def _error_text(daticert: _Daticert | None, subject: str | None) -> str | None:
    """The reason of a pec_error: errore (unless "nessuno") and errore-esteso, joined by ": "."""
    if daticert is not None:
        errore = daticert.errore if daticert.errore and daticert.errore != "nessuno" else None
        text = ": ".join(part for part in (errore, daticert.errore_esteso) if part)
        if text:
            return text
    # Without daticert only the "... PER VIRUS" subjects name a reason (errore="virus" in daticert terms).
    if subject and " ".join(subject.split()).startswith(_VIRUS_SUBJECTS):
        return "virus"
    return None


def _proxy_id(msg: Message, leaves: Iterable[Message], enclosed: Iterable[Message]) -> str | None:
    """The proxy's id of the original: from postacert.eml, quoted headers, then the message's own."""
    sources: list[Message] = list(enclosed)
    for part in leaves:
        if part.get_content_type() in ("text/rfc822-headers", "message/rfc822-headers"):
            data = part.get_payload(decode=True)
            if isinstance(data, bytes):
                sources.append(email.message_from_bytes(data))
    sources.append(msg)
    for source in sources:
        for name in _PROXY_ID_HEADERS:
            value = _header(source, name)
            if value and value.strip():
                return value.strip()
    return None


def _subject_type(subject: str | None) -> str | None:
    """The receipt type named by a standard PEC subject, or None."""
    if not subject:
        return None
    normalized = " ".join(subject.split())
    for prefix, receipt_type in _SUBJECT_PREFIXES:
        if normalized.startswith(prefix):
            return receipt_type
    return None


def _header(msg: Message, name: str) -> str | None:
    """The first header of that name, RFC 2047-decoded, raw 8-bit bytes read as UTF-8."""
    wanted = name.lower()
    for key, value in msg.raw_items():
        if key.lower() != wanted:
            continue
        text = str(value)
        # compat32 keeps undeclared 8-bit bytes as surrogates; UTF-8 is what Italian providers send.
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        # A broken encoded-word keeps the text as it came.
        with contextlib.suppress(ValueError, LookupError, email.errors.HeaderParseError):
            text = str(make_header(decode_header(text)))
        return " ".join(text.split())
    return None


def _token(value: str | None) -> str | None:
    """A header or attribute value as a lower-case token, None when empty."""
    if value is None:
        return None
    token = value.strip().lower()
    return token or None


def _angle(value: str | None) -> str | None:
    """A Message-ID in angle brackets, whitespace removed; None when empty."""
    if not value:
        return None
    # Message-IDs hold no whitespace; folded headers and indented XML text can add some.
    compact = "".join(value.split())
    if not compact or compact in ("<>", "<", ">"):
        return None
    if not compact.startswith("<"):
        compact = "<" + compact
    if not compact.endswith(">"):
        compact += ">"
    return compact


def _addresses(values: Iterable[str | None]) -> tuple[str, ...]:
    """Lower-case addresses in document order, without duplicates or empties."""
    seen: dict[str, None] = {}
    for value in values:
        if not value:
            continue
        address = parseaddr(value)[1] if "<" in value else value
        address = address.strip().lower()
        if address:
            seen.setdefault(address, None)
    return tuple(seen)


def _local(tag: object) -> str:
    """An element's tag without a namespace ("{ns}dati" → "dati")."""
    if not isinstance(tag, str):
        return ""
    return tag.rsplit("}", 1)[-1]


def _all(element: ET.Element, name: str) -> list[ET.Element]:
    """Descendants with that local name, in document order."""
    return [el for el in element.iter() if el is not element and _local(el.tag) == name]


def _first(element: ET.Element, name: str) -> ET.Element | None:
    """The first descendant with that local name."""
    for el in element.iter():
        if el is not element and _local(el.tag) == name:
            return el
    return None


def _text(element: ET.Element | None) -> str | None:
    """The stripped text of an element, None when absent or empty."""
    if element is None:
        return None
    text = "".join(element.itertext()).strip()
    return text or None
