"""bounces.imap against a real Dovecot on loopback (tests/imap_server.py); no database."""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from bounces.imap import Cursor, Fetched, Mailbox, MailboxError, MailboxSettings
from tests.imap_server import ImapServer

PASSWORD = "s3cret-Pa55word"
_names = itertools.count(1)


@pytest.fixture(scope="module")
def server() -> Iterator[ImapServer]:
    with ImapServer() as imap_server:
        yield imap_server


@pytest.fixture(scope="module")
def tls_server() -> Iterator[ImapServer]:
    with ImapServer(tls=True) as imap_server:
        yield imap_server


@pytest.fixture
def user(server: ImapServer) -> str:
    """A fresh mailbox user on the shared server, so tests never see each other's mail."""
    name = f"bounces{next(_names)}"
    server.add_user(name, PASSWORD)
    return name


@pytest.fixture
def settings_for(server: ImapServer, user: str) -> Callable[..., MailboxSettings]:
    def make(**overrides: object) -> MailboxSettings:
        values: dict[str, object] = {"host": server.host, "port": server.port, "user": user,
                                     "password": PASSWORD, "security": "none", "timeout": 5.0}
        values.update(overrides)
        return MailboxSettings(**values)  # type: ignore[arg-type]

    return make


def message(n: int) -> bytes:
    return (f"From: MAILER-DAEMON@example.net\r\nTo: bounces@example.com\r\nSubject: bounce {n}\r\n"
            f"Message-ID: <bounce-{n}@example.net>\r\n\r\nUndeliverable {n}.\r\n").encode()


def fill(server: ImapServer, user: str, count: int, folder: str = "INBOX") -> list[int]:
    return [server.append(user, folder, message(n)) for n in range(1, count + 1)]


def read(settings: MailboxSettings, cursor: Cursor, *, limit: int = 100) -> tuple[list[Fetched], int]:
    with Mailbox(settings) as mailbox:
        return mailbox.new_messages(cursor, limit=limit)


def advance(cursor: Cursor, fetched: list[Fetched], uidvalidity: int) -> Cursor:
    """What the pollers store: a rescan restarts at 0 under the new UIDVALIDITY."""
    last = cursor.last_uid if cursor.uidvalidity == uidvalidity else 0
    return Cursor(uidvalidity=uidvalidity, last_uid=max([last, *(item.uid for item in fetched)]))


# -- reading ---------------------------------------------------------------------------------------


def test_new_messages_after_the_cursor_come_in_uid_order(server: ImapServer, user: str,
                                                         settings_for: Callable[..., MailboxSettings]) -> None:
    uids = fill(server, user, 4)
    uidvalidity = server.uidvalidity(user, "INBOX")

    fetched, returned_uidvalidity = read(settings_for(), Cursor(uidvalidity=uidvalidity, last_uid=uids[1]))

    assert returned_uidvalidity == uidvalidity
    assert [item.uid for item in fetched] == uids[2:]
    assert [item.raw for item in fetched] == [message(3), message(4)]


def test_a_cursor_without_uidvalidity_reads_the_whole_folder(server: ImapServer, user: str,
                                                             settings_for: Callable[..., MailboxSettings]) -> None:
    uids = fill(server, user, 3)

    fetched, uidvalidity = read(settings_for(), Cursor(uidvalidity=None, last_uid=0))

    assert [item.uid for item in fetched] == uids
    assert uidvalidity == server.uidvalidity(user, "INBOX")


def test_reading_leaves_messages_unseen(server: ImapServer, user: str,
                                        settings_for: Callable[..., MailboxSettings]) -> None:
    uids = fill(server, user, 2)

    fetched, _ = read(settings_for(), Cursor(uidvalidity=None, last_uid=0))

    assert len(fetched) == 2
    assert server.messages(user, "INBOX") == [(uid, ()) for uid in uids]


def test_a_cursor_at_the_last_uid_reads_nothing(server: ImapServer, user: str,
                                                settings_for: Callable[..., MailboxSettings]) -> None:
    # "UID n:*" with n past the highest UID still matches the highest message on the wire.
    uids = fill(server, user, 2)
    uidvalidity = server.uidvalidity(user, "INBOX")

    assert read(settings_for(), Cursor(uidvalidity=uidvalidity, last_uid=uids[-1])) == ([], uidvalidity)
    assert read(settings_for(), Cursor(uidvalidity=uidvalidity, last_uid=uids[-1] + 50)) == ([], uidvalidity)


def test_an_empty_folder_reads_nothing(server: ImapServer, user: str,
                                       settings_for: Callable[..., MailboxSettings]) -> None:
    server.create_folder(user, "Empty")

    fetched, uidvalidity = read(settings_for(folder="Empty"), Cursor(uidvalidity=None, last_uid=0))

    assert fetched == []
    assert uidvalidity == server.uidvalidity(user, "Empty")


def test_limit_caps_each_call_and_the_cursor_advances_across_calls(
        server: ImapServer, user: str, settings_for: Callable[..., MailboxSettings]) -> None:
    uids = fill(server, user, 5)
    cursor = Cursor(uidvalidity=None, last_uid=0)
    batches = []
    with Mailbox(settings_for()) as mailbox:
        for _ in range(4):
            fetched, uidvalidity = mailbox.new_messages(cursor, limit=2)
            batches.append([item.uid for item in fetched])
            cursor = advance(cursor, fetched, uidvalidity)

    assert batches == [uids[0:2], uids[2:4], uids[4:5], []]
    assert cursor == Cursor(uidvalidity=server.uidvalidity(user, "INBOX"), last_uid=uids[-1])


def test_a_stored_cursor_picks_up_in_a_later_session(server: ImapServer, user: str,
                                                     settings_for: Callable[..., MailboxSettings]) -> None:
    first = fill(server, user, 2)
    fetched, uidvalidity = read(settings_for(), Cursor(uidvalidity=None, last_uid=0))
    cursor = advance(Cursor(uidvalidity=None, last_uid=0), fetched, uidvalidity)
    later = server.append(user, "INBOX", message(3))

    fetched, _ = read(settings_for(), cursor)

    assert cursor.last_uid == first[-1]
    assert [(item.uid, item.raw) for item in fetched] == [(later, message(3))]


def test_mail_arriving_during_a_session_is_seen_by_the_next_call(
        server: ImapServer, user: str, settings_for: Callable[..., MailboxSettings]) -> None:
    fill(server, user, 1)
    with Mailbox(settings_for()) as mailbox:
        fetched, uidvalidity = mailbox.new_messages(Cursor(uidvalidity=None, last_uid=0))
        cursor = advance(Cursor(uidvalidity=None, last_uid=0), fetched, uidvalidity)
        arrived = server.append(user, "INBOX", message(2))
        fetched, _ = mailbox.new_messages(cursor)

    assert [item.uid for item in fetched] == [arrived]


def test_a_uidvalidity_change_rescans_the_folder_from_uid_1(server: ImapServer, user: str,
                                                            settings_for: Callable[..., MailboxSettings]) -> None:
    uids = fill(server, user, 3)
    fetched, old_uidvalidity = read(settings_for(), Cursor(uidvalidity=None, last_uid=0))
    cursor = advance(Cursor(uidvalidity=None, last_uid=0), fetched, old_uidvalidity)
    assert read(settings_for(), cursor) == ([], old_uidvalidity)

    new_uidvalidity = server.reset_uidvalidity(user, "INBOX")
    fetched, uidvalidity = read(settings_for(), cursor)

    assert uidvalidity == new_uidvalidity != old_uidvalidity  # the caller sees the rescan
    assert [item.uid for item in fetched] == uids
    assert [item.raw for item in fetched] == [message(1), message(2), message(3)]


def test_a_rescan_is_also_paged_by_limit(server: ImapServer, user: str,
                                         settings_for: Callable[..., MailboxSettings]) -> None:
    uids = fill(server, user, 3)
    stale = Cursor(uidvalidity=server.uidvalidity(user, "INBOX"), last_uid=uids[-1])
    server.reset_uidvalidity(user, "INBOX")

    with Mailbox(settings_for()) as mailbox:
        first, uidvalidity = mailbox.new_messages(stale, limit=2)
        cursor = advance(stale, first, uidvalidity)
        second, _ = mailbox.new_messages(cursor, limit=2)

    assert [item.uid for item in first] == uids[:2]
    assert [item.uid for item in second] == uids[2:]


# -- marking ---------------------------------------------------------------------------------------


def test_mark_processed_flags_seen_and_leaves_mail_in_place_without_processed_folder(
        server: ImapServer, user: str, settings_for: Callable[..., MailboxSettings]) -> None:
    uids = fill(server, user, 3)

    with Mailbox(settings_for()) as mailbox:
        mailbox.mark_processed(uids[:2])

    assert server.messages(user, "INBOX") == [(uids[0], ("\\Seen",)), (uids[1], ("\\Seen",)), (uids[2], ())]


def test_mark_processed_moves_to_the_processed_folder_creating_it(
        server: ImapServer, user: str, settings_for: Callable[..., MailboxSettings]) -> None:
    uids = fill(server, user, 3)
    settings = settings_for(processed_folder="Processed")
    assert "Processed" not in server.folders(user)

    with Mailbox(settings) as mailbox:
        fetched, _ = mailbox.new_messages(Cursor(uidvalidity=None, last_uid=0), limit=2)
        mailbox.mark_processed([item.uid for item in fetched])

    assert "Processed" in server.folders(user)
    assert server.messages(user, "INBOX") == [(uids[2], ())]
    moved = server.messages(user, "Processed")
    assert [flags for _uid, flags in moved] == [("\\Seen",), ("\\Seen",)]
    with server.client(user) as imap:
        imap.select_folder("Processed", readonly=True)
        bodies = imap.fetch([uid for uid, _flags in moved], [b"BODY.PEEK[]"])
    assert sorted(item[b"BODY[]"] for item in bodies.values()) == [message(1), message(2)]


def test_mark_processed_uses_an_existing_processed_folder(server: ImapServer, user: str,
                                                          settings_for: Callable[..., MailboxSettings]) -> None:
    uids = fill(server, user, 1)
    server.append(user, "Archive/Bounces", message(99))

    with Mailbox(settings_for(processed_folder="Archive/Bounces")) as mailbox:
        mailbox.mark_processed(uids)

    assert server.messages(user, "INBOX") == []
    assert [flags for _uid, flags in server.messages(user, "Archive/Bounces")] == [(), ("\\Seen",)]


def test_mark_processed_again_is_harmless(server: ImapServer, user: str,
                                          settings_for: Callable[..., MailboxSettings]) -> None:
    # A poller that crashed after moving but before it knew re-runs the same call.
    uids = fill(server, user, 2)
    settings = settings_for(processed_folder="Processed")

    with Mailbox(settings) as mailbox:
        mailbox.mark_processed(uids)
    with Mailbox(settings) as mailbox:
        mailbox.mark_processed(uids)
        mailbox.mark_processed([])

    assert server.messages(user, "INBOX") == []
    assert len(server.messages(user, "Processed")) == 2


def test_mark_processed_copies_and_expunges_when_the_server_has_no_move() -> None:
    with ImapServer({"nomove": PASSWORD}, imap_capability="IMAP4rev1 LITERAL+ UIDPLUS") as server:
        uids = fill(server, "nomove", 3)
        settings = MailboxSettings(host=server.host, port=server.port, user="nomove", password=PASSWORD,
                                   security="none", processed_folder="Processed", timeout=5.0)

        with Mailbox(settings) as mailbox:
            mailbox.mark_processed(uids[:2])

        assert server.messages("nomove", "INBOX") == [(uids[2], ())]
        assert [flags for _uid, flags in server.messages("nomove", "Processed")] == [("\\Seen",), ("\\Seen",)]


# -- failures --------------------------------------------------------------------------------------


def test_wrong_password_is_a_mailbox_error_without_the_password(
        server: ImapServer, user: str, settings_for: Callable[..., MailboxSettings]) -> None:
    wrong = "Wr0ng-but-secret-pw"
    settings = settings_for(password=wrong)

    with pytest.raises(MailboxError) as caught:
        read(settings, Cursor(uidvalidity=None, last_uid=0))

    text = str(caught.value)
    assert "AUTHENTICATIONFAILED" in text
    assert user in text
    assert wrong not in text
    assert wrong not in repr(caught.value)
    assert wrong not in repr(settings)


def test_connection_refused_is_a_mailbox_error_at_once() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago and has no listener
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = MailboxSettings(host="127.0.0.1", port=port, user="u", password=PASSWORD, security="none",
                               timeout=30.0)
    started = time.monotonic()

    with pytest.raises(MailboxError, match=r"connecting failed: .*refused"):
        read(settings, Cursor(uidvalidity=None, last_uid=0))

    assert time.monotonic() - started < 5  # refused, not waited out


def test_a_server_that_never_greets_times_out_as_a_mailbox_error() -> None:
    with socket.socket() as silent:  # listens, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        settings = MailboxSettings(host="127.0.0.1", port=silent.getsockname()[1], user="u",
                                   password=PASSWORD, security="none", timeout=0.3)

        with pytest.raises(MailboxError, match="connecting failed"):
            read(settings, Cursor(uidvalidity=None, last_uid=0))


def test_a_missing_folder_is_a_mailbox_error(settings_for: Callable[..., MailboxSettings]) -> None:
    with pytest.raises(MailboxError, match="selecting folder 'Nowhere' failed"):
        read(settings_for(folder="Nowhere"), Cursor(uidvalidity=None, last_uid=0))


def test_unknown_security_is_refused() -> None:
    with pytest.raises(ValueError, match="security"):
        MailboxSettings(host="127.0.0.1", port=143, user="u", password=PASSWORD, security="tls")


# -- transport security ----------------------------------------------------------------------------


def test_starttls_against_a_server_without_tls_is_a_mailbox_error(
        settings_for: Callable[..., MailboxSettings]) -> None:
    with pytest.raises(MailboxError, match="does not offer STARTTLS"):
        read(settings_for(security="starttls"), Cursor(uidvalidity=None, last_uid=0))


def test_implicit_tls_against_a_plain_port_is_a_mailbox_error(
        settings_for: Callable[..., MailboxSettings]) -> None:
    with pytest.raises(MailboxError, match="connecting failed"):
        read(settings_for(security="ssl"), Cursor(uidvalidity=None, last_uid=0))


def test_implicit_tls_reads_when_verification_is_off(tls_server: ImapServer) -> None:
    tls_server.add_user("tls-ssl", PASSWORD)
    uid = tls_server.append("tls-ssl", "INBOX", message(1))
    settings = MailboxSettings(host=tls_server.host, port=tls_server.tls_port, user="tls-ssl", password=PASSWORD,
                               security="ssl", verify_tls=False, timeout=5.0)

    fetched, _ = read(settings, Cursor(uidvalidity=None, last_uid=0))

    assert fetched == [Fetched(uid=uid, raw=message(1))]


def test_starttls_reads_when_verification_is_off(tls_server: ImapServer) -> None:
    tls_server.add_user("tls-starttls", PASSWORD)
    uid = tls_server.append("tls-starttls", "INBOX", message(1))
    settings = MailboxSettings(host=tls_server.host, port=tls_server.port, user="tls-starttls",
                               password=PASSWORD, security="starttls", verify_tls=False, timeout=5.0)

    fetched, _ = read(settings, Cursor(uidvalidity=None, last_uid=0))

    assert fetched == [Fetched(uid=uid, raw=message(1))]


@pytest.mark.parametrize("security", ["ssl", "starttls"])
def test_an_untrusted_certificate_is_a_mailbox_error(tls_server: ImapServer, security: str) -> None:
    port = tls_server.tls_port if security == "ssl" else tls_server.port
    settings = MailboxSettings(host=tls_server.host, port=port, user="u", password=PASSWORD, security=security,
                               timeout=5.0)

    with pytest.raises(MailboxError, match="CERTIFICATE_VERIFY_FAILED"):
        read(settings, Cursor(uidvalidity=None, last_uid=0))
