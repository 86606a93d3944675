"""A real Dovecot IMAP server for the test suite, configured in a temporary directory.

Dovecot comes from the Debian package (``apt-get install dovecot-imapd``); nothing under /etc is
read or written. The server listens on free loopback ports, authenticates the users of a
passwd-file per user, with plaintext passwords, and keeps their mail in maildirs inside the directory::

    with ImapServer() as server:
        server.add_user("bounces", "secret")
        uid = server.append("bounces", "INBOX", raw_bytes)
        ...  # point the code under test at (server.host, server.port)
        assert server.messages("bounces", "INBOX") == [(uid, ("\\Seen",))]

``ImapServer(tls=True)`` also listens for implicit TLS on ``tls_port`` and offers STARTTLS on
``port``, with a self-signed certificate for ``localhost``/``127.0.0.1`` (``cert_path``).

Running as root (CI containers) needs care: Dovecot refuses to run login processes as root and
refuses mail access as UID 0, so login processes run as ``dovenull`` (or ``nobody``) and mail is
accessed as ``nobody``, who owns the mail homes; the temporary directory is made traversable for
them. As any other user, every process runs as that user. Chroots are switched off in both cases,
since an unprivileged master cannot chroot.
"""

from __future__ import annotations

import contextlib
import datetime
import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType

from imapclient import IMAPClient

__all__ = ["ImapServer"]

_DOVECOT = "/usr/sbin/dovecot"
_DOVEADM = "/usr/bin/doveadm"
_START_TIMEOUT = 10.0  # generous: a loaded CI machine; a normal start takes a few tenths of a second
_START_ATTEMPTS = 3  # a free port picked by bind(0) can be taken by someone else before Dovecot binds it


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _identity(name: str) -> tuple[str, str, int, int]:
    """User name, primary group name, uid and gid of an account."""
    entry = pwd.getpwnam(name)
    return entry.pw_name, grp.getgrgid(entry.pw_gid).gr_name, entry.pw_uid, entry.pw_gid


def _self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """Write a self-signed certificate for localhost and 127.0.0.1; return (cert, key) paths."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())  # EC keys generate instantly, unlike RSA
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def _end_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM Dovecot's whole process group, then SIGKILL whatever is left after a few seconds.

    Signalling only the master takes a second: its log process lingers for late messages. The
    group (master, log, auth, login and mail processes) ends at once.
    """
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        process.poll()  # reaps the master, so the group can empty
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.01)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    process.wait()


class ImapServer:
    """A Dovecot instance in the foreground of a subprocess, with its own users and maildirs."""

    host = "127.0.0.1"

    def __init__(
        self,
        users: dict[str, str] | None = None,
        *,
        tls: bool = False,
        imap_capability: str | None = None,
    ) -> None:
        self.tls = tls
        # A full list replaces what Dovecot advertises after login (e.g. leave out MOVE to exercise
        # a client's fallback); the commands themselves keep working.
        self.imap_capability = imap_capability
        self.port = 0
        self.tls_port = 0
        self.cert_path: Path | None = None  # the self-signed certificate, for clients' trust stores
        self._key_path: Path | None = None
        self._users: dict[str, str] = dict(users or {})
        self._root: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    # -- life cycle -------------------------------------------------------------------------------

    def __enter__(self) -> ImapServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Write the configuration and start Dovecot; return once it greets on its IMAP port."""
        if self._process is not None:
            raise RuntimeError("the IMAP server is already running")
        if not Path(_DOVECOT).exists():
            raise RuntimeError("Dovecot is not installed: apt-get install -y dovecot-imapd")
        root = Path(tempfile.mkdtemp(prefix="imap-server-"))
        self._root = root
        # The login and mail processes of a root master run as other users and must reach their
        # sockets and homes below this directory: traversable, not listable.
        root.chmod(0o711)
        for sub in ("run", "state", "home", "passwd"):
            (root / sub).mkdir()
        login, internal, mail = self._accounts()
        if os.getuid() == 0:
            os.chown(root / "home", mail[2], mail[3])
        for name in self._users:
            self._write_passwd_file(name)
        if self.tls:
            self.cert_path, self._key_path = _self_signed_certificate(root)
        last_error = ""
        for _ in range(_START_ATTEMPTS):
            self.port = _free_port(self.host)
            self.tls_port = _free_port(self.host) if self.tls else 0
            self._write_config(login=login[0], internal=internal, mail=mail)
            error = self._spawn()
            if error is None:
                return
            last_error = error
        self.stop()
        raise RuntimeError(f"Dovecot did not start:\n{last_error}")

    def stop(self) -> None:
        """Stop Dovecot and every process it started, and remove the temporary directory."""
        process, self._process = self._process, None
        if process is not None:
            _end_group(process)
        root, self._root = self._root, None
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)

    def log(self) -> str:
        """Dovecot's log so far (for assertion messages when a test fails)."""
        root = self._require_root()
        parts = [path.read_text(errors="replace") for path in (root / "stderr.log", root / "dovecot.log")
                 if path.exists()]
        return "".join(parts)

    # -- users and mail ---------------------------------------------------------------------------

    def add_user(self, name: str, password: str) -> None:
        """Add a user, usable at once (also while the server runs)."""
        if not name or name.startswith(".") or any(char in name for char in ":/\n") or any(
            char in password for char in ":\n"
        ):
            raise ValueError(f"unusable user name or password for the test server: {name!r}")
        if name in self._users:
            # Dovecot looks at a passwd-file at most once a second, so a changed password could be
            # ignored for a moment; a new user is a new file and is always read afresh.
            raise ValueError(f"user {name!r} exists already")
        self._users[name] = password
        if self._root is not None:
            self._write_passwd_file(name)

    @contextlib.contextmanager
    def client(self, user: str) -> Iterator[IMAPClient]:
        """An IMAPClient logged in as ``user`` over plain IMAP, logged out afterwards."""
        with IMAPClient(self.host, self.port, ssl=False, timeout=10) as imap:
            imap.login(user, self._users[user])
            yield imap

    def create_folder(self, user: str, name: str) -> None:
        """Create a folder (a no-op if it exists)."""
        with self.client(user) as imap:
            if not imap.folder_exists(name):
                imap.create_folder(name)

    def folders(self, user: str) -> list[str]:
        """The user's folder names."""
        with self.client(user) as imap:
            return sorted(str(name) for _flags, _delimiter, name in imap.list_folders())

    def append(self, user: str, folder: str, raw: bytes, flags: Iterable[str] = ()) -> int:
        """Store a message in a folder (created if missing); return its UID."""
        with self.client(user) as imap:
            if not imap.folder_exists(folder):
                imap.create_folder(folder)
            response = imap.append(folder, raw, flags=tuple(flags))
            # UIDPLUS: b"[APPENDUID <uidvalidity> <uid>] Append completed ..."
            text = response.decode() if isinstance(response, bytes) else str(response)
            if text.startswith("[APPENDUID "):
                return int(text.split("]", 1)[0].split()[2])
            # Without APPENDUID (a trimmed imap_capability), the newest message is the one appended.
            imap.select_folder(folder, readonly=True)
            return int(max(imap.search("ALL")))

    def messages(self, user: str, folder: str) -> list[tuple[int, tuple[str, ...]]]:
        """(UID, flags) of every message in a folder, in UID order; flags sorted, \\Recent left out."""
        with self.client(user) as imap:
            # EXAMINE, so that looking does not change \Recent or anything else.
            imap.select_folder(folder, readonly=True)
            fetched = imap.get_flags(imap.search("ALL"))
        return [
            (int(uid), tuple(sorted(flag.decode() for flag in flags if flag != b"\\Recent")))
            for uid, flags in sorted(fetched.items())
        ]

    def uidvalidity(self, user: str, folder: str) -> int:
        """The folder's current UIDVALIDITY."""
        with self.client(user) as imap:
            return int(imap.folder_status(folder, [b"UIDVALIDITY"])[b"UIDVALIDITY"])

    def reset_uidvalidity(self, user: str, folder: str) -> int:
        """Give the folder a new UIDVALIDITY, as a server does after rebuilding its index; return it.

        The messages stay, with their UIDs: a client that trusted its old cursor would skip them,
        which is exactly what a poller must not do.
        """
        new = self.uidvalidity(user, folder) + 1
        self._doveadm("mailbox", "update", "-u", user, "--uid-validity", str(new), folder)
        return new

    # -- internals --------------------------------------------------------------------------------

    def _require_root(self) -> Path:
        if self._root is None:
            raise RuntimeError("the IMAP server is not running")
        return self._root

    def _accounts(self) -> tuple[tuple[str, str, int, int], str, tuple[str, str, int, int]]:
        """(login account, internal user, mail account) for the processes Dovecot starts."""
        if os.getuid() != 0:
            me = _identity(pwd.getpwuid(os.getuid()).pw_name)
            return me, me[0], me
        # Dovecot refuses login processes as root ("This process must not be run as root") and
        # mail access as UID 0 ("userdb returned 0 as uid"). Auth and the other internal services
        # may stay root, which lets them read the root-owned passwd-file.
        login = "dovenull"
        try:
            pwd.getpwnam(login)
        except KeyError:
            login = "nobody"
        return _identity(login), "root", _identity("nobody")

    def _write_passwd_file(self, name: str) -> None:
        root = self._require_root()
        # Written aside and renamed, so Dovecot never reads a half-written file.
        tmp = root / "passwd" / f".{name}.tmp"
        tmp.write_text(f"{name}:{{PLAIN}}{self._users[name]}\n")
        tmp.chmod(0o600)
        tmp.replace(root / "passwd" / name)

    def _write_config(self, *, login: str, internal: str, mail: tuple[str, str, int, int]) -> None:
        root = self._require_root()
        mail_user, mail_group, mail_uid, _mail_gid = mail
        if self.tls:
            assert self.cert_path is not None
            assert self._key_path is not None
            ssl = f"ssl = yes\nssl_cert = <{self.cert_path}\nssl_key = <{self._key_path}\n"
            imaps = f"  inet_listener imaps {{\n    address = {self.host}\n    port = {self.tls_port}\n  }}\n"
        else:
            ssl = "ssl = no\n"
            imaps = "  inet_listener imaps {\n    port = 0\n  }\n"
        capability = f"imap_capability = {self.imap_capability}\n" if self.imap_capability else ""
        config = f"""\
# Generated by tests/imap_server.py; reads nothing from /etc/dovecot.
protocols = imap
listen = {self.host}
base_dir = {root / "run"}
state_dir = {root / "state"}
log_path = {root / "dovecot.log"}
{ssl}disable_plaintext_auth = no
auth_mechanisms = plain login
# Tests log in with wrong passwords on purpose: no 2 s delay (Dovecot 2.3.19 still answers a failure
# at its next 0.5 s tick; later versions at once).
auth_failure_delay = 0
default_login_user = {login}
default_internal_user = {internal}
default_internal_group = {grp.getgrgid(pwd.getpwnam(internal).pw_gid).gr_name}
first_valid_uid = {mail_uid}
mail_location = maildir:~/Maildir
# Test mail need not survive a power cut.
mail_fsync = never
# "/" as the hierarchy separator, as most providers show it ("Archive/Bounces").
namespace inbox {{
  inbox = yes
  separator = /
}}
{capability}# One passwd-file per user: Dovecot stats a passwd-file at most once a second and would miss a
# user added within the second after a login, but a path it has not opened yet is always read.
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root / "passwd"}/%u
}}
userdb {{
  driver = static
  args = uid={mail_user} gid={mail_group} home={root / "home"}/%u
}}
# An unprivileged master cannot chroot, and a root one does not need to for a test.
service anvil {{
  chroot =
  # Without this socket the auth process disables its penalty, which would otherwise delay every
  # login from 127.0.0.1 by up to 15 s after a test's deliberate wrong password.
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = {self.host}
    port = {self.port}
  }}
{imaps}}}
"""
        (root / "dovecot.conf").write_text(config)

    def _spawn(self) -> str | None:
        """Start Dovecot and wait for its greeting; None when it is up, else what went wrong."""
        root = self._require_root()
        with (root / "stderr.log").open("ab") as stderr:
            process = subprocess.Popen(
                [_DOVECOT, "-F", "-c", str(root / "dovecot.conf")],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                start_new_session=True,  # its own process group, ended as one by stop()
            )
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                _end_group(process)  # anything it forked before giving up
                return self.log()  # e.g. "listen(127.0.0.1, port) failed: Address already in use"
            if self._greets():
                self._process = process
                return None
            time.sleep(0.02)
        _end_group(process)
        return f"no IMAP greeting within {_START_TIMEOUT} s\n{self.log()}"

    def _greets(self) -> bool:
        # The master binds the port before any login process runs: only a greeting means "ready".
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as sock:
                greeted = sock.recv(64).startswith(b"* OK")
                if greeted:
                    sock.sendall(b"a LOGOUT\r\n")  # a polite end keeps "connection reset" out of the log
                return greeted
        except OSError:
            return False

    def _doveadm(self, *args: str) -> str:
        root = self._require_root()
        result = subprocess.run(
            [_DOVEADM, "-c", str(root / "dovecot.conf"), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"doveadm {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout
