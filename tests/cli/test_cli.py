"""The `mail-proxy` console script end to end: real processes, a real SMTP server.

One instance is started for the module in a temporary GMP_HOME; the tests run the CLI
as a user would (a subprocess per command) and look at what the SMTP server received,
what the CLI printed and which exit code it gave.
"""

from __future__ import annotations

import base64
import json
import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.e2e.harness import free_port
from tests.smtp_sink import SmtpSink

# An instance folder is SQLite whatever database the suite runs on: once is enough.
pytestmark = pytest.mark.sqlite_only

ROOT = Path(__file__).resolve().parents[2]
ATTACHMENT = bytes(range(256)) * 4
BODY_TEXT = "First line\r\n.\r\nA line with only a dot above, and one starting with a dot:\r\n.hidden\r\n"


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> object:
        return json.loads(self.out)


class Cli:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = {**os.environ, "GMP_HOME": str(home)}

    def __call__(self, *args: str, stdin: str = "", timeout: float = 120) -> Result:
        done = subprocess.run([sys.executable, "-m", "mailproxy.cli", *args], input=stdin, capture_output=True,
                              text=True, env=self.env, cwd=ROOT, timeout=timeout, check=False)
        return Result(done.returncode, done.stdout, done.stderr)

    def ok(self, *args: str, stdin: str = "") -> Result:
        result = self(*args, stdin=stdin)
        assert result.code == 0, f"mail-proxy {' '.join(args)} → {result.code}\n{result.out}\n{result.err}"
        return result


@pytest.fixture(scope="module")
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as server:
        yield server


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    runner = Cli(tmp_path_factory.mktemp("gmp-home"))
    yield runner
    for name in ("demo", "second"):
        if (runner.home / name / "web.pid").exists():
            runner("stop", name)


@pytest.fixture(scope="module")
def demo(cli: Cli, sink: SmtpSink) -> dict[str, str]:
    port = free_port()
    started = cli.ok("start", "demo", "--port", str(port))
    assert f"running at http://127.0.0.1:{port}" in started.out
    assert str(cli.home / "demo" / "api_token") in started.out
    added = cli.ok("demo", "tenants", "add", "acme", "--name", "Acme Corp")
    assert "API key (shown once" in added.out
    cli.ok("demo", "acme", "accounts", "add", "main", "--host", sink.host, "--port", str(sink.port),
           "--security", "none", "--default", "--limit-minute", "100")
    return {"url": f"http://127.0.0.1:{port}", "api_key": added.out.rsplit(": ", 1)[1].strip()}


def eml(path: Path, **headers: str) -> Path:
    lines = [f"{name.replace('_', '-')}: {value}" for name, value in {
        "From": "Alice <alice@example.com>", "To": "Bob <bob@example.com>", "Bcc": "hidden@example.com",
        "Subject": "Quarterly report", "Message_ID": "<q3-report@example.com>", **headers,
    }.items()]
    attachment = base64.encodebytes(ATTACHMENT).decode().replace("\n", "\r\n")
    body = (
        "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
        f"--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{BODY_TEXT}"
        "--b1\r\nContent-Type: application/octet-stream; name=\"data.bin\"\r\n"
        "Content-Disposition: attachment; filename=\"data.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        f"{attachment}--b1--\r\n"
    )
    path.write_bytes(("\r\n".join(lines) + "\r\n" + body).encode())
    return path


def wait_for_status(cli: Cli, tenant: str, message_id: str, status: str, timeout: float = 40) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        records = cli.ok("demo", tenant, "messages", "list", "--json").json()
        assert isinstance(records, list)
        found = [r for r in records if r["id"] == message_id]
        if found and found[0]["status"] == status:
            return found[0]
        if time.monotonic() > deadline:
            pytest.fail(f"{message_id} not {status} in time: {found}")
        time.sleep(0.5)


def test_start_makes_a_private_instance_folder_and_list_shows_it_running(cli: Cli, demo: dict[str, str]) -> None:
    folder = cli.home / "demo"
    assert (folder / "mail_service.db").exists()
    for secret in ("api_token", "encryption.key", "secret_key"):
        assert stat.S_IMODE((folder / secret).stat().st_mode) == 0o600, secret
    listed = cli.ok("list", "--json").json()
    assert isinstance(listed, list)
    assert [(row["name"], row["state"]) for row in listed] == [("demo", "running")]
    assert set(listed[0]["pids"]) == {"web", "worker"}
    table = cli.ok("list").out
    assert "demo" in table
    assert "running" in table
    token = cli.ok("demo", "token").out.strip()
    assert token == (folder / "api_token").read_text().strip()
    # The token printed is the one the running web process takes.
    answer = requests.get(f"{demo['url']}/tenants", headers={"X-API-Token": token}, timeout=10)
    assert answer.status_code == 200
    assert [t["id"] for t in answer.json()["tenants"]] == ["acme"]
    info = cli.ok("demo", "info", "--json").json()
    assert isinstance(info, dict)
    assert info["state"] == "running"
    assert info["tenants"] == 1
    assert info["accounts"] == 1
    assert token not in json.dumps(info)  # a hint only


def test_an_eml_sent_through_the_cli_arrives_as_written(cli: Cli, demo: dict[str, str], sink: SmtpSink,
                                                        tmp_path: Path) -> None:
    path = eml(tmp_path / "report.eml")
    queued = cli.ok("demo", "acme", "send", str(path), "--id", "report-1", "--priority", "high")
    assert "queued report-1" in queued.out
    cli.ok("demo", "acme", "run-now")
    record = wait_for_status(cli, "acme", "report-1", "sent")
    assert record["priority_label"] == "high"
    assert record["account_id"] == "main"
    received = [m for m in sink.messages if m.message_id == "<q3-report@example.com>"]
    assert len(received) == 1
    mail = received[0]
    assert mail.mail_from == "alice@example.com"
    assert sorted(mail.rcpt_tos) == ["bob@example.com", "hidden@example.com"]
    head, _, body = mail.data.partition(b"\r\n\r\n")
    assert b"hidden@example.com" not in head
    assert b"\r\nBcc:" not in head
    assert b"X-Mail-Proxy-ID: " in head
    assert b"Subject: Quarterly report" in head
    # Every byte of the body as written: dot lines, the attachment's base64, the boundaries.
    assert body == path.read_bytes().partition(b"\r\n\r\n")[2]
    parts = list(mail.message.iter_attachments())
    assert [(p.get_filename(), p.get_content()) for p in parts] == [("data.bin", ATTACHMENT)]
    shown = cli.ok("demo", "acme", "messages", "show", "report-1", "--json").json()
    assert isinstance(shown, dict)
    assert [event["type"] for event in shown["events"]] == ["sent"]
    # The same file again is the same message: refused, not sent twice.
    again = cli("demo", "acme", "send", str(path), "--id", "report-1")
    assert again.code == 1
    assert "already sent" in again.err
    assert "--id" in again.err


def test_status_filter_and_tables(cli: Cli, demo: dict[str, str], tmp_path: Path) -> None:
    cli.ok("demo", "tenants", "suspend", "acme")
    cli.ok("demo", "acme", "send", str(eml(tmp_path / "held.eml", Message_ID="<held@example.com>")), "--id", "held-1")
    held = cli.ok("demo", "acme", "messages", "list", "--status", "held", "--json").json()
    assert [r["id"] for r in held] == ["held-1"]  # type: ignore[union-attr]
    assert "held-1" in cli.ok("demo", "acme", "messages", "list", "--status", "held").out
    cli.ok("demo", "acme", "messages", "delete", "held-1")
    cancelled = cli.ok("demo", "acme", "messages", "list", "--status", "cancelled", "--json").json()
    assert [r["id"] for r in cancelled] == ["held-1"]  # type: ignore[union-attr]
    cli.ok("demo", "tenants", "activate", "acme")
    tenants = cli.ok("demo", "tenants", "list", "--json").json()
    assert [(t["id"], t["name"], t["suspended"]) for t in tenants] == [("acme", "Acme Corp", False)]  # type: ignore


def test_keys_from_the_cli_work_on_the_api_and_revocation_is_immediate(cli: Cli, demo: dict[str, str]) -> None:
    created = cli.ok("demo", "acme", "keys", "create", "--label", "ci", "--json").json()
    assert isinstance(created, dict)
    key, prefix = created["api_key"], created["prefix"]
    url = f"{demo['url']}/accounts"
    assert requests.get(url, headers={"X-API-Token": key}, timeout=10).status_code == 200
    listed = cli.ok("demo", "acme", "keys", "list", "--json").json()
    assert prefix in [k["prefix"] for k in listed]  # type: ignore[union-attr]
    assert key not in json.dumps(listed)
    cli.ok("demo", "acme", "keys", "revoke", prefix)
    assert requests.get(url, headers={"X-API-Token": key}, timeout=10).status_code == 401


def test_account_test_reports_the_servers_answer(cli: Cli, demo: dict[str, str], sink: SmtpSink) -> None:
    before = len(sink.messages)
    probed = cli.ok("demo", "acme", "accounts", "test", "main", "--to", "ops@example.com", "--json").json()
    assert probed == {"ok": True, "step": "data", "answer": probed["answer"]}  # type: ignore[index]
    assert str(probed["answer"]).startswith("250")  # type: ignore[index]
    assert len(sink.messages) == before + 1
    assert sink.messages[-1].rcpt_tos == ("ops@example.com",)
    sink.on_rcpt("nobody@example.com", 550, "5.1.1 no such user")
    refused = cli("demo", "acme", "accounts", "test", "main", "--to", "nobody@example.com")
    assert refused.code == 2
    assert "failed at rcpt: 550 5.1.1 no such user" in refused.err


ERRORS = [
    (["nosuch", "info"], "no instance named 'nosuch'"),
    (["bad/name", "info"], "is not an instance name"),
    (["demo", "ghost", "accounts", "list"], "tenant 'ghost' not found"),
    (["demo", "acme", "accounts", "show", "nope"], "account 'nope' not found for tenant 'acme'"),
    (["demo", "acme", "accounts", "add", "x", "--host", "smtp example", "--port", "25"], "--host: must be a host"),
    (["demo", "acme", "accounts", "add", "x", "--host", "h", "--port", "70000"], "--port: Ensure this value"),
    (["demo", "acme", "accounts", "add", "x", "--port", "25"], "--host: is required"),
    (["demo", "acme", "accounts", "add", "main", "--host", "h", "--port", "25"], "already exists"),
    (["demo", "tenants", "add", "bad id!"], "ID: use "),
    (["demo", "tenants", "add", "t2", "--base-url", "ftp://x"], "--base-url:"),
    (["demo", "tenants", "show", "ghost"], "tenant 'ghost' not found"),
    (["demo", "tenants", "delete", "acme"], "not confirmed (add --yes"),
    (["demo", "acme", "messages", "list", "--status", "lost"], "--status: 'lost' is not one of"),
    (["demo", "acme", "messages", "show", "ghost"], "message 'ghost' not found"),
    (["demo", "acme", "send", "/no/such/file.eml"], "/no/such/file.eml: no such file"),
    (["demo", "acme", "keys", "revoke", "abcdef"], "key 'abcdef' not found"),
    (["demo", "acme", "frobnicate"], "unknown tenant command 'frobnicate'"),
    (["demo", "acme", "messages", "list", "--bogus"], "unrecognized arguments: --bogus"),
    (["start", "demo2", "--port", "0"], "--port: 0 is not a port"),
]


@pytest.mark.parametrize(("args", "expected"), ERRORS, ids=[" ".join(a) for a, _ in ERRORS])
def test_every_error_is_one_line_and_a_nonzero_exit(cli: Cli, demo: dict[str, str], args: list[str],
                                                    expected: str) -> None:
    result = cli(*args)
    assert result.code != 0
    assert "Traceback" not in result.err + result.out
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1, result.err
    assert lines[0].startswith("mail-proxy: "), lines[0]
    assert expected in lines[0], lines[0]


def test_invalid_eml_and_priority_are_refused_and_nothing_is_stored(cli: Cli, demo: dict[str, str],
                                                                    tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.eml"
    garbage.write_bytes(b"just some words\r\nwithout any header\r\n")
    refused = cli("demo", "acme", "send", str(garbage), "--id", "garbage-1")
    assert refused.code == 1
    assert "eml" in refused.err
    assert "Traceback" not in refused.err
    bad_priority = cli("demo", "acme", "send", str(eml(tmp_path / "p.eml")), "--id", "p-1", "--priority", "urgent")
    assert bad_priority.code == 1
    assert "priority" in bad_priority.err
    ids = [r["id"] for r in cli.ok("demo", "acme", "messages", "list", "--json").json()]  # type: ignore[union-attr]
    assert "garbage-1" not in ids
    assert "p-1" not in ids


def test_a_port_in_use_is_refused_before_anything_starts(cli: Cli, demo: dict[str, str]) -> None:
    port = demo["url"].rsplit(":", 1)[1]
    result = cli("start", "second", "--port", port)
    assert result.code == 1
    assert f"port {port} on 127.0.0.1 is in use" in result.err
    assert "second" not in [row["name"] for row in cli.ok("list", "--json").json()]  # type: ignore[union-attr]


def test_password_from_stdin_is_stored_sealed_and_never_shown(cli: Cli, demo: dict[str, str]) -> None:
    canary = "canary-pw-6f1e2d"
    added = cli.ok("demo", "acme", "accounts", "add", "relay", "--host", "relay.example.com", "--port", "587",
                   "--user", "me@example.com", "--password-stdin", "--json", stdin=canary + "\n")
    assert canary not in added.out
    shown = cli.ok("demo", "acme", "accounts", "show", "relay", "--json").json()
    assert isinstance(shown, dict)
    assert shown["password_set"] is True
    assert canary not in json.dumps(shown)
    database = (cli.home / "demo" / "mail_service.db").read_bytes()
    assert canary.encode() not in database
    cli.ok("demo", "acme", "accounts", "delete", "relay", "--yes")


def test_admin_user_logs_in_to_the_instances_admin_console(cli: Cli, demo: dict[str, str]) -> None:
    cli.env["DJANGO_SUPERUSER_PASSWORD"] = "a-long-admin-password-1"
    try:
        cli.ok("demo", "admin-user", "--noinput", "--username", "boss", "--email", "boss@example.com")
    finally:
        del cli.env["DJANGO_SUPERUSER_PASSWORD"]
    session = requests.Session()
    login = session.get(f"{demo['url']}/admin/login/", timeout=10)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.text)
    assert token is not None
    answer = session.post(f"{demo['url']}/admin/login/?next=/admin/", timeout=10, data={
        "csrfmiddlewaretoken": token.group(1), "username": "boss", "password": "a-long-admin-password-1",
    }, headers={"Referer": f"{demo['url']}/admin/login/"})
    assert answer.status_code == 200
    assert "Site administration" in answer.text
    tenants = session.get(f"{demo['url']}/admin/tenants/tenant/", timeout=10)
    assert "Acme Corp" in tenants.text


def test_stop_ends_the_processes_and_a_stopped_instance_refuses_run_now(cli: Cli, demo: dict[str, str]) -> None:
    pids = cli.ok("list", "--json").json()[0]["pids"]  # type: ignore[index]
    stopped = cli.ok("stop", "demo")
    assert "stopped" in stopped.out
    for pid in pids.values():
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    assert [(r["name"], r["state"]) for r in cli.ok("list", "--json").json()] == [("demo", "stopped")]  # type: ignore
    again = cli("stop", "demo")
    assert again.code == 1
    assert again.err.strip() == "mail-proxy: instance demo is not running"
    refused = cli("demo", "acme", "run-now")
    assert refused.code == 1
    assert "not running: mail-proxy start demo" in refused.err
    # What needs no running process still works on a stopped instance.
    assert "acme" in cli.ok("demo", "tenants", "list").out


def test_add_prompts_on_a_terminal_and_reads_the_password_without_echo(cli: Cli, demo: dict[str, str]) -> None:
    pexpect = pytest.importorskip("pexpect")
    canary = "typed-pw-0b5c1a"

    def spawn(*args: str) -> object:
        return pexpect.spawn(sys.executable, ["-m", "mailproxy.cli", *args], env=cli.env, cwd=str(ROOT),
                             encoding="utf-8", timeout=60)

    tenant = spawn("demo", "tenants", "add")
    tenant.expect("Tenant id: ")
    tenant.sendline("beta")
    tenant.expect(r"Name \[beta\]: ")
    tenant.sendline("")
    tenant.expect(r"Base URL for delivery reports \(empty: none\): ")
    tenant.sendline("")
    tenant.expect("API key \\(shown once, keep it now\\): mpk_")
    tenant.expect(pexpect.EOF)
    tenant.close()
    assert tenant.exitstatus == 0

    account = spawn("demo", "beta", "accounts", "add")
    account.expect("Account id: ")
    account.sendline("smtp1")
    account.expect("SMTP host: ")
    account.sendline("mail.example.com")
    account.expect(r"Port \[587\]: ")
    account.sendline("eighty")
    account.expect("a port is a number from 1 to 65535")
    account.expect(r"Port \[587\]: ")
    account.sendline("")
    account.expect(r"Security \(starttls, ssl, none\) \[starttls\]: ")
    account.sendline("")
    account.expect(r"User \(empty: no login\): ")
    account.sendline("me@example.com")
    account.expect("Password: ")
    account.sendline(canary)
    account.expect("account smtp1 created for tenant beta")
    account.expect(pexpect.EOF)
    transcript = account.before or ""
    account.close()
    assert account.exitstatus == 0
    assert canary not in transcript  # not echoed
    shown = cli.ok("demo", "beta", "accounts", "show", "smtp1", "--json").json()
    assert isinstance(shown, dict)
    assert (shown["host"], shown["port"], shown["security"], shown["user"], shown["password_set"]) == (
        "mail.example.com", 587, "starttls", "me@example.com", True)
