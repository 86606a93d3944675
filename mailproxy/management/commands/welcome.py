"""Print how to reach a freshly started instance: its URL and the admin token."""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = "Print the URL and the admin token of this instance."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)

    def handle(self, *args: Any, **options: Any) -> None:
        host = "localhost" if options["host"] in ("0.0.0.0", "::", "") else options["host"]  # noqa: S104
        url = f"http://{host}:{options['port']}"
        self.stdout.write(f"mail-proxy is starting at {url}  (API docs: {url}/docs)")
        if os.environ.get("GMP_API_TOKEN") or os.environ.get("GMP_API_TOKEN_FILE"):
            # The operator chose it and has it; a log is no place for a secret of production.
            self.stdout.write("admin token: the one in GMP_API_TOKEN")
            return
        kept = settings.DATA_DIR / "api_token"
        self.stdout.write(f"admin token (generated, kept in {kept}): {settings.GMP_API_TOKEN}")
        self.stdout.write(f"try: curl -H \"X-API-Token: $(cat {kept})\" {url}/tenants")
