"""`manage.py send_eml --tenant T FILE.eml` (also `mail-proxy NAME T send FILE.eml`).

The file is queued as given (headers and every MIME part, attachments included): the
proxy only sets its own headers (Message-ID kept if the file has one) and takes Bcc out.
"""

from __future__ import annotations

import base64
import hashlib
import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from mailproxy import console
from queueing import services


class Command(BaseCommand):
    help = "Queue a raw RFC 5322 message (.eml) for a tenant."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", required=True, help="the tenant's id")
        parser.add_argument("file", help="the .eml file, or - for standard input")
        parser.add_argument("--account", help="SMTP account (default: the tenant's default account)")
        parser.add_argument("--priority", help="0-3 or immediate, high, medium, low")
        parser.add_argument("--id", dest="message_id", help="the message's id (default: derived from the file)")
        parser.add_argument("--to", action="append", help="send to these recipients instead of the file's")
        parser.add_argument("--batch", help="batch_code")
        console.add_json_flag(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        tenant = console.tenant_named(options["tenant"])
        data = self._read(options["file"])
        payload: dict[str, Any] = {
            "id": options["message_id"] or f"eml-{hashlib.sha256(data).hexdigest()[:24]}",
            "eml": base64.b64encode(data).decode("ascii"),
        }
        for key, option in (("account_id", "account"), ("priority", "priority"), ("batch_code", "batch")):
            if options[option] is not None:
                payload[key] = options[option]
        if options["to"]:
            payload["to"] = options["to"]
        result = services.submit_messages(scope=tenant, payloads=[payload])
        if result.rejected and not result.queued:
            rejection = result.rejected[0]
            hint = " (give another --id to send it again)" if rejection.field == "id" else ""
            raise CommandError(f"{payload['id']}: {rejection.reason}{hint}")
        record = {"id": payload["id"], "queued": result.queued, "suppressed": result.suppressed}
        lines = [f"queued {payload['id']} for tenant {tenant.id}"]
        lines += [f"left out (suppressed): {item}" for item in result.suppressed]
        console.emit(self, record, as_json=options["json"], lines=lines)

    def _read(self, name: str) -> bytes:
        if name == "-":
            return sys.stdin.buffer.read()
        path = Path(name)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise CommandError(f"{name}: no such file") from None
        except IsADirectoryError:
            raise CommandError(f"{name}: is a folder, not a file") from None
        except OSError as exc:
            raise CommandError(f"{name}: {exc.strerror}") from None
