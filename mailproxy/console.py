"""What the management commands share: prompts, tables or JSON, and one-line errors.

The same commands serve `python manage.py …` on a production install and the
`mail-proxy` console script on an instance folder (mailproxy/cli.py calls them), so a
refusal reads the same from both front doors: a `CommandError` with one line naming the
flag, never a traceback.
"""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from django.core.management.base import BaseCommand, CommandError
from rest_framework import serializers

from tenants.models import SmtpAccount, Tenant


def interactive(stream: TextIO | None = None) -> bool:
    """Prompts only on a terminal: a script piping input never waits for an answer."""
    stream = stream or sys.stdin
    return bool(getattr(stream, "isatty", lambda: False)())


def ask(question: str, *, default: str | None = None, secret: bool = False,
        check: Callable[[str], str | None] | None = None) -> str:
    """Ask on the terminal until the answer passes `check` (which returns a problem or None)."""
    shown = f"{question} [{default}]: " if default not in (None, "") else f"{question}: "
    while True:
        try:
            answer = getpass.getpass(shown) if secret else input(shown)
        except EOFError:
            raise CommandError(f"{question}: no answer (end of input)") from None
        answer = answer.strip() if not secret else answer
        if answer == "" and default is not None:
            answer = default
        problem = check(answer) if check else None
        if problem is None:
            return answer
        sys.stderr.write(f"  {problem}\n")


def confirm(question: str, *, assume_yes: bool) -> None:
    """Go on only with --yes or a 'y' typed at the terminal."""
    if assume_yes:
        return
    if not interactive():
        raise CommandError(f"{question.rstrip('?')}: not confirmed (add --yes when not run from a terminal)")
    if ask(f"{question} (y/N)", default="n").lower() not in ("y", "yes"):
        raise CommandError("cancelled")


def read_secret_from_stdin(flag: str) -> str:
    """The first line of standard input, for `--password-stdin` style flags."""
    line = sys.stdin.readline()
    value = line.rstrip("\r\n")
    if not value:
        raise CommandError(f"{flag}: nothing on standard input")
    return value


def validated(serializer_class: type[serializers.Serializer], data: Mapping[str, Any], *,
              flags: Mapping[str, str] | None = None, partial: bool = False) -> dict[str, Any]:
    """Validate with the API's own serializer; the first problem names the CLI flag."""
    serializer = serializer_class(data=dict(data), partial=partial)
    if serializer.is_valid():
        return dict(serializer.validated_data)
    field, problem = _first_error(serializer.errors)
    name = (flags or {}).get(field.split(".")[0], field)
    raise CommandError(f"{name}: {problem}")


def _first_error(errors: Any, path: str = "") -> tuple[str, str]:
    if isinstance(errors, Mapping):
        for key, value in errors.items():
            label = path if key == "non_field_errors" else (f"{path}.{key}" if path else str(key))
            return _first_error(value, label)
    if isinstance(errors, list) and errors:
        return _first_error(errors[0], path)
    return path or "input", str(errors)


def tenant_named(tenant_id: str) -> Tenant:
    tenant = Tenant.objects.filter(pk=tenant_id).first()
    if tenant is None:
        raise CommandError(f"tenant {tenant_id!r} not found")
    return tenant


def account_named(tenant: Tenant, account_id: str) -> SmtpAccount:
    account = SmtpAccount.objects.filter(tenant=tenant, external_id=account_id).first()
    if account is None:
        raise CommandError(f"account {account_id!r} not found for tenant {tenant.id!r}")
    return account


def timestamp(value: float | datetime | None) -> str:
    if value is None or value == "":
        return "-"
    moment = value if isinstance(value, datetime) else datetime.fromtimestamp(float(value), tz=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def emit(command: BaseCommand, payload: Any, *, as_json: bool, columns: Sequence[str] | None = None,
         rows: Iterable[Sequence[Any]] | None = None, lines: Iterable[str] | None = None) -> None:
    """Print JSON (`--json`, the API's record shapes) or a plain table / text for people."""
    if as_json:
        command.stdout.write(json.dumps(payload, indent=2, default=str, ensure_ascii=False))
        return
    if columns is not None:
        table = [[str(cell) if cell not in (None, "") else "-" for cell in row] for row in rows or ()]
        if not table:
            command.stdout.write("(none)")
            return
        widths = [max(len(column), *(len(row[i]) for row in table)) for i, column in enumerate(columns)]
        command.stdout.write("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
        for row in table:
            command.stdout.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    for line in lines or ():
        command.stdout.write(line)


def add_json_flag(parser: Any) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON (the API's record shape)")
