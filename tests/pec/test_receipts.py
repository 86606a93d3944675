from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from pec.receipts import PecReceipt, parse_receipt

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "pec"
# The shared corpus lives next to the checkout; its AGPL files are read in place, never copied.
SHARED_TESTDATA = Path(__file__).resolve().parents[2].parent / "shared" / "testdata"
OCA = SHARED_TESTDATA / "pec" / "oca-l10n-italy"
COPIED_SOURCES = ("java-pec-parser", "java-pec-parser-fork", "go-pec")


def _load(folder: Path) -> list[tuple[Path, dict[str, Any]]]:
    expected = json.loads((folder / "expected.json").read_text(encoding="utf-8"))
    return [(folder / name, entry) for name, entry in sorted(expected.items())]


def _corpus() -> list[tuple[Path, dict[str, Any]]]:
    entries = [item for source in COPIED_SOURCES for item in _load(FIXTURES / source)]
    if SHARED_TESTDATA.exists():
        entries += _load(OCA)
    return entries


def _cases(field: str | None = None) -> list[Any]:
    """Corpus params (optionally only entries where `field` is non-null), plus a skip for absent shared data."""
    params: list[Any] = [
        pytest.param(path, entry, id=f"{path.parent.name}/{path.name}")
        for path, entry in _corpus()
        if field is None or entry.get(field) is not None
    ]
    if not SHARED_TESTDATA.exists():
        params.append(
            pytest.param(
                None, None, id="oca-l10n-italy", marks=pytest.mark.skip(reason=f"{SHARED_TESTDATA} does not exist")
            )
        )
    return params


def _parse_file(path: Path) -> PecReceipt:
    receipt = parse_receipt(path.read_bytes())
    assert receipt is not None, path.name
    return receipt


def test_copied_fixtures_match_the_shared_corpus() -> None:
    if not SHARED_TESTDATA.exists():
        pytest.skip(f"{SHARED_TESTDATA} does not exist")
    for source in COPIED_SOURCES:
        for path, _entry in _load(FIXTURES / source):
            assert path.read_bytes() == (SHARED_TESTDATA / "pec" / source / path.name).read_bytes()


@pytest.mark.parametrize(("path", "expected"), _cases())
def test_corpus_receipt_type_and_event(path: Path, expected: dict[str, Any]) -> None:
    receipt = _parse_file(path)
    assert receipt.receipt_type == expected["receipt_type"]
    assert receipt.proxy_event == expected["proxy_event"]


@pytest.mark.parametrize(("path", "expected"), _cases())
def test_corpus_transport_envelopes_are_not_receipts(path: Path, expected: dict[str, Any]) -> None:
    receipt = _parse_file(path)
    is_envelope = expected["proxy_event"] is None
    assert receipt.is_transport is is_envelope
    assert (expected["x_trasporto"] is not None) is is_envelope


@pytest.mark.parametrize(("path", "expected"), _cases("msgid"))
def test_corpus_msgid(path: Path, expected: dict[str, Any]) -> None:
    assert _parse_file(path).msgid == expected["msgid"]


@pytest.mark.parametrize(("path", "expected"), _cases("recipients"))
def test_corpus_recipients(path: Path, expected: dict[str, Any]) -> None:
    assert _parse_file(path).recipients == tuple(expected["recipients"])


@pytest.mark.parametrize(("path", "expected"), _cases("timestamp"))
def test_corpus_certified_timestamp(path: Path, expected: dict[str, Any]) -> None:
    # expected.json writes ISO 8601 with the daticert offset, e.g. "2024-11-15T18:20:38+01:00".
    wanted = datetime.fromisoformat(expected["timestamp"])
    got = _parse_file(path).timestamp
    assert got is not None
    assert got.tzinfo is not None
    assert got == wanted
    assert got.utcoffset() == wanted.utcoffset()


@pytest.mark.parametrize(("path", "expected"), _cases("identificativo"))
def test_corpus_identificativo(path: Path, expected: dict[str, Any]) -> None:
    assert _parse_file(path).identificativo == expected["identificativo"]


@pytest.mark.parametrize(("path", "expected"), _cases())
def test_corpus_error_only_for_pec_error(path: Path, expected: dict[str, Any]) -> None:
    receipt = _parse_file(path)
    if expected["proxy_event"] != "pec_error":
        assert receipt.error is None
        return
    assert receipt.error is not None
    if expected["errore"] not in (None, "nessuno"):
        assert expected["errore"] in receipt.error
    if expected["errore_esteso"]:
        assert expected["errore_esteso"] in receipt.error


def test_errore_consegna_reason_joins_errore_and_esteso() -> None:
    receipt = _parse_file(FIXTURES / "java-pec-parser" / "errore-consegna_no-dest.eml")
    assert receipt.error == "no-dest: 5.1.1 - FAKE Pec S.p.A. - indirizzo non valido"
    # <consegna> names the failed recipient; <destinatari> (rec@pec.it) is the whole list.
    assert receipt.recipients == ("rec@fakepec.it",)


# --- hand-written messages ---------------------------------------------------------------


def _daticert(
    tipo: str = "accettazione",
    *,
    errore: str = "nessuno",
    zona: str | None = "+0100",
    giorno: str = "15/11/2024",
    ora: str = "18:20:38",
    destinatari: tuple[tuple[str, str], ...] = (("Rec@PEC.example.it", "certificato"),),
    consegna: str | None = None,
    msgid: str = "<orig-1@mail.example.com>",
    errore_esteso: str | None = None,
    prolog: str = "",
) -> bytes:
    zona_attr = f' zona="{zona}"' if zona is not None else ""
    dest = "".join(f'<destinatari tipo="{kind}">{addr}</destinatari>' for addr, kind in destinatari)
    extra = f"<consegna>{consegna}</consegna>" if consegna else ""
    extra += f"<errore-esteso>{errore_esteso}</errore-esteso>" if errore_esteso else ""
    escaped = msgid.replace("<", "&lt;").replace(">", "&gt;")
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n{prolog}'
        f'<postacert tipo="{tipo}" errore="{errore}">'
        f"<intestazione><mittente>sender@pec.example.it</mittente>{dest}<oggetto>Test</oggetto></intestazione>"
        f"<dati><gestore-emittente>Example PEC</gestore-emittente>"
        f"<data{zona_attr}><giorno>{giorno}</giorno><ora>{ora}</ora></data>"
        f"<identificativo>opec.1.2.3@pec.example.it</identificativo><msgid>{escaped}</msgid>"
        f'<ricevuta tipo="completa"/>{extra}</dati></postacert>'
    ).encode()


def _message(
    subject: str | None = "ACCETTAZIONE: Test",
    *,
    headers: dict[str, str] | None = None,
    daticert: bytes | None = None,
    postacert: EmailMessage | None = None,
) -> bytes:
    msg = EmailMessage()
    msg["From"] = "posta-certificata@pec.example.it"
    msg["To"] = "sender@pec.example.it"
    msg["Date"] = "Fri, 15 Nov 2024 18:20:40 +0100"
    msg["Message-ID"] = "<opec.receipt@pec.example.it>"
    if subject is not None:
        msg["Subject"] = subject
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content("Ricevuta")
    if daticert is not None:
        msg.add_attachment(daticert, maintype="application", subtype="xml", filename="daticert.xml")
    if postacert is not None:
        msg.add_attachment(postacert, filename="postacert.eml")
    return msg.as_bytes()


def _original(**headers: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "sender@pec.example.it"
    msg["To"] = "rec@pec.example.it"
    msg["Subject"] = "Test"
    msg["Message-ID"] = "<orig-1@mail.example.com>"
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content("Hello")
    return msg


@pytest.mark.parametrize(
    ("subject", "receipt_type", "proxy_event"),
    [
        ("ACCETTAZIONE: Test", "accettazione", "pec_acceptance"),
        ("NON ACCETTAZIONE: Test", "non-accettazione", "pec_error"),
        ("AVVISO DI NON ACCETTAZIONE: Test", "non-accettazione", "pec_error"),
        ("AVVISO DI NON ACCETTAZIONE PER VIRUS: Test", "non-accettazione", "pec_error"),
        ("PRESA IN CARICO: Test", "presa-in-carico", "pec_relay"),
        ("CONSEGNA: Test", "avvenuta-consegna", "pec_delivery"),
        ("AVVISO DI MANCATA CONSEGNA: Test", "errore-consegna", "pec_error"),
        ("AVVISO DI MANCATA CONSEGNA PER VIRUS: Test", "errore-consegna", "pec_error"),
        ("AVVISO DI MANCATA CONSEGNA PER SUP. TEMPO MASSIMO: Test", "preavviso-errore-consegna", "pec_error"),
        ("PROBLEMA DI SICUREZZA: Test", "rilevazione-virus", "pec_error"),
        ("POSTA CERTIFICATA: Test", "posta-certificata", None),
        ("ANOMALIA MESSAGGIO: Test", "errore", None),
    ],
)
def test_subject_only_receipt_is_recognised(subject: str, receipt_type: str, proxy_event: str | None) -> None:
    receipt = parse_receipt(_message(subject, headers={"X-Riferimento-Message-ID": "<orig-1@mail.example.com>"}))
    assert receipt is not None
    assert receipt.receipt_type == receipt_type
    assert receipt.proxy_event == proxy_event
    assert receipt.is_transport is (proxy_event is None)
    assert receipt.msgid == "<orig-1@mail.example.com>"
    # No daticert: nothing certifies the recipients, so none are claimed.
    assert receipt.recipients == ()
    assert receipt.timestamp == datetime(2024, 11, 15, 18, 20, 40, tzinfo=timezone(timedelta(hours=1)))


@pytest.mark.parametrize(
    "subject",
    [
        "NON ACCETTAZIONE: Test",
        "NON ACCETTAZIONE: ACCETTAZIONE: Test",
        "AVVISO DI NON ACCETTAZIONE: ACCETTAZIONE: Test",
        "=?UTF-8?Q?NON_ACCETTAZIONE=3A_Test?=",
        "NON  ACCETTAZIONE:\r\n Test",
    ],
)
def test_non_accettazione_subject_is_never_an_acceptance(subject: str) -> None:
    raw = b"From: posta-certificata@pec.example.it\r\nSubject: " + subject.encode() + b"\r\n\r\nbody\r\n"
    receipt = parse_receipt(raw)
    assert receipt is not None
    assert receipt.receipt_type == "non-accettazione"
    assert receipt.proxy_event == "pec_error"


def test_per_virus_subject_gives_virus_reason() -> None:
    receipt = parse_receipt(_message("AVVISO DI NON ACCETTAZIONE PER VIRUS: Test"))
    assert receipt is not None
    assert receipt.error == "virus"


def test_lower_case_subject_is_not_a_receipt() -> None:
    assert parse_receipt(_message("Consegna: il pacco arriva domani")) is None


def test_ordinary_message_is_not_pec() -> None:
    assert parse_receipt(_message("Hello")) is None


def test_x_ricevuta_wins_over_daticert_and_subject() -> None:
    raw = _message(
        "ACCETTAZIONE: Test",
        headers={"X-Ricevuta": "non-accettazione"},
        daticert=_daticert("accettazione"),
    )
    receipt = parse_receipt(raw)
    assert receipt is not None
    assert receipt.receipt_type == "non-accettazione"
    assert receipt.proxy_event == "pec_error"


def test_daticert_tipo_wins_over_subject() -> None:
    receipt = parse_receipt(_message("ACCETTAZIONE: Test", daticert=_daticert("presa-in-carico")))
    assert receipt is not None
    assert receipt.receipt_type == "presa-in-carico"
    assert receipt.proxy_event == "pec_relay"
    assert receipt.identificativo == "opec.1.2.3@pec.example.it"


def test_unknown_x_ricevuta_falls_back_to_daticert() -> None:
    raw = _message(None, headers={"X-Ricevuta": "ricevuta-strana"}, daticert=_daticert("avvenuta-consegna"))
    receipt = parse_receipt(raw)
    assert receipt is not None
    assert receipt.receipt_type == "avvenuta-consegna"


def test_x_ricevuta_with_x_trasporto_is_a_receipt() -> None:
    raw = _message(None, headers={"X-Ricevuta": "accettazione", "X-Trasporto": "posta-certificata"})
    receipt = parse_receipt(raw)
    assert receipt is not None
    assert receipt.is_transport is False
    assert receipt.proxy_event == "pec_acceptance"


def test_anomaly_envelope_is_transport() -> None:
    receipt = parse_receipt(_message("ANOMALIA MESSAGGIO: Test", headers={"X-Trasporto": "errore"}))
    assert receipt is not None
    assert receipt.receipt_type == "errore"
    assert receipt.is_transport is True
    assert receipt.proxy_event is None


def test_daticert_fields() -> None:
    daticert = _daticert(
        "accettazione",
        destinatari=(("Rec@PEC.example.it", "certificato"), ("Other@Example.COM", "esterno")),
        msgid="orig-2@mail.example.com",
    )
    receipt = parse_receipt(_message(None, daticert=daticert))
    assert receipt is not None
    assert receipt.receipt_type == "accettazione"
    assert receipt.recipients == ("rec@pec.example.it", "other@example.com")
    # A bare daticert msgid gets its angle brackets, like the Message-ID it names.
    assert receipt.msgid == "<orig-2@mail.example.com>"
    assert receipt.error is None


def test_daticert_msgid_wins_over_x_riferimento() -> None:
    raw = _message(
        None, headers={"X-Riferimento-Message-ID": "<other@mail.example.com>"}, daticert=_daticert("accettazione")
    )
    receipt = parse_receipt(raw)
    assert receipt is not None
    assert receipt.msgid == "<orig-1@mail.example.com>"


def test_delivery_receipt_names_the_consegna_recipient() -> None:
    daticert = _daticert(
        "avvenuta-consegna",
        destinatari=(("a@pec.example.it", "certificato"), ("b@pec.example.it", "certificato")),
        consegna="B@pec.example.it",
    )
    receipt = parse_receipt(_message(None, daticert=daticert))
    assert receipt is not None
    assert receipt.proxy_event == "pec_delivery"
    assert receipt.recipients == ("b@pec.example.it",)


def test_error_reason_and_nessuno() -> None:
    daticert = _daticert("errore-consegna", errore="no-dest", errore_esteso="5.1.1 - user unknown", consegna="x@y.it")
    receipt = parse_receipt(_message(None, daticert=daticert))
    assert receipt is not None
    assert receipt.error == "no-dest: 5.1.1 - user unknown"

    only_esteso = _daticert("errore-consegna", errore="nessuno", errore_esteso="timeout")
    receipt = parse_receipt(_message(None, daticert=only_esteso))
    assert receipt is not None
    assert receipt.error == "timeout"


@pytest.mark.parametrize(
    ("zona", "ora", "expected"),
    [
        ("+0100", "18:20:38", datetime(2024, 11, 15, 18, 20, 38, tzinfo=timezone(timedelta(hours=1)))),
        ("+0200", "18:20:38", datetime(2024, 11, 15, 18, 20, 38, tzinfo=timezone(timedelta(hours=2)))),
        ("+01:00", "18:20", datetime(2024, 11, 15, 18, 20, 0, tzinfo=timezone(timedelta(hours=1)))),
        ("-0330", "18:20:38", datetime(2024, 11, 15, 18, 20, 38, tzinfo=timezone(-timedelta(hours=3, minutes=30)))),
    ],
)
def test_certified_timestamp_keeps_the_zone(zona: str, ora: str, expected: datetime) -> None:
    receipt = parse_receipt(_message(None, daticert=_daticert(zona=zona, ora=ora)))
    assert receipt is not None
    assert receipt.timestamp == expected
    assert receipt.timestamp is not None
    assert receipt.timestamp.utcoffset() == expected.utcoffset()


def test_plus_0100_and_plus_0200_are_an_hour_apart() -> None:
    winter = parse_receipt(_message(None, daticert=_daticert(zona="+0100")))
    summer = parse_receipt(_message(None, daticert=_daticert(zona="+0200")))
    assert winter is not None
    assert summer is not None
    assert winter.timestamp is not None
    assert summer.timestamp is not None
    assert winter.timestamp - summer.timestamp == timedelta(hours=1)
    assert winter.timestamp.astimezone(UTC) == datetime(2024, 11, 15, 17, 20, 38, tzinfo=UTC)


def test_missing_zona_is_italian_time() -> None:
    receipt = parse_receipt(_message(None, daticert=_daticert(zona=None, giorno="13/05/2021", ora="14:35:30")))
    assert receipt is not None
    assert receipt.timestamp is not None
    assert receipt.timestamp.utcoffset() == timedelta(hours=2)


@pytest.mark.parametrize(("zona", "giorno"), [("+9999", "15/11/2024"), ("CET", "15/11/2024"), ("+0100", "31/02/2024")])
def test_bad_certified_time_falls_back_to_date_header(zona: str, giorno: str) -> None:
    receipt = parse_receipt(_message(None, daticert=_daticert(zona=zona, giorno=giorno)))
    assert receipt is not None
    assert receipt.timestamp == datetime(2024, 11, 15, 18, 20, 40, tzinfo=timezone(timedelta(hours=1)))


DOCTYPE_PROLOGS = [
    '<!DOCTYPE postacert SYSTEM "file:///etc/passwd">\n',
    '<!DOCTYPE postacert [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>\n',
    '<!doctype postacert [<!entity x SYSTEM "http://127.0.0.1:1/x">]>\n',
]


@pytest.mark.parametrize("prolog", DOCTYPE_PROLOGS)
def test_daticert_with_doctype_is_ignored(prolog: str) -> None:
    daticert = _daticert("errore-consegna", errore="no-dest", prolog=prolog)
    receipt = parse_receipt(_message("CONSEGNA: Test", daticert=daticert))
    assert receipt is not None
    # The subject decides because the daticert was refused: none of its data reaches the receipt.
    assert receipt.receipt_type == "avvenuta-consegna"
    assert receipt.identificativo is None
    assert receipt.msgid is None
    assert receipt.recipients == ()


def test_message_whose_only_pec_sign_is_a_doctype_daticert_is_not_pec() -> None:
    daticert = _daticert("accettazione", prolog=DOCTYPE_PROLOGS[1])
    assert parse_receipt(_message(None, daticert=daticert)) is None


def test_same_daticert_without_doctype_is_read() -> None:
    receipt = parse_receipt(_message("CONSEGNA: Test", daticert=_daticert("errore-consegna", errore="no-dest")))
    assert receipt is not None
    assert receipt.receipt_type == "errore-consegna"
    assert receipt.identificativo == "opec.1.2.3@pec.example.it"


def test_proxy_id_from_postacert() -> None:
    original = _original(X_Mail_Proxy_ID="4711", X_Genro_Mail_ID="4711")
    raw = _message(
        "CONSEGNA: Test",
        headers={"X-Ricevuta": "avvenuta-consegna"},
        daticert=_daticert("avvenuta-consegna", consegna="rec@pec.example.it"),
        postacert=original,
    )
    receipt = parse_receipt(raw)
    assert receipt is not None
    assert receipt.proxy_id == "4711"


def test_proxy_id_from_genro_header_of_postacert() -> None:
    raw = _message("CONSEGNA: Test", postacert=_original(X_Genro_Mail_ID="99"))
    receipt = parse_receipt(raw)
    assert receipt is not None
    assert receipt.proxy_id == "99"


def test_proxy_id_from_receipt_headers() -> None:
    raw = _message("ACCETTAZIONE: Test", headers={"X-Mail-Proxy-ID": "12"})
    receipt = parse_receipt(raw)
    assert receipt is not None
    assert receipt.proxy_id == "12"


def test_proxy_id_absent() -> None:
    receipt = parse_receipt(_message("ACCETTAZIONE: Test"))
    assert receipt is not None
    assert receipt.proxy_id is None


def test_daticert_inside_postacert_is_not_the_receipts() -> None:
    # The enclosed message belongs to another exchange; its daticert must not speak for this one.
    inner = _original()
    inner.add_attachment(
        _daticert("accettazione", msgid="<inner@mail.example.com>"),
        maintype="application",
        subtype="xml",
        filename="daticert.xml",
    )
    receipt = parse_receipt(_message("POSTA CERTIFICATA: Test", postacert=inner))
    assert receipt is not None
    assert receipt.receipt_type == "posta-certificata"
    assert receipt.msgid is None
    assert receipt.identificativo is None


def test_opaque_pkcs7_receipt_falls_back_to_headers() -> None:
    raw = (
        b"From: posta-certificata@pec.example.it\r\n"
        b"Subject: ACCETTAZIONE: Test\r\n"
        b"X-Ricevuta: accettazione\r\n"
        b"X-Riferimento-Message-ID: <orig-1@mail.example.com>\r\n"
        b"Date: Fri, 15 Nov 2024 18:20:40 +0100\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: application/pkcs7-mime; smime-type=signed-data; name="smime.p7m"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n"
        b"MIAGCSqGSIb3DQEHAqCAMIACAQExCzAJBgUrDgMCGgUAMIAGCSqGSIb3DQEHAaCAJIAEggJ=\r\n"
    )
    receipt = parse_receipt(raw)
    assert receipt is not None
    assert receipt.receipt_type == "accettazione"
    assert receipt.proxy_event == "pec_acceptance"
    assert receipt.msgid == "<orig-1@mail.example.com>"
    assert receipt.recipients == ()
    assert receipt.identificativo is None


def _nested(depth: int) -> bytes:
    head = b"Subject: CONSEGNA: deep\r\nMIME-Version: 1.0\r\n"
    body = b""
    for level in range(depth):
        body += b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (level, level)
    return head + body + b"Content-Type: text/plain\r\n\r\nx\r\n"


MALFORMED = [
    pytest.param(b"", id="empty"),
    pytest.param(b"\x00\xff\xfe" * 200, id="binary"),
    pytest.param(b"X-Ricevuta:\r\n\r\n", id="empty-x-ricevuta"),
    pytest.param(b"Subject: =?x-unknown?q?ACCETTAZIONE=3A?=\r\n\r\n", id="unknown-charset"),
    pytest.param(b"Subject: =?utf-8?b?!!!?=\r\nDate: not a date\r\n\r\n", id="broken-encoded-word"),
    pytest.param(b"Subject: CONSEGNA: \xe8\xff\r\nDate: Fri, 99 Foo 2024 99:99:99 +9999\r\n\r\n", id="8bit-bad-date"),
    pytest.param(
        b'Subject: CONSEGNA: x\r\nContent-Type: multipart/mixed; boundary="z"\r\n\r\n--z\r\n'
        b'Content-Type: application/xml; name="daticert.xml"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
        b"!!!not base64!!!\r\n--z",
        id="bad-base64-daticert",
    ),
    pytest.param(
        _message("CONSEGNA: x", daticert=b"<postacert tipo='accettazione'><dati><msgid>&lt;x"),
        id="truncated-xml",
    ),
    pytest.param(
        _message("CONSEGNA: x", daticert=b"<postacert tipo='x'>&undefined;</postacert>"), id="undefined-entity"
    ),
    pytest.param(_message("CONSEGNA: x", daticert="<postacert/>".encode("utf-16")), id="utf16-daticert"),
    pytest.param(
        b'Subject: POSTA CERTIFICATA: x\r\nContent-Type: multipart/mixed; boundary="z"\r\n\r\n--z\r\n'
        b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n@@@@\r\n--z--\r\n",
        id="encoded-rfc822",
    ),
    pytest.param(_nested(2000), id="deep-nesting"),
    pytest.param(
        b'Content-Type: multipart/mixed; boundary="z"\r\n\r\n--z\r\nContent-Disposition: attachment; '
        b"filename*0*=x-bad''%FF%FE; filename*1=daticert.xml\r\n\r\n<postacert/>\r\n--z--\r\n",
        id="rfc2231-filename",
    ),
]


@pytest.mark.parametrize("raw", MALFORMED)
def test_malformed_input_never_raises(raw: bytes) -> None:
    result = parse_receipt(raw)
    assert result is None or isinstance(result, PecReceipt)


def test_truncated_and_mutated_corpus_never_raises() -> None:
    rng = random.Random(20241115)
    files = [path for source in COPIED_SOURCES for path, _entry in _load(FIXTURES / source)]
    for path in files:
        data = path.read_bytes()
        variants = [data[: len(data) // 2], data[: len(data) // 5], data.replace(b"\n", b"\r")]
        for _ in range(40):
            mutated = bytearray(data)
            for _ in range(rng.randint(1, 30)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            variants.append(bytes(mutated))
        for variant in variants:
            result = parse_receipt(variant)
            assert result is None or isinstance(result, PecReceipt)
