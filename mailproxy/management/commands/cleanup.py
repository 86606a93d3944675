"""`manage.py cleanup`: the retention beat runs hourly, on demand."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from delivery import largefiles
from mailproxy import console
from queueing import services


class Command(BaseCommand):
    help = "Remove finished messages whose reports were all acknowledged, and expired offloaded files."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", help="only this tenant")
        parser.add_argument("--older-than", type=int, metavar="SECONDS",
                            help="age of the messages removed (default: the tenant's retention)")
        console.add_json_flag(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        if options["older_than"] is not None and options["older_than"] < 0:
            raise CommandError("--older-than: must be 0 or more seconds")
        tenant = console.tenant_named(options["tenant"]) if options["tenant"] else None
        removed = services.cleanup_messages(tenant=tenant, older_than_seconds=options["older_than"])
        files = largefiles.cleanup_expired()
        console.emit(self, {"messages_removed": removed, "files_removed": files}, as_json=options["json"],
                     lines=[f"{removed} messages and {files} expired files removed"])
