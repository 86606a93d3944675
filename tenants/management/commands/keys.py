"""`manage.py keys --tenant T|--admin list|create|revoke|rotate` (also `mail-proxy NAME T keys …`)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from mailproxy import console
from tenants import services
from tenants.models import ApiKey, Tenant
from tenants.serializers import ApiKeyOutSerializer


class Command(BaseCommand):
    help = "Manage API keys of a tenant (or admin keys): list, create, revoke, rotate. A new key is shown once."

    def add_arguments(self, parser: CommandParser) -> None:
        owner = parser.add_mutually_exclusive_group(required=True)
        owner.add_argument("--tenant", help="the tenant's id")
        owner.add_argument("--admin", action="store_true", help="admin keys (they see every tenant)")
        actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        listing = actions.add_parser("list", help="keys with prefix, label, dates; never the key")
        listing.add_argument("--all", action="store_true", help="include revoked keys")
        console.add_json_flag(listing)
        create = actions.add_parser("create", help="a new key, printed once")
        create.add_argument("--label", default="")
        create.add_argument("--expires-days", type=int, help="the key stops working after this many days")
        console.add_json_flag(create)
        revoke = actions.add_parser("revoke", help="the key stops working at once")
        revoke.add_argument("prefix")
        rotate = actions.add_parser("rotate", help="revoke a key and print its replacement")
        rotate.add_argument("prefix")
        console.add_json_flag(rotate)

    def handle(self, *args: Any, **options: Any) -> None:
        self.owner: Tenant | None = None if options["admin"] else console.tenant_named(options["tenant"])
        getattr(self, f"do_{options['action']}")(options)

    def _keys(self) -> Any:
        return ApiKey.objects.filter(tenant=self.owner) if self.owner else ApiKey.objects.filter(tenant__isnull=True)

    def _key(self, prefix: str) -> ApiKey:
        key = self._keys().filter(prefix=prefix).first()
        if key is None:
            whose = f"tenant {self.owner.id!r}" if self.owner else "the admin"
            raise CommandError(f"key {prefix!r} not found for {whose}")
        return key

    def do_list(self, options: dict[str, Any]) -> None:
        keys = self._keys().order_by("created_at")
        if not options["all"]:
            keys = keys.filter(revoked_at__isnull=True)
        records = ApiKeyOutSerializer(keys, many=True).data
        console.emit(self, records, as_json=options["json"],
                     columns=["prefix", "label", "created", "expires", "last used", "revoked"],
                     rows=[[r["prefix"], r["label"], r["created_at"], r["expires_at"], r["last_used_at"],
                            r["revoked_at"]] for r in records])

    def _issued(self, issued: services.IssuedKey, options: dict[str, Any], note: str) -> None:
        record = {**ApiKeyOutSerializer(issued.key).data, "api_key": issued.raw}
        console.emit(self, record, as_json=options["json"],
                     lines=[note, f"API key (shown once, keep it now): {issued.raw}"])

    def do_create(self, options: dict[str, Any]) -> None:
        days = options["expires_days"]
        if days is not None and days <= 0:
            raise CommandError("--expires-days: must be a positive number of days")
        expires_at = timezone.now() + timedelta(days=days) if days else None
        issued = services.create_api_key(tenant=self.owner, label=options["label"], expires_at=expires_at)
        self._issued(issued, options, f"key {issued.key.prefix} created")

    def do_revoke(self, options: dict[str, Any]) -> None:
        key = services.revoke_api_key(key=self._key(options["prefix"]))
        self.stdout.write(f"key {key.prefix} revoked")

    def do_rotate(self, options: dict[str, Any]) -> None:
        key = self._key(options["prefix"])
        if key.revoked_at is not None:
            raise CommandError(f"key {key.prefix!r} is revoked; create a new one")
        issued = services.rotate_api_key(key=key)
        self._issued(issued, options, f"key {key.prefix} revoked, replaced by {issued.key.prefix}")
