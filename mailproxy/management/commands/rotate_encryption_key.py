"""Re-encrypt every stored secret with the current MAIL_PROXY_ENCRYPTION_KEY.

Rotation: set the new key as MAIL_PROXY_ENCRYPTION_KEY, put the old one in
MAIL_PROXY_ENCRYPTION_OLD_KEYS, run this, then drop the old key. Each row is rewritten
in its own short transaction under a row lock, so the command can run while the
proxy works and can be run again after an interruption.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import models, transaction

from queueing.models import WAITING_STATUSES, Message, Status
from tenants import crypto
from tenants.models import SmtpAccount, Tenant

SEALED_FIELDS: dict[type[models.Model], tuple[str, ...]] = {
    Tenant: ("client_auth_secret_encrypted", "signing_secret_encrypted", "bounce_imap_password_encrypted"),
    SmtpAccount: ("password_encrypted", "imap_password_encrypted"),
}


class Command(BaseCommand):
    help = "Re-encrypt every stored secret with the current key (old keys from MAIL_PROXY_ENCRYPTION_OLD_KEYS)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="count what would be re-encrypted")

    def handle(self, *args: Any, **options: Any) -> None:
        rewritten = 0
        for model, fields in SEALED_FIELDS.items():
            rows = model._default_manager
            for pk in rows.values_list("pk", flat=True).order_by("pk").iterator():
                with transaction.atomic():
                    row = rows.select_for_update().filter(pk=pk).first()
                    if row is None:
                        continue
                    stale = [name for name in fields if crypto.needs_reencryption(getattr(row, name))]
                    if not stale:
                        continue
                    rewritten += len(stale)
                    if options["dry_run"]:
                        continue
                    for name in stale:
                        try:
                            setattr(row, name, crypto.encrypt(crypto.decrypt(getattr(row, name))))
                        except crypto.DecryptionError as exc:
                            raise CommandError(f"{model.__name__} {pk} {name}: {exc}") from None
                    row.save(update_fields=stale)
        rewritten += self._attachment_credentials(dry_run=options["dry_run"])
        verb = "would be re-encrypted" if options["dry_run"] else "re-encrypted"
        self.stdout.write(f"{rewritten} secrets {verb} with key {crypto.current_key_id()}")

    def _attachment_credentials(self, *, dry_run: bool) -> int:
        """Per-attachment `auth` of messages still waiting (final ones will not fetch again)."""
        rewritten = 0
        waiting = Message.objects.filter(status__in=[*WAITING_STATUSES, Status.SENDING]).exclude(attachments=[])
        for pk in waiting.values_list("pk", flat=True).order_by("pk").iterator():
            with transaction.atomic():
                message = Message.objects.select_for_update().filter(pk=pk).only("attachments").first()
                if message is None:
                    continue
                stale = [item for item in message.attachments if isinstance(item.get("auth"), dict)
                         and isinstance(item["auth"].get("sealed"), str)
                         and crypto.needs_reencryption(item["auth"]["sealed"])]
                if not stale:
                    continue
                rewritten += len(stale)
                if dry_run:
                    continue
                for item in stale:
                    try:
                        item["auth"]["sealed"] = crypto.encrypt(crypto.decrypt(item["auth"]["sealed"]))
                    except crypto.DecryptionError as exc:
                        raise CommandError(f"Message {pk} attachment auth: {exc}") from None
                message.save(update_fields=["attachments"])
        return rewritten
