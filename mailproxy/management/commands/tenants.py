"""`manage.py tenants list|add|show|update|delete|suspend|activate` (also `mail-proxy NAME tenants …`)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from mailproxy import console
from queueing import services as queue_services
from tenants import services
from tenants.exceptions import ConflictError
from tenants.models import AuthMethod, Tenant
from tenants.serializers import TenantInSerializer, TenantOutSerializer

FLAGS = {"id": "ID", "name": "--name", "client_base_url": "--base-url", "client_sync_path": "--sync-path",
         "client_auth": "--auth-method", "signing_secret": "--signing-secret-stdin", "active": "--active"}


def _tenant_flags(parser: CommandParser) -> None:
    parser.add_argument("--name")
    parser.add_argument("--base-url", help="where delivery reports are posted (http or https)")
    parser.add_argument("--sync-path", help="path of the report endpoint (default /mail-proxy/sync)")
    parser.add_argument("--auth-method", choices=AuthMethod.values, help="how reports authenticate")
    parser.add_argument("--auth-user", help="user for basic auth")
    parser.add_argument("--auth-token", help="bearer token, or the password for basic auth")
    parser.add_argument("--auth-token-stdin", action="store_true", help="read the token/password from stdin")
    parser.add_argument("--signing-secret-stdin", action="store_true",
                        help="read the secret that signs delivery reports from stdin")
    parser.add_argument("--limit-minute", type=int, help="tenant-wide messages per minute (0: none)")
    parser.add_argument("--limit-hour", type=int)
    parser.add_argument("--limit-day", type=int)


class Command(BaseCommand):
    help = "Manage tenants: list, add, show, update, delete, suspend, activate."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        listing = actions.add_parser("list", help="every tenant")
        listing.add_argument("--active-only", action="store_true")
        console.add_json_flag(listing)
        add = actions.add_parser("add", help="create a tenant and print its first API key")
        add.add_argument("id", nargs="?", help="the tenant's id (asked for when missing)")
        _tenant_flags(add)
        console.add_json_flag(add)
        show = actions.add_parser("show", help="one tenant, without secrets")
        show.add_argument("id")
        console.add_json_flag(show)
        update = actions.add_parser("update", help="change the given fields only")
        update.add_argument("id")
        _tenant_flags(update)
        state = update.add_mutually_exclusive_group()
        state.add_argument("--active", dest="active", action="store_true", default=None)
        state.add_argument("--inactive", dest="active", action="store_false")
        console.add_json_flag(update)
        delete = actions.add_parser("delete", help="delete a tenant and everything it owns")
        delete.add_argument("id")
        delete.add_argument("--yes", action="store_true", help="do not ask for confirmation")
        for name, text in (("suspend", "hold the tenant's sending (or one batch)"), ("activate", "the reverse")):
            sub = actions.add_parser(name, help=text)
            sub.add_argument("id")
            sub.add_argument("--batch", help="only this batch_code")
            console.add_json_flag(sub)

    def handle(self, *args: Any, **options: Any) -> None:
        getattr(self, f"do_{options['action']}")(options)

    def do_list(self, options: dict[str, Any]) -> None:
        tenants = Tenant.objects.prefetch_related("suspended_batches").order_by("id")
        if options["active_only"]:
            tenants = tenants.filter(active=True)
        records = TenantOutSerializer(tenants, many=True).data
        console.emit(self, records, as_json=options["json"],
                     columns=["id", "name", "active", "suspended", "reports to"],
                     rows=[[r["id"], r["name"], r["active"], r["suspended"],
                            (r["client_base_url"] + r["client_sync_path"]) if r["client_base_url"] else ""]
                           for r in records])

    def do_show(self, options: dict[str, Any]) -> None:
        record = TenantOutSerializer(console.tenant_named(options["id"])).data
        console.emit(self, record, as_json=options["json"], lines=[f"{key}: {value}" for key, value in record.items()])

    def _fields(self, options: dict[str, Any], *, creating: bool) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if options.get("name") is not None:
            data["name"] = options["name"]
        if options.get("base_url") is not None:
            data["client_base_url"] = options["base_url"]
        if options.get("sync_path") is not None:
            data["client_sync_path"] = options["sync_path"]
        if options.get("active") is not None:
            data["active"] = options["active"]
        limits = {key: options[flag] for key, flag in (("per_minute", "limit_minute"), ("per_hour", "limit_hour"),
                                                        ("per_day", "limit_day")) if options.get(flag) is not None}
        if limits:
            data["rate_limits"] = limits
        token = options.get("auth_token")
        if options.get("auth_token_stdin"):
            token = console.read_secret_from_stdin("--auth-token-stdin")
        method = options.get("auth_method")
        if creating and console.interactive():
            if "name" not in data:
                data["name"] = console.ask("Name", default=options["id"])
            if "client_base_url" not in data:
                data["client_base_url"] = console.ask("Base URL for delivery reports (empty: none)", default="")
            if data["client_base_url"] and method is None:
                method = console.ask("Report authentication (bearer, basic, none)", default="none",
                                     check=lambda v: None if v in AuthMethod.values else "answer bearer, basic or none")
        if method == AuthMethod.BASIC and not options.get("auth_user") and console.interactive():
            options["auth_user"] = console.ask("Basic auth user")
        if method in (AuthMethod.BEARER, AuthMethod.BASIC) and not token and console.interactive():
            token = console.ask("Token" if method == AuthMethod.BEARER else "Password", secret=True)
        if method is not None:
            auth: dict[str, Any] = {"method": method}
            if method == AuthMethod.BEARER:
                auth["token"] = token
            elif method == AuthMethod.BASIC:
                auth.update(user=options.get("auth_user"), password=token)
            data["client_auth"] = {key: value for key, value in auth.items() if value}
        elif token:
            raise CommandError("--auth-token: give --auth-method bearer or basic with it")
        if options.get("signing_secret_stdin"):
            data["signing_secret"] = console.read_secret_from_stdin("--signing-secret-stdin")
        return data

    def do_add(self, options: dict[str, Any]) -> None:
        if not options["id"]:
            if not console.interactive():
                raise CommandError("ID: the tenant's id is required")
            options["id"] = console.ask("Tenant id")
        if Tenant.objects.filter(pk=options["id"]).exists():
            raise CommandError(f"tenant {options['id']!r} already exists (use update)")
        data = console.validated(TenantInSerializer, {"id": options["id"], **self._fields(options, creating=True)},
                                 flags=FLAGS)
        saved = services.save_tenant(data=data)
        record = dict(TenantOutSerializer(saved.tenant).data)
        key = saved.first_key
        if options["json"]:
            console.emit(self, {"tenant": record, "api_key": key.raw if key else None}, as_json=True)
            return
        self.stdout.write(f"tenant {saved.tenant.id} created")
        if key is not None:
            self.stdout.write(f"API key (shown once, keep it now): {key.raw}")

    def do_update(self, options: dict[str, Any]) -> None:
        tenant = console.tenant_named(options["id"])
        fields = self._fields(options, creating=False)
        if not fields:
            raise CommandError("nothing to change: give at least one flag (see --help)")
        data = console.validated(TenantInSerializer, {"id": tenant.id, **fields}, flags=FLAGS, partial=True)
        data.pop("id", None)
        tenant = services.update_tenant(tenant=tenant, data=data)
        record = TenantOutSerializer(tenant).data
        console.emit(self, record, as_json=options["json"], lines=[f"tenant {tenant.id} updated"])

    def do_delete(self, options: dict[str, Any]) -> None:
        tenant = console.tenant_named(options["id"])
        console.confirm(f"Delete tenant {tenant.id} with all its messages, accounts and keys?",
                        assume_yes=options["yes"])
        services.delete_tenant(tenant=tenant)
        self.stdout.write(f"tenant {options['id']} deleted")

    def _suspension(self, options: dict[str, Any], *, suspend: bool) -> None:
        tenant = console.tenant_named(options["id"])
        action = queue_services.suspend_sending if suspend else queue_services.activate_sending
        try:
            state = action(tenant=tenant, batch_code=options["batch"])
        except ConflictError as exc:  # activating one batch while the whole tenant is suspended
            raise CommandError(exc.message) from None
        record = {"tenant_id": state.tenant_id, "suspended": state.suspended,
                  "suspended_batches": state.suspended_batches, "held": state.held}
        what = f"batch {options['batch']}" if options["batch"] else "all sending"
        console.emit(self, record, as_json=options["json"], lines=[
            f"tenant {tenant.id}: {what} {'suspended' if suspend else 'active'}; {state.held} messages held"
            + (f"; suspended batches: {', '.join(state.suspended_batches)}" if state.suspended_batches else ""),
        ])

    def do_suspend(self, options: dict[str, Any]) -> None:
        self._suspension(options, suspend=True)

    def do_activate(self, options: dict[str, Any]) -> None:
        self._suspension(options, suspend=False)
