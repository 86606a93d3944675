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
        url = f"http://{options['host']}:{options['port']}"
        token = settings.GMP_API_TOKEN
        kept = settings.DATA_DIR / "api_token"
        source = "from GMP_API_TOKEN" if os.environ.get("GMP_API_TOKEN") else f"kept in {kept}"
        self.stdout.write(f"mail-proxy is starting at {url}  (API docs: {url}/docs)")
        self.stdout.write(f"admin token ({source}): {token}")
        self.stdout.write(
            f"try: curl -H 'X-API-Token: {token}' {url}/tenants"
        )
