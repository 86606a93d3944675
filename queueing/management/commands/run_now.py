"""`manage.py run_now [--tenant T]`: wake dispatch and delivery reports now."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from mailproxy import console
from queueing import services


class Command(BaseCommand):
    help = "Send what is due and post delivery reports now (one tenant, or all)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", help="only this tenant (also clears its Do Not Disturb)")
        console.add_json_flag(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        tenant_id = console.tenant_named(options["tenant"]).id if options["tenant"] else None
        done = services.run_now(tenant_id=tenant_id)
        console.emit(self, {"accounts_rung": done.accounts_rung, "reports_resent": done.reports_resent},
                     as_json=options["json"],
                     lines=[f"{done.accounts_rung} accounts woken, {done.reports_resent} reports put back to send"])
