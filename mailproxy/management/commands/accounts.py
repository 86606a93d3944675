"""`manage.py accounts --tenant T list|add|show|update|delete|test` (also `mail-proxy NAME T accounts …`)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from delivery.probe import probe_account
from mailproxy import console
from queueing import services as queue_services
from tenants import services
from tenants.exceptions import ConflictError
from tenants.models import LimitBehavior, Security, SmtpAccount
from tenants.serializers import AccountInSerializer, AccountOutSerializer

FLAGS = {"id": "ID", "host": "--host", "port": "--port", "user": "--user", "password": "--password-stdin",
         "security": "--security", "limit_per_minute": "--limit-minute", "limit_per_hour": "--limit-hour",
         "limit_per_day": "--limit-day", "batch_size": "--batch-size", "timeout": "--timeout",
         "max_connections": "--max-connections", "limit_behavior": "--limit-behavior"}


def _account_flags(parser: CommandParser) -> None:
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--user")
    parser.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    parser.add_argument("--security", choices=Security.values)
    parser.add_argument("--no-verify-tls", dest="verify_tls", action="store_false", default=None,
                        help="accept any certificate (test servers only)")
    parser.add_argument("--limit-minute", type=int, help="messages per minute (0: no limit)")
    parser.add_argument("--limit-hour", type=int)
    parser.add_argument("--limit-day", type=int)
    parser.add_argument("--limit-behavior", choices=LimitBehavior.values)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--timeout", type=int, help="seconds per SMTP command")
    parser.add_argument("--max-connections", type=int)
    parser.add_argument("--default", dest="is_default", action="store_true", default=None,
                        help="the tenant's default account")
    parser.add_argument("--pec", dest="is_pec", action="store_true", default=None, help="a PEC account")


class Command(BaseCommand):
    help = "Manage the SMTP accounts of a tenant: list, add, show, update, delete, test."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", required=True, help="the tenant's id")
        actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        console.add_json_flag(actions.add_parser("list", help="the tenant's accounts, never with secrets"))
        add = actions.add_parser("add", help="create an account (asks for what is missing on a terminal)")
        add.add_argument("id", nargs="?")
        _account_flags(add)
        console.add_json_flag(add)
        show = actions.add_parser("show")
        show.add_argument("id")
        console.add_json_flag(show)
        update = actions.add_parser("update", help="change the given fields only")
        update.add_argument("id")
        _account_flags(update)
        console.add_json_flag(update)
        delete = actions.add_parser("delete")
        delete.add_argument("id")
        delete.add_argument("--force", action="store_true", help="fail the messages waiting on it")
        delete.add_argument("--yes", action="store_true", help="do not ask for confirmation")
        test = actions.add_parser("test", help="connect and log in; with --to, send a test message")
        test.add_argument("id")
        test.add_argument("--to", help="send a test message to this address")
        test.add_argument("--from", dest="sender", help="its sender (default: the account's user)")
        console.add_json_flag(test)

    def handle(self, *args: Any, **options: Any) -> None:
        self.tenant = console.tenant_named(options["tenant"])
        getattr(self, f"do_{options['action']}")(options)

    def do_list(self, options: dict[str, Any]) -> None:
        records = AccountOutSerializer(SmtpAccount.objects.filter(tenant=self.tenant).order_by("external_id"),
                                       many=True).data
        console.emit(self, records, as_json=options["json"],
                     columns=["id", "host", "port", "user", "security", "default", "limits m/h/d", "error"],
                     rows=[[r["id"], r["host"], r["port"], r["user"], r["security"], r["is_default"],
                            "/".join(str(r[k] or "-") for k in ("limit_per_minute", "limit_per_hour",
                                                                 "limit_per_day")),
                            r["account_error"]] for r in records])

    def do_show(self, options: dict[str, Any]) -> None:
        record = AccountOutSerializer(console.account_named(self.tenant, options["id"])).data
        console.emit(self, record, as_json=options["json"], lines=[f"{key}: {value}" for key, value in record.items()])

    def _fields(self, options: dict[str, Any]) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for key, option in (("host", "host"), ("port", "port"), ("user", "user"), ("security", "security"),
                            ("verify_tls", "verify_tls"), ("limit_per_minute", "limit_minute"),
                            ("limit_per_hour", "limit_hour"), ("limit_per_day", "limit_day"),
                            ("limit_behavior", "limit_behavior"), ("batch_size", "batch_size"),
                            ("timeout", "timeout"), ("max_connections", "max_connections"),
                            ("is_default", "is_default"), ("is_pec", "is_pec")):
            if options.get(option) is not None:
                data[key] = options[option]
        if options.get("password_stdin"):
            data["password"] = console.read_secret_from_stdin("--password-stdin")
        return data

    def do_add(self, options: dict[str, Any]) -> None:
        prompting = console.interactive()
        if not options["id"]:
            if not prompting:
                raise CommandError("ID: the account's id is required")
            options["id"] = console.ask("Account id")
        if SmtpAccount.objects.filter(tenant=self.tenant, external_id=options["id"]).exists():
            raise CommandError(f"account {options['id']!r} already exists for tenant {self.tenant.id!r} (use update)")
        data = self._fields(options)
        if prompting:
            if "host" not in data:
                data["host"] = console.ask("SMTP host")
            if "port" not in data:
                data["port"] = int(console.ask("Port", default="587", check=_port_problem))
            if "security" not in data:
                guess = Security.SSL if data["port"] == 465 else Security.STARTTLS
                data["security"] = console.ask("Security (starttls, ssl, none)", default=str(guess),
                                               check=lambda v: None if v in Security.values else
                                               "answer starttls, ssl or none")
            if "user" not in data:
                data["user"] = console.ask("User (empty: no login)", default="")
            if data["user"] and "password" not in data:
                data["password"] = console.ask("Password", secret=True)
        if "host" not in data:
            raise CommandError("--host: is required")
        if "port" not in data:
            raise CommandError("--port: is required")
        saved = services.save_account(tenant=self.tenant, data=self._valid({"id": options["id"], **data}))
        record = AccountOutSerializer(saved.account).data
        console.emit(self, record, as_json=options["json"],
                     lines=[f"account {saved.account.external_id} created for tenant {self.tenant.id}"])

    def do_update(self, options: dict[str, Any]) -> None:
        account = console.account_named(self.tenant, options["id"])
        data = self._fields(options)
        if not data:
            raise CommandError("nothing to change: give at least one flag (see --help)")
        valid = self._valid({"id": account.external_id, "host": data.get("host", account.host), **data})
        if "host" not in data:
            valid.pop("host")
        saved = services.save_account(tenant=self.tenant, data=valid)
        console.emit(self, AccountOutSerializer(saved.account).data, as_json=options["json"],
                     lines=[f"account {account.external_id} updated"])

    def _valid(self, data: dict[str, Any]) -> dict[str, Any]:
        return console.validated(AccountInSerializer, data, flags=FLAGS)

    def do_delete(self, options: dict[str, Any]) -> None:
        account = console.account_named(self.tenant, options["id"])
        console.confirm(f"Delete account {account.external_id} of tenant {self.tenant.id}?", assume_yes=options["yes"])
        try:
            failed = queue_services.delete_account(account=account, force=options["force"])
        except ConflictError as exc:
            raise CommandError(exc.message.replace("?force=true", "--force")) from None
        failed_note = f"; {failed} waiting messages failed" if failed else ""
        self.stdout.write(f"account {options['id']} deleted{failed_note}")

    def do_test(self, options: dict[str, Any]) -> None:
        account = console.account_named(self.tenant, options["id"])
        result = probe_account(account, send_to=options["to"], sender=options["sender"])
        console.emit(self, {"ok": result.ok, "step": result.step, "answer": result.answer}, as_json=options["json"],
                     lines=[f"account {account.external_id}: {result}"])
        if not result.ok:
            raise CommandError(f"account {account.external_id}: {result}", returncode=2)


def _port_problem(value: str) -> str | None:
    return None if value.isdigit() and 0 < int(value) < 65536 else "a port is a number from 1 to 65535"
