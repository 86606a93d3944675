"""Bounce parsing (SPEC §12.2): classification, hand-written reports and the shared bounce corpus.

Corpus score rules (see /work/shared/testdata/SOURCES.md for the expected.json conventions):

- Scored entries: every `is_bounce: false` entry, and every other entry that gives recipients, a
  status or a kind. Entries that give none of these (MIME-robustness fixtures) are only parsed.
- A non-bounce scores when we say `is_bounce` False. rjbs calls delay warnings non-bounces; we report
  them with kind "delayed" (not a bounce either, SPEC §12.2), which also scores.
- A bounce scores when we say `is_bounce` True and
  - the set of recipients equals the expected one (lower-cased), where the entry gives recipients;
  - every recipient's status equals the expected one (per recipient where the entry has
    `per_recipient`), where that is non-null: null means "the source gives no answer";
  - every recipient's kind is one that agrees with the source's own kind, per `KIND_RULES`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bounces.dsn import BouncedRecipient, DsnReport, classify, parse_dsn

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bounces"
SHARED_BOUNCES = Path(__file__).resolve().parents[2].parent / "shared" / "testdata" / "bounces"
needs_shared = pytest.mark.skipif(not SHARED_BOUNCES.is_dir(), reason=f"{SHARED_BOUNCES} is not here (CI has it)")

# Permissively licensed sources are copied into tests/fixtures (ATTRIBUTION.md); the others are read from
# ../shared: rjbs-bounceparser is GPL/Artistic, and sisimai mixes in GPL samples SOURCES.md does not single out.
LOCAL_SOURCES = (
    "bounce_email",
    "crisp-email-bounce-parser",
    "flanker",
    "flufl",
    "java-pec-parser",
    "php-bounce-handler",
)
SHARED_SOURCES = ("rjbs-bounceparser", "sisimai")

FAILED = frozenset({"hard", "soft"})
TEMPORARY = frozenset({"soft", "delayed"})
# How each source's own "kind" maps onto SPEC §12.2: the set of our kinds that agree with it. sisimai's soft
# covers 5.x.x policy rejects and flufl only knows permanent vs temporary, so for them only "delayed" is
# checked; the others call every 4.x.x (or "temporary") failure soft and do not tell delays apart.
KIND_RULES: dict[str, dict[str, frozenset[str]]] = {
    "sisimai": {"delayed": frozenset({"delayed"}), "hard": FAILED, "soft": FAILED},
    "flufl": {"delayed": frozenset({"delayed"}), "hard": FAILED},
    "crisp-email-bounce-parser": {"hard": frozenset({"hard"}), "soft": TEMPORARY},
    "bounce_email": {"hard": frozenset({"hard"}), "soft": TEMPORARY},
    "php-bounce-handler": {"hard": frozenset({"hard"}), "soft": TEMPORARY},
    "java-pec-parser": {"hard": frozenset({"hard"})},
}
# crisp files a full mailbox under "permanent"; SPEC §12.2 makes it (and 5.2.2 anywhere) soft.
MAILBOX_FULL = frozenset({"mailbox_full", "mailbox_over_quota"})


def make_dsn(
    recipients: list[tuple[str, str, str, str]],
    *,
    original: str = "message/rfc822",
    original_headers: str = "From: app@proxy.example\nTo: someone@example.org\nMessage-ID: <orig-1@proxy.example>\n",
    to: str = "bounces@proxy.example",
) -> bytes:
    """A multipart/report DSN with one (recipient, action, status, diagnostic) group per recipient."""
    groups = "\n".join(
        f"Final-Recipient: rfc822; {r}\nAction: {a}\nStatus: {s}\nDiagnostic-Code: smtp; {d}\n"
        for r, a, s, d in recipients
    )
    return (
        "From: MAILER-DAEMON@mx.example.org (Mail Delivery System)\n"
        f"To: {to}\n"
        "Subject: Undelivered Mail Returned to Sender\n"
        "Message-ID: <bounce-9@mx.example.org>\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\n\n'
        "--B\nContent-Type: text/plain\n\nYour message could not be delivered.\n\n"
        "--B\nContent-Type: message/delivery-status\n\n"
        f"Reporting-MTA: dns; mx.example.org\n\n{groups}\n"
        f"--B\nContent-Type: {original}\n\n{original_headers}\nHello\n\n--B--\n"
    ).encode()


# -- classify -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "smtp_code", "action", "diagnostic", "expected"),
    [
        ("5.1.1", 550, "failed", "", "hard"),
        ("5.7.1", None, "failed", "", "hard"),
        ("5.2.2", 552, "failed", "mailbox full", "soft"),
        ("4.4.7", None, "failed", "", "soft"),
        ("4.2.2", 452, "delayed", "", "delayed"),
        ("5.1.1", 550, "delayed", "", "delayed"),
        ("2.0.0", 250, "delivered", "", None),
        (None, None, "relayed", "", None),
        (None, None, "expanded", "", None),
        (None, 550, "failed", "no such user", "hard"),
        (None, 551, None, "", "hard"),
        (None, 553, None, "", "hard"),
        (None, 554, None, "", "hard"),
        (None, 552, None, "", "soft"),
        (None, 550, "failed", "Mailbox is\n    full", "soft"),
        (None, None, "failed", "user is over quota", "soft"),
        (None, None, "failed", "Insufficient storage space", "soft"),
        (None, None, None, "quota exceeded", "soft"),
        (None, 421, "failed", "", "soft"),
        (None, None, "failed", "", "hard"),
        (None, None, None, "", None),
    ],
)
def test_classify_follows_spec(
    status: str | None, smtp_code: int | None, action: str | None, diagnostic: str, expected: str | None
) -> None:
    assert classify(status=status, smtp_code=smtp_code, action=action, diagnostic=diagnostic) == expected


def test_enhanced_status_wins_over_quota_wording() -> None:
    assert classify(status="5.1.1", smtp_code=550, action="failed", diagnostic="over quota") == "hard"


# -- hand-written reports ---------------------------------------------------------------------------------


def test_rfc3464_dsn_with_attached_original() -> None:
    diagnostic = "550 5.1.1 <user@example.org>: no such user"
    report = parse_dsn(make_dsn([("User@Example.org", "failed", "5.1.1", diagnostic)]))
    assert report.is_bounce
    assert report.original_message_id == "<orig-1@proxy.example>"
    assert report.recipients == (
        BouncedRecipient(
            recipient="user@example.org", status="5.1.1", action="failed", smtp_code=550, diagnostic=diagnostic,
            kind="hard",
        ),
    )


def test_text_rfc822_headers_give_original_ids() -> None:
    headers = "From: app@proxy.example\nMessage-ID: <m-42@proxy.example>\nX-Mail-Proxy-ID: 1234\n"
    raw = make_dsn(
        [("a@example.org", "failed", "5.2.2", "552 mailbox full")], original="text/rfc822-headers",
        original_headers=headers,
    )
    report = parse_dsn(raw)
    assert (report.original_message_id, report.proxy_id) == ("<m-42@proxy.example>", "1234")
    assert report.recipients[0].kind == "soft"


def test_genro_mail_id_is_read_when_proxy_id_is_absent() -> None:
    headers = "From: app@proxy.example\nMessage-ID: <m-43@proxy.example>\nX-Genro-Mail-ID: 77\n"
    report = parse_dsn(make_dsn([("a@example.org", "failed", "5.1.1", "550 unknown")], original_headers=headers))
    assert report.proxy_id == "77"


def test_multiple_recipients_keep_their_own_status() -> None:
    report = parse_dsn(
        make_dsn(
            [
                ("gone@example.org", "failed", "5.1.1", "550 5.1.1 user unknown"),
                ("full@example.org", "failed", "5.2.2", "552 5.2.2 mailbox full"),
                ("slow@example.org", "delayed", "4.4.1", "421 4.4.1 connection timed out"),
                ("fine@example.org", "delivered", "2.0.0", "250 2.0.0 ok"),
            ]
        )
    )
    assert report.is_bounce
    assert {r.recipient: (r.status, r.action, r.smtp_code, r.kind) for r in report.recipients} == {
        "gone@example.org": ("5.1.1", "failed", 550, "hard"),
        "full@example.org": ("5.2.2", "failed", 552, "soft"),
        "slow@example.org": ("4.4.1", "delayed", 421, "delayed"),
        "fine@example.org": ("2.0.0", "delivered", 250, None),
    }


def test_remote_code_in_diagnostic_beats_a_generic_status() -> None:
    # Amazon SES and others summarise every failure as 5.0.0 / 5.1.0 and quote the remote reply.
    diagnostic = "5.1.0 - Unknown address error 550-'5.2.2 <a@example.org>... Mailbox Full'"
    (recipient,) = parse_dsn(make_dsn([("a@example.org", "failed", "5.0.0", diagnostic)])).recipients
    assert (recipient.status, recipient.smtp_code, recipient.kind) == ("5.2.2", 550, "soft")


def test_success_notice_is_not_a_bounce() -> None:
    assert not parse_dsn(make_dsn([("fine@example.org", "delivered", "2.0.0", "250 ok")])).is_bounce


def test_verp_token_comes_from_the_bounce_address() -> None:
    raw = make_dsn([("a@example.org", "failed", "5.1.1", "550 no")], to="bounces+m17-x9@proxy.example")
    assert parse_dsn(raw).verp_token == "m17-x9"
    assert parse_dsn(make_dsn([("a@example.org", "failed", "5.1.1", "550 no")])).verp_token is None


def test_qmail_text_bounce_with_quoted_original() -> None:
    raw = (
        b"From: MAILER-DAEMON@mx.example.org\nTo: app@proxy.example\nSubject: failure notice\n"
        b"Message-ID: <own@mx.example.org>\n\n"
        b"Hi. This is the qmail-send program at mx.example.org.\n"
        b"I'm afraid I wasn't able to deliver your message to the following addresses.\n"
        b"This is a permanent error; I've given up. Sorry it didn't work out.\n\n"
        b"<nobody@example.org>:\nSorry, no mailbox here by that name. (#5.1.1)\n\n"
        b"--- Below this line is a copy of the message.\n\n"
        b"From: app@proxy.example\nTo: nobody@example.org\nMessage-ID: <orig-7@proxy.example>\n"
        b"X-Mail-Proxy-ID: 99\n\nHello\n"
    )
    report = parse_dsn(raw)
    assert report.is_bounce
    assert [(r.recipient, r.status, r.kind) for r in report.recipients] == [("nobody@example.org", "5.1.1", "hard")]
    assert (report.original_message_id, report.proxy_id) == ("<orig-7@proxy.example>", "99")


def test_gmail_delay_notice_is_delayed() -> None:
    raw = (
        b"From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>\nTo: app@proxy.example\n"
        b"Subject: Delivery Status Notification (Delay)\n\n"
        b"This is an automatically generated Delivery Status Notification\n\n"
        b"THIS IS A WARNING MESSAGE ONLY.\n\nDelivery to the following recipient has been delayed:\n\n"
        b"     slow@example.org\n\nMessage will be retried for 2 more day(s)\n"
    )
    report = parse_dsn(raw)
    assert report.is_bounce
    assert [(r.recipient, r.action, r.kind) for r in report.recipients] == [("slow@example.org", "delayed", "delayed")]


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00\xff\xfe garbage",
        b"Content-Type: multipart/report; boundary=\n\n--\n",
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\n\n--x\n"
        b"Content-Type: message/delivery-status\nContent-Transfer-Encoding: base64\n\n!!!\n--x",
        b"From: =?utf-8?q?broken\nSubject: =?x-unknown?b?AAAA?=\nContent-Type: text/plain; charset=nope\n\n\xff",
        b"Final-Recipient: rfc822;\nStatus: 9.9.9\n",
        b"Content-Type: message/rfc822\n\n",
        b"From: MAILER-DAEMON\nContent-Type: multipart/mixed; boundary=a\n\n--a\nContent-Type: message/rfc822\n\n--a--",
    ],
)
def test_malformed_input_never_raises(raw: bytes) -> None:
    assert isinstance(parse_dsn(raw), DsnReport)


def test_auto_reply_is_not_a_bounce() -> None:
    raw = (
        b"From: Someone <someone@example.org>\nTo: app@proxy.example\nSubject: Out of office: your message\n"
        b"Auto-Submitted: auto-replied\n\nI am away until Monday; your message could not be delivered to me sooner.\n"
    )
    assert parse_dsn(raw) == DsnReport(False, (), None, None, None)


def test_normal_mail_is_not_a_bounce() -> None:
    raw = b"From: a@example.org\nTo: b@example.org\nSubject: lunch?\n\nThe pizza delivery failed, let's go out.\n"
    assert not parse_dsn(raw).is_bounce


def test_feedback_report_is_not_a_bounce() -> None:
    raw = (
        b"From: fbl@isp.example\nTo: app@proxy.example\nSubject: complaint\nMIME-Version: 1.0\n"
        b'Content-Type: multipart/report; report-type=feedback-report; boundary="F"\n\n'
        b"--F\nContent-Type: text/plain\n\nA complaint.\n--F\nContent-Type: message/feedback-report\n\n"
        b"Feedback-Type: abuse\n\n--F--\n"
    )
    assert not parse_dsn(raw).is_bounce


# -- copied fixtures (always here) ------------------------------------------------------------------------


def fixture_bytes(source: str, name: str) -> bytes:
    """A file copied into tests/fixtures/bounces."""
    return (FIXTURES / source / name).read_bytes()


def test_gmail_dsn_fixture_is_read_in_full() -> None:
    report = parse_dsn(fixture_bytes("java-pec-parser", "gmail-dsn-failure.eml"))
    assert report.is_bounce
    assert report.original_message_id == "<EA+wfBhrSAT7Jc6+8Y_pi_x6SgRzJO5CT6Mc-uKb57n6aff+u9g@mail.gmail.com>"
    (recipient,) = report.recipients
    assert (recipient.recipient, recipient.status, recipient.action, recipient.kind) == (
        "test@tozzi.app", "5.7.0", "failed", "hard",
    )
    assert recipient.diagnostic.startswith("550-Requested action not taken: mailbox unavailable")


@pytest.mark.parametrize(("name", "status"), [("zed.eml", "5.1.1"), ("office365.eml", "5.1.10")])
def test_flanker_fixtures_give_the_asserted_status(name: str, status: str) -> None:
    report = parse_dsn(fixture_bytes("flanker", name))
    assert report.is_bounce
    assert [r.status for r in report.recipients] == [status]


def test_every_fixture_parses_and_has_an_entry() -> None:
    for source in LOCAL_SOURCES:
        expected = json.loads((FIXTURES / source / "expected.json").read_text())
        files = {p.name for p in (FIXTURES / source).iterdir()} - {"expected.json"}
        assert files == set(expected), source
        for name in files:
            assert isinstance(parse_dsn(fixture_bytes(source, name)), DsnReport), name


# -- corpus score ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """Whether one corpus file matched its expected entry, and why not."""

    source: str
    name: str
    matched: bool
    why: str


def corpus() -> list[tuple[str, Path, dict[str, Any]]]:
    """Every (source, file, expected entry) of the copied and the shared corpus."""
    items = []
    for source in LOCAL_SOURCES + SHARED_SOURCES:
        folder = (FIXTURES if source in LOCAL_SOURCES else SHARED_BOUNCES) / source
        expected = json.loads((folder / "expected.json").read_text())
        items.extend((source, folder / name, entry) for name, entry in sorted(expected.items()))
    return items


def is_scored(entry: dict[str, Any]) -> bool:
    """Entries that assert something: a non-bounce, or recipients, a status or a kind."""
    return entry.get("is_bounce") is False or any(entry.get(k) is not None for k in ("recipients", "status", "kind"))


def judge(source: str, path: Path, entry: dict[str, Any]) -> Verdict:
    """Compare our reading of one file with its expected entry (rules in the module docstring)."""
    report = parse_dsn(path.read_bytes())
    got = {r.recipient: r for r in report.recipients}
    if entry.get("is_bounce") is False:
        only_delays = bool(got) and all(r.kind == "delayed" for r in got.values())
        ok = not report.is_bounce or (source == "rjbs-bounceparser" and only_delays)
        return Verdict(source, path.name, ok, "" if ok else f"called a bounce: {sorted(got)}")
    if not report.is_bounce:
        return Verdict(source, path.name, False, "not recognised as a bounce")
    problems = []
    if entry.get("recipients") is not None and {r.lower() for r in entry["recipients"]} != set(got):
        problems.append(f"recipients {sorted(got)} != {sorted(r.lower() for r in entry['recipients'])}")
    per_recipient = {p["recipient"].lower(): p for p in entry.get("per_recipient") or []}
    rules = KIND_RULES.get(source, {})
    for name, recipient in got.items() or [("", None)]:
        want = per_recipient.get(name, entry)
        if recipient and want.get("status") is not None and recipient.status != want["status"]:
            problems.append(f"{name}: status {recipient.status} != {want['status']}")
        accepted = rules.get(want.get("kind") or "")
        if accepted and (want.get("status") == "5.2.2" or entry.get("category") in MAILBOX_FULL):
            accepted = frozenset({"soft"})
        if accepted and (recipient is None or recipient.kind not in accepted):
            problems.append(f"{name or 'no recipient'}: kind {recipient and recipient.kind} not in {sorted(accepted)}")
    return Verdict(source, path.name, not problems, "; ".join(problems))


def table(verdicts: list[Verdict]) -> str:
    """The per-source score as a Markdown table."""
    rows = ["| source | files | matched | % |", "|---|---:|---:|---:|"]
    for source in (*LOCAL_SOURCES, *SHARED_SOURCES, "total"):
        mine = [v for v in verdicts if source in (v.source, "total")]
        hits = sum(v.matched for v in mine)
        rows.append(f"| {source} | {len(mine)} | {hits} | {100 * hits / len(mine):.1f} |")
    return "\n".join(rows)


@needs_shared
def test_corpus_score() -> None:
    verdicts = [judge(source, path, entry) for source, path, entry in corpus() if is_scored(entry)]
    print()
    print(table(verdicts))
    for v in verdicts:
        if not v.matched:
            print(f"  miss {v.source}/{v.name}: {v.why}")
    assert sum(v.matched for v in verdicts) / len(verdicts) >= 0.90


@needs_shared
def test_original_message_id_matches_the_corpus() -> None:
    # Correlation falls back to the original's Message-ID (SPEC §12.2); sisimai and java-pec-parser give it.
    checked = [
        (parse_dsn(path.read_bytes()).original_message_id, f"<{entry['original_message_id']}>")
        for _, path, entry in corpus()
        if entry.get("original_message_id")
    ]
    matched = sum(got == want for got, want in checked)
    print(f"\noriginal Message-ID: {matched}/{len(checked)}")
    assert matched / len(checked) >= 0.90
