"""The `mail-proxy` console script: instances in folders, and every management command.

An instance is a folder, `~/.mail-proxy/NAME/` (`GMP_HOME` moves the parent): its SQLite
database `mail_service.db`, the secrets generated on first use (`api_token`,
`encryption.key`, `secret_key`, mode 0600), `instance.json` (port and extra settings),
`logs/` and the pid files of the processes `start` ran. Everything but start/stop/list
runs the management commands in this process against the instance's settings, so the
CLI and `manage.py` are one implementation with two front doors.

Errors are one line on stderr and a non-zero exit code; `MAIL_PROXY_TRACEBACK=1` shows
the traceback of an unexpected one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

BASE_DIR = Path(__file__).resolve().parent.parent
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
PROCESSES = ("web", "worker")
# Settings an instance takes from its own folder, never from the caller's environment:
# a shell exported for a production install must not point an instance at its database.
INSTANCE_OWNED = ("DATABASE_URL", "GMP_DB_PATH", "GMP_DATA_DIR", "REDIS_URL", "CELERY_BROKER_URL",
                  "GMP_API_TOKEN", "MAIL_PROXY_ENCRYPTION_KEY", "DJANGO_SECRET_KEY", "DJANGO_SETTINGS_MODULE")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 90.0

USAGE = """\
usage:
  mail-proxy list [--json]                        instances with state, port, pids
  mail-proxy start NAME [--port 8000] [--host 127.0.0.1] [--concurrency 2]
  mail-proxy stop NAME
  mail-proxy generate-key                         a new MAIL_PROXY_ENCRYPTION_KEY
  mail-proxy NAME info [--json]                   paths, port, token hint, counts by status
  mail-proxy NAME token [--rotate]                show (or replace) the admin token
  mail-proxy NAME admin-user                      create a Django superuser for /admin/
  mail-proxy NAME tenants list|add|show|update|delete|suspend|activate
  mail-proxy NAME keys list|create|revoke|rotate  admin API keys
  mail-proxy NAME TENANT accounts list|add|show|update|delete|test
  mail-proxy NAME TENANT keys list|create|revoke|rotate
  mail-proxy NAME TENANT messages list [--status S] | show ID | delete ID...
  mail-proxy NAME TENANT send FILE.eml [--account ID] [--priority P]
  mail-proxy NAME [TENANT] run-now
  mail-proxy NAME cleanup | rotate-encryption-key
Every list/show takes --json; `COMMAND --help` tells the flags of each."""


class CliError(Exception):
    """A refusal worth one line: shown as `mail-proxy: <message>`."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def home() -> Path:
    return Path(os.environ.get("GMP_HOME") or Path.home() / ".mail-proxy").expanduser()


@dataclass
class Instance:
    name: str
    path: Path

    @classmethod
    def named(cls, name: str, *, must_exist: bool = True) -> Instance:
        if not NAME_PATTERN.match(name):
            raise CliError(f"{name!r} is not an instance name (letters, digits, '.', '_', '-')")
        instance = cls(name, home() / name)
        if must_exist and not instance.config_file.exists():
            raise CliError(f"no instance named {name!r} (mail-proxy list shows them; "
                           f"mail-proxy start {name} creates it)")
        return instance

    @property
    def config_file(self) -> Path:
        return self.path / "instance.json"

    @property
    def config(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.config_file.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise CliError(f"{self.config_file}: unreadable ({exc})") from None

    def save_config(self, config: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = self.config_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        temporary.replace(self.config_file)

    @property
    def url(self) -> str:
        config = self.config
        host = config.get("host", "127.0.0.1")
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{config.get('port', 8000)}"  # noqa: S104 (a listen-anywhere host is reached on loopback)

    def pid_file(self, process: str) -> Path:
        return self.path / f"{process}.pid"

    def pids(self) -> dict[str, int]:
        """The processes `start` ran that are still alive and still ours."""
        alive: dict[str, int] = {}
        for process in PROCESSES:
            try:
                pid = int(self.pid_file(process).read_text().strip())
            except (OSError, ValueError):
                continue
            if _is_ours(pid, self.path):
                alive[process] = pid
        return alive

    def state(self) -> str:
        running = self.pids()
        if len(running) == len(PROCESSES):
            return "running"
        return "partial" if running else "stopped"

    def environment(self) -> dict[str, str]:
        """The environment of the instance's processes (and of this one, for its commands)."""
        env = {key: value for key, value in os.environ.items() if key not in INSTANCE_OWNED}
        env.update({str(k): str(v) for k, v in self.config.get("env", {}).items()})
        env["GMP_DATA_DIR"] = str(self.path)
        env["DJANGO_SETTINGS_MODULE"] = "mailproxy.settings"
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BASE_DIR), os.environ.get("PYTHONPATH", "")]))
        return env


def _is_ours(pid: int, folder: Path) -> bool:
    """Alive and started for this folder: a pid reused by another program is left alone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    environ = Path(f"/proc/{pid}/environ")
    if not environ.exists():  # no /proc (macOS): the pid file is all there is to go by
        return True
    try:
        variables = environ.read_bytes().split(b"\0")
    except OSError:
        return False
    return f"GMP_DATA_DIR={folder}".encode() in variables


# --- Django, in this process ----------------------------------------------------------------

def _django(instance: Instance) -> None:
    environment = instance.environment()
    os.environ.clear()
    os.environ.update(environment)
    if str(BASE_DIR) not in sys.path:
        sys.path.insert(0, str(BASE_DIR))
    # This process answers one command: its own log lines would only clutter the answer.
    os.environ.setdefault("GMP_LOG_LEVEL", "WARNING")
    import django

    django.setup()
    logging.getLogger("kombu").setLevel(logging.ERROR)  # the filesystem broker has no host name


def _command(name: str, argv: Sequence[str]) -> None:
    from django.core.management import call_command

    call_command(name, *argv)


def _migrate() -> None:
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)


# --- instance commands ----------------------------------------------------------------------

def _free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:  # noqa: S310 (our own loopback URL)
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def cmd_start(args: list[str]) -> int:
    import argparse

    parser = _parser("start", "create the instance if new and run it in the background")
    parser.add_argument("name")
    parser.add_argument("--port", type=int, help="default 8000, or the port it had")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--concurrency", type=int, default=None, help="worker processes (default 2)")
    options: argparse.Namespace = parser.parse_args(args)
    instance = Instance.named(options.name, must_exist=False)
    created = not instance.config_file.exists()
    config: dict[str, Any] = {"name": instance.name, "port": 8000, "host": "127.0.0.1", "concurrency": 2, "env": {}}
    if not created:
        config.update(instance.config)
    for key in ("port", "host", "concurrency"):
        if getattr(options, key) is not None:
            config[key] = getattr(options, key)
    if not 0 < int(config["port"]) < 65536:
        raise CliError(f"--port: {config['port']} is not a port (1-65535)")
    if instance.pids():
        if instance.state() == "running":
            print(f"instance {instance.name} is already running at {instance.url}")
            return 0
        raise CliError(f"instance {instance.name} is half running ({', '.join(instance.pids())}); "
                       f"run `mail-proxy stop {instance.name}` first")
    if not _free(config["host"], int(config["port"])):
        raise CliError(f"port {config['port']} on {config['host']} is in use; choose another with --port")
    instance.save_config(config)
    (instance.path / "logs").mkdir(exist_ok=True)
    env = instance.environment()
    migrate = subprocess.run(  # noqa: S603 (our own interpreter and module)
        [sys.executable, "-m", "django", "migrate", "--noinput", "-v", "0"], env=env, capture_output=True,
        text=True, check=False, cwd=instance.path,
    )
    if migrate.returncode != 0:
        last = (migrate.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise CliError(f"migrating {instance.path / 'mail_service.db'} failed: {last}")
    commands = {
        "web": [sys.executable, "-m", "gunicorn", "mailproxy.wsgi:application",
                "--bind", f"{config['host']}:{config['port']}", "--workers", "1", "--threads", "8",
                "--access-logfile", "-", "--graceful-timeout", "30"],
        "worker": [sys.executable, "-m", "celery", "-A", "mailproxy", "worker", "--beat",
                   "-s", str(instance.path / "celerybeat-schedule"), "-l", "INFO",
                   "-c", str(config["concurrency"]), "-n", f"{instance.name}@%h", "--without-gossip",
                   "--without-mingle"],
    }
    started: dict[str, subprocess.Popen[bytes]] = {}
    for process, argv in commands.items():
        log = (instance.path / "logs" / f"{process}.log").open("ab")
        started[process] = subprocess.Popen(  # noqa: S603
            argv, env=env, cwd=instance.path, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # survives the terminal; stop ends it by its pid file
        )
        log.close()
        instance.pid_file(process).write_text(f"{started[process].pid}\n")
    deadline = time.monotonic() + START_TIMEOUT
    while not _healthy(instance.url):
        ended = [name for name, popen in started.items() if popen.poll() is not None]
        if ended or time.monotonic() > deadline:
            _stop(instance)
            name = ended[0] if ended else "web"
            reason = f"the {name} process exited" if ended else f"no answer at {instance.url}/health"
            detail = _tail(instance.path / "logs" / f"{name}.log", 1)
            raise CliError(f"instance {instance.name} did not start: {reason}"
                           + (f" ({detail.strip()})" if detail.strip() else "")
                           + f"; logs in {instance.path / 'logs'}")
        time.sleep(0.2)
    print(f"instance {instance.name} {'created and ' if created else ''}running at {instance.url}")
    print(f"  API docs {instance.url}/docs, admin console {instance.url}/admin/ "
          f"(mail-proxy {instance.name} admin-user creates a login)")
    print(f"  admin token in {instance.path / 'api_token'} (mail-proxy {instance.name} token shows it)")
    print(f"  logs in {instance.path / 'logs'}")
    return 0


def _stop(instance: Instance) -> list[str]:
    """SIGTERM each process of the instance (Celery: warm shutdown), SIGKILL what outlives the wait."""
    running = instance.pids()
    for pid in running.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while any(_is_ours(pid, instance.path) for pid in running.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in running.values():
        if _is_ours(pid, instance.path):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)  # its own session: the group is the process and its children
    for process in PROCESSES:
        instance.pid_file(process).unlink(missing_ok=True)
    return list(running)


def cmd_stop(args: list[str]) -> int:
    parser = _parser("stop", "end the processes `start` ran for the instance")
    parser.add_argument("name")
    instance = Instance.named(parser.parse_args(args).name)
    if not instance.pids():
        for process in PROCESSES:
            instance.pid_file(process).unlink(missing_ok=True)
        raise CliError(f"instance {instance.name} is not running")
    stopped = _stop(instance)
    print(f"instance {instance.name} stopped ({', '.join(stopped)})")
    return 0


def cmd_list(args: list[str]) -> int:
    parser = _parser("list", "every instance under GMP_HOME")
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args(args)
    rows: list[dict[str, Any]] = []
    folder = home()
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if not (path / "instance.json").exists():
            continue
        instance = Instance(path.name, path)
        pids = instance.pids()
        rows.append({"name": instance.name, "state": instance.state(), "url": instance.url,
                     "port": instance.config.get("port"), "pids": pids, "path": str(path)})
    if options.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print(f"no instances in {folder} (mail-proxy start NAME creates one)")
    else:
        width = max(len(row["name"]) for row in rows)
        print(f"{'NAME'.ljust(width)}  STATE    PORT   PIDS")
        for row in rows:
            shown = " ".join(f"{k}={v}" for k, v in row["pids"].items()) or "-"
            print(f"{row['name'].ljust(width)}  {row['state']:<8} {row['port']!s:<6} {shown}")
    return 0


def cmd_generate_key(args: list[str]) -> int:
    _parser("generate-key", "print a new MAIL_PROXY_ENCRYPTION_KEY").parse_args(args)
    import base64

    print(base64.b64encode(os.urandom(32)).decode("ascii"))
    return 0


def cmd_info(instance: Instance, args: list[str]) -> int:
    parser = _parser(f"{instance.name} info", "paths, port, token hint and counts by status")
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args(args)
    _django(instance)
    from django.db.models import Count

    from queueing.models import Message
    from tenants.models import SmtpAccount, Tenant

    token = (instance.path / "api_token").read_text().strip() if (instance.path / "api_token").exists() else ""
    counts = dict(Message.objects.values_list("status").annotate(n=Count("pk")).order_by())
    info = {
        "name": instance.name, "state": instance.state(), "url": instance.url, "path": str(instance.path),
        "database": str(instance.path / "mail_service.db"), "logs": str(instance.path / "logs"),
        "pids": instance.pids(), "token_hint": f"{token[:4]}…" if token else None,
        "token_file": str(instance.path / "api_token"), "tenants": Tenant.objects.count(),
        "accounts": SmtpAccount.objects.count(), "messages": counts,
    }
    if options.json:
        print(json.dumps(info, indent=2))
        return 0
    for key in ("name", "state", "url", "path", "database", "logs", "token_hint", "token_file", "tenants",
                "accounts"):
        print(f"{key}: {info[key]}")
    print("messages: " + (", ".join(f"{status} {n}" for status, n in sorted(counts.items())) or "none"))
    return 0


def cmd_token(instance: Instance, args: list[str]) -> int:
    parser = _parser(f"{instance.name} token", "show the admin token, or replace it")
    parser.add_argument("--rotate", action="store_true", help="a new token; restart the instance to use it")
    options = parser.parse_args(args)
    path = instance.path / "api_token"
    if options.rotate:
        import secrets

        temporary = path.with_suffix(".new")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
        temporary.replace(path)
        print(path.read_text().strip())
        if instance.pids():
            print(f"restart the instance to use it: mail-proxy stop {instance.name} && "
                  f"mail-proxy start {instance.name}", file=sys.stderr)
        return 0
    if not path.exists():
        _django(instance)  # settings create the token on first use
    print(path.read_text().strip())
    return 0


def cmd_admin_user(instance: Instance, args: list[str]) -> int:
    _django(instance)
    _migrate()
    _command("createsuperuser", args)
    return 0


# Instance-level commands that map onto management commands: (command, fixed arguments).
INSTANCE_COMMANDS: dict[str, tuple[str, list[str]]] = {
    "tenants": ("tenants", []),
    "keys": ("keys", ["--admin"]),
    "run-now": ("run_now", []),
    "cleanup": ("cleanup", []),
    "rotate-encryption-key": ("rotate_encryption_key", []),
}
TENANT_COMMANDS: dict[str, str] = {
    "accounts": "accounts", "keys": "keys", "messages": "messages", "send": "send_eml", "run-now": "run_now",
}
NEEDS_RUNNING = {"run_now"}


def _management(instance: Instance, command: str, argv: list[str]) -> int:
    if command in NEEDS_RUNNING and "-h" not in argv and "--help" not in argv and instance.state() != "running":
        raise CliError(f"instance {instance.name} is not running: mail-proxy start {instance.name}")
    _django(instance)
    _migrate()
    if command == "send_eml" and instance.state() != "running":
        print(f"note: instance {instance.name} is not running; the message goes out once it is started",
              file=sys.stderr)
    _command(command, argv)
    return 0


def run_instance(name: str, rest: list[str]) -> int:
    instance = Instance.named(name)
    if not rest:
        raise CliError(f"what to do with instance {name}? (mail-proxy --help)")
    word, args = rest[0], rest[1:]
    handlers: dict[str, Callable[[Instance, list[str]], int]] = {
        "info": cmd_info, "token": cmd_token, "admin-user": cmd_admin_user,
    }
    if word in handlers:
        return handlers[word](instance, args)
    if word in INSTANCE_COMMANDS:
        command, fixed = INSTANCE_COMMANDS[word]
        return _management(instance, command, [*fixed, *args])
    tenant = word
    if not args:
        raise CliError(f"unknown command {word!r} (mail-proxy --help); as a tenant it needs a command: "
                       f"{', '.join(TENANT_COMMANDS)}")
    if args[0] not in TENANT_COMMANDS:
        raise CliError(f"unknown tenant command {args[0]!r}; one of {', '.join(TENANT_COMMANDS)}")
    command = TENANT_COMMANDS[args[0]]
    return _management(instance, command, ["--tenant", tenant, *args[1:]])


def _parser(prog: str, description: str) -> Any:
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            raise CliError(f"{prog}: {message}", code=2)

    return Parser(prog=f"mail-proxy {prog}", description=description)


TOP_COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "list": cmd_list, "start": cmd_start, "stop": cmd_stop, "generate-key": cmd_generate_key,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if not args or args[0] in ("-h", "--help", "help"):
            print(USAGE)
            return 0 if args else 2
        if args[0] in TOP_COMMANDS:
            return TOP_COMMANDS[args[0]](args[1:])
        return run_instance(args[0], args[1:])
    except CliError as exc:
        return _fail(str(exc), exc.code)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except SystemExit as exc:  # argparse's --help
        return int(exc.code or 0) if isinstance(exc.code, int | None) else 1
    except Exception as exc:
        from django.core.management.base import CommandError

        from tenants.exceptions import DomainError

        if isinstance(exc, CommandError):
            return _fail(str(exc).removeprefix("Error: "), exc.returncode)
        if isinstance(exc, DomainError):
            return _fail(exc.message, 1)
        if os.environ.get("MAIL_PROXY_TRACEBACK"):
            raise
        return _fail(f"{type(exc).__name__}: {exc}".splitlines()[0], 1)


def _fail(message: str, code: int) -> int:
    print(f"mail-proxy: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
