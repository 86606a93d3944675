"""`manage.py messages --tenant T list|show|delete` (also `mail-proxy NAME T messages …`)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from mailproxy import console
from queueing import selectors, services
from queueing.models import MessageEvent, Status
from queueing.serializers import event_record, message_record


class Command(BaseCommand):
    help = "List, show and delete a tenant's messages."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", required=True, help="the tenant's id")
        actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        listing = actions.add_parser("list", help="newest first")
        listing.add_argument("--status", help=f"comma-separated: {', '.join(Status.values)}")
        listing.add_argument("--batch", help="only this batch_code")
        listing.add_argument("--account", help="only this account")
        listing.add_argument("--limit", type=int, default=50, help="at most this many (default 50, up to 1000)")
        console.add_json_flag(listing)
        show = actions.add_parser("show", help="one message with its events")
        show.add_argument("id")
        console.add_json_flag(show)
        delete = actions.add_parser("delete", help="cancel waiting messages, remove finished ones")
        delete.add_argument("ids", nargs="+", metavar="ID")
        console.add_json_flag(delete)

    def handle(self, *args: Any, **options: Any) -> None:
        self.tenant = console.tenant_named(options["tenant"])
        getattr(self, f"do_{options['action']}")(options)

    def do_list(self, options: dict[str, Any]) -> None:
        statuses = [s.strip() for s in (options["status"] or "").split(",") if s.strip()]
        unknown = [s for s in statuses if s not in Status.values]
        if unknown:
            raise CommandError(f"--status: {unknown[0]!r} is not one of {', '.join(Status.values)}")
        if not 1 <= options["limit"] <= 1000:
            raise CommandError("--limit: must be from 1 to 1000")
        rows = selectors.list_messages(tenant=self.tenant, statuses=statuses, batch_code=options["batch"],
                                       account_id=options["account"], limit=options["limit"])
        records = [message_record(row, getattr(row, "account_external_id", None)) for row in rows]
        console.emit(self, records, as_json=options["json"],
                     columns=["id", "status", "priority", "account", "to", "subject", "created", "attempts", "error"],
                     rows=[[r["id"], r["status"], r["priority_label"], r["account_id"], ", ".join(r["to"]),
                            _short(r["subject"]), r["created_at"][:19], r["attempts"], _short(r["error"] or "")]
                           for r in records])

    def do_show(self, options: dict[str, Any]) -> None:
        message = selectors.get_message(tenant=self.tenant, external_id=options["id"])
        if message is None:
            raise CommandError(f"message {options['id']!r} not found for tenant {self.tenant.id!r}")
        record = message_record(message, getattr(message, "account_external_id", None))
        record["events"] = [event_record(event) for event in MessageEvent.objects.filter(message=message)]
        lines = [f"{key}: {value}" for key, value in record.items() if key != "events"]
        lines += ["events:"] + [f"  {console.timestamp(e['ts'])}  {e['type']:<10} {e['details']}"
                                for e in record["events"]]
        console.emit(self, record, as_json=options["json"], lines=lines)

    def do_delete(self, options: dict[str, Any]) -> None:
        result = services.delete_messages(tenant=self.tenant, ids=options["ids"])
        record = {"removed": result.removed, "not_found": result.not_found, "in_flight": result.in_flight}
        lines = [f"removed {len(result.removed)}"]
        if result.in_flight:
            lines.append(f"being sent right now, not removed: {', '.join(result.in_flight)}")
        console.emit(self, record, as_json=options["json"], lines=lines)
        if result.not_found:
            raise CommandError(f"not found: {', '.join(result.not_found)}")


def _short(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
