"""IMAP sessions with a bounce or PEC mailbox: read what is new after a cursor, then mark it processed.

The position in a folder is a `Cursor`: the folder's UIDVALIDITY and the highest UID already
handled (SPEC §12.1, §13). UIDs only grow while UIDVALIDITY stays the same (RFC 3501 §2.3.1.1),
so "UID > last_uid" is exactly the mail not seen yet; when UIDVALIDITY changes, the old UIDs
mean nothing and the whole folder is read again.

Contract with the caller (the pollers)::

    with Mailbox(settings) as mailbox:
        fetched, uidvalidity = mailbox.new_messages(cursor)   # changes nothing on the server
        ...  # commit the events of `fetched`, then store the new cursor
        mailbox.mark_processed([item.uid for item in fetched])

- `new_messages` reads with BODY.PEEK[], so nothing is flagged, moved or deleted by reading.
- The caller stores the cursor only after the events of those messages are committed, and
  calls `mark_processed` only after the cursor is stored. A crash before the cursor is stored
  reads the same messages again next time; a crash before `mark_processed` leaves them unseen
  in the folder, past the cursor. Either way nothing is lost, and the caller's
  de-duplication of events makes a second reading harmless.
- A UIDVALIDITY change (or a cursor without one) is a rescan: every message still in the
  folder comes back from UID 1, flagged by the new UIDVALIDITY returned. The caller restarts
  its cursor at (new UIDVALIDITY, 0) and de-duplicates; nothing is reported twice.
- `mark_processed` is safe to repeat: UIDs no longer in the folder are ignored.

Any failure of the session (connection, TLS, login, a missing folder, a command the server
refuses) is a `MailboxError`, whose message never contains the password. After one, the
session is unusable: leave the `with` block and try again at the next poll.
"""

from __future__ import annotations

import contextlib
import imaplib
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from imapclient import IMAPClient
from imapclient.exceptions import CapabilityError

__all__ = ["Cursor", "Fetched", "Mailbox", "MailboxError", "MailboxSettings"]

SECURITY_MODES = ("ssl", "starttls", "none")
_SEEN = b"\\Seen"
_DELETED = b"\\Deleted"
_BODY = b"BODY[]"  # what the server answers for BODY.PEEK[]


@dataclass(frozen=True)
class MailboxSettings:
    """Where a mailbox is and how to log in; the password is already decrypted by the caller."""

    host: str
    port: int
    user: str
    password: str = field(repr=False)  # kept out of repr(), so a logged settings object leaks nothing
    folder: str = "INBOX"
    security: str = "ssl"  # "ssl" (implicit TLS) | "starttls" | "none"
    processed_folder: str = ""  # where processed mail is moved; "" leaves it in `folder`, flagged \Seen
    timeout: float = 30.0  # seconds, for the connection and for every command
    verify_tls: bool = True

    def __post_init__(self) -> None:
        if self.security not in SECURITY_MODES:
            raise ValueError(f"security must be one of {', '.join(SECURITY_MODES)}, not {self.security!r}")


@dataclass(frozen=True)
class Cursor:
    """A position in a folder: its UIDVALIDITY (None: never read) and the last UID handled."""

    uidvalidity: int | None
    last_uid: int


@dataclass(frozen=True)
class Fetched:
    """One message read from the folder: its UID and the raw RFC 5322 bytes."""

    uid: int
    raw: bytes


class MailboxError(Exception):
    """The mailbox could not be read or updated (connection, TLS, login, folder, command)."""


class Mailbox:
    """One IMAP session with a mailbox folder, opened and closed as a context manager."""

    def __init__(self, settings: MailboxSettings) -> None:
        self.settings = settings
        self._imap: Any = None  # IMAPClient, untyped
        self._uidvalidity: int | None = None  # of the selected folder; None: not selected yet

    # -- session ----------------------------------------------------------------------------------

    def __enter__(self) -> Mailbox:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def open(self) -> None:
        """Connect, secure the connection as configured and log in."""
        if self._imap is not None:
            return
        settings = self.settings
        with self._errors("connecting"):
            imap = IMAPClient(
                settings.host,
                port=settings.port,
                ssl=settings.security == "ssl",
                ssl_context=self._tls_context() if settings.security == "ssl" else None,
                timeout=settings.timeout,
            )
        try:
            if settings.security == "starttls":
                self._starttls(imap)
            with self._errors(f"logging in as {settings.user!r}"):
                imap.login(settings.user, settings.password)
        except MailboxError:
            _shutdown(imap)
            raise
        self._imap = imap
        self._uidvalidity = None

    def close(self) -> None:
        """Log out; a session that already broke is just dropped."""
        imap, self._imap = self._imap, None
        self._uidvalidity = None
        if imap is None:
            return
        try:
            imap.logout()
        except (imaplib.IMAP4.error, OSError):
            _shutdown(imap)

    # -- reading and marking ----------------------------------------------------------------------

    def new_messages(self, cursor: Cursor, *, limit: int = 100) -> tuple[list[Fetched], int]:
        """Up to `limit` messages after the cursor in UID order, and the folder's UIDVALIDITY.

        When the cursor's UIDVALIDITY is not the folder's (or is None), the folder is read from
        UID 1: a rescan, recognisable by the returned UIDVALIDITY differing from the cursor's.
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        imap = self._session()
        if self._uidvalidity is not None:
            with self._errors("refreshing the folder"):
                # A selected folder takes in newly arrived mail only at a sync point: Dovecot's
                # SEARCH does not sync first, NOOP does (RFC 3501 §6.1.2).
                imap.noop()
        uidvalidity = self._select()
        first = cursor.last_uid + 1 if cursor.uidvalidity == uidvalidity else 1
        with self._errors("searching"):
            found = imap.search(["UID", f"{first}:*"])
        # "n:*" always includes the highest UID, even when it is below n (RFC 3501 §6.4.8), so a
        # folder with nothing new would return its last message again without this filter.
        uids = sorted(int(uid) for uid in found if int(uid) >= first)[:limit]
        if not uids:
            return [], uidvalidity
        with self._errors("fetching"):
            # BODY.PEEK[] rather than BODY[] or RFC822: reading must not set \Seen (RFC 3501 §6.4.5).
            response = imap.fetch(uids, [b"BODY.PEEK[]"])
        fetched = []
        for uid in uids:
            raw = response.get(uid, {}).get(_BODY)
            if isinstance(raw, bytes):  # missing: expunged by someone else since the search
                fetched.append(Fetched(uid=uid, raw=raw))
        return fetched, uidvalidity

    def mark_processed(self, uids: list[int]) -> None:
        """Flag the messages \\Seen and, if a processed folder is configured, move them there."""
        if not uids:
            return
        imap = self._session()
        self._select()
        uids = sorted(set(uids))
        with self._errors("flagging messages \\Seen"):
            imap.add_flags(uids, [_SEEN], silent=True)
        target = self.settings.processed_folder
        if not target or target == self.settings.folder:
            return
        self._ensure_folder(target)
        with self._errors(f"moving messages to {target!r}"):
            if imap.has_capability("MOVE"):
                imap.move(uids, target)  # atomic (RFC 6851)
            else:
                # Not atomic: a crash after COPY leaves a copy in both folders, which the caller's
                # de-duplication absorbs on a rescan. Without UIDPLUS, EXPUNGE also removes any other
                # message someone flagged \Deleted in this folder: that is what they asked for.
                imap.copy(uids, target)
                imap.add_flags(uids, [_DELETED], silent=True)
                if imap.has_capability("UIDPLUS"):
                    imap.uid_expunge(uids)
                else:
                    imap.expunge()

    # -- internals --------------------------------------------------------------------------------

    def _session(self) -> Any:
        if self._imap is None:
            raise MailboxError("the mailbox session is not open (use `with Mailbox(settings) as mailbox:`)")
        return self._imap

    def _select(self) -> int:
        """Select the folder once per session (read-write, for mark_processed); its UIDVALIDITY."""
        if self._uidvalidity is None:
            with self._errors(f"selecting folder {self.settings.folder!r}"):
                response = self._session().select_folder(self.settings.folder)
            uidvalidity = response.get(b"UIDVALIDITY")
            if uidvalidity is None:  # required by RFC 3501 §6.3.1; without it no cursor is safe
                raise MailboxError(f"{self._where()}: folder {self.settings.folder!r} has no UIDVALIDITY")
            self._uidvalidity = int(uidvalidity)
        return self._uidvalidity

    def _ensure_folder(self, name: str) -> None:
        imap = self._session()
        with self._errors(f"creating folder {name!r}"):
            if imap.folder_exists(name):
                return
            try:
                imap.create_folder(name)
            except imaplib.IMAP4.error:
                # Another poller may have created it in the meantime; only a still missing folder is an error.
                if not imap.folder_exists(name):
                    raise
            # Subscribed, so that people looking at the mailbox with a mail client see it.
            with contextlib.suppress(imaplib.IMAP4.error):
                imap.subscribe_folder(name)

    def _starttls(self, imap: Any) -> None:
        try:
            imap.starttls(self._tls_context())
        except CapabilityError:
            # Never carry on in plain text: the configuration asked for TLS.
            raise MailboxError(f"{self._where()}: the server does not offer STARTTLS") from None
        except (imaplib.IMAP4.error, OSError) as exc:
            raise MailboxError(f"{self._where()}: STARTTLS failed: {self._describe(exc)}") from exc

    def _tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if not self.settings.verify_tls:
            # An explicit choice of the account owner (self-signed certificates on private servers).
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Turn imapclient's and the socket's exceptions into a MailboxError naming the action."""
        try:
            yield
        except (imaplib.IMAP4.error, OSError) as exc:
            raise MailboxError(f"{self._where()}: {action} failed: {self._describe(exc)}") from exc

    def _where(self) -> str:
        settings = self.settings
        return f"IMAP {settings.user}@{settings.host}:{settings.port} ({settings.security})"

    def _describe(self, exc: BaseException) -> str:
        """The server's or the socket's words, without the password even if something echoed it."""
        text = str(exc) or type(exc).__name__
        if len(text) > 3 and text[0] == "b" and text[1] in "'\"" and text[-1] == text[1]:
            text = text[2:-1]  # imaplib puts the server's bytes in the exception: b'[AUTHENTICATIONFAILED] ...'
        if isinstance(exc, TimeoutError | ConnectionError) and type(exc).__name__ not in text:
            text = f"{type(exc).__name__}: {text}"
        if self.settings.password:
            text = text.replace(self.settings.password, "***")
        return text


def _shutdown(imap: Any) -> None:
    """Close the socket without a LOGOUT (the session is already broken or never logged in)."""
    with contextlib.suppress(imaplib.IMAP4.error, OSError):
        imap.shutdown()
