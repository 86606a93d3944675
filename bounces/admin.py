"""Admin console: bounces and mailbox cursors."""

from __future__ import annotations

from django.contrib import admin

from bounces.models import Bounce, MailboxCursor


@admin.register(Bounce)
class BounceAdmin(admin.ModelAdmin):
    list_display = ("recipient", "tenant", "kind", "status", "smtp_code", "message", "received_at")
    list_filter = ("kind", "tenant")
    list_select_related = ("tenant", "message")  # the message may be gone: a nullable key
    show_full_result_count = False
    search_fields = ("recipient", "diagnostic")
    readonly_fields = ("tenant", "message", "recipient", "status", "smtp_code", "kind", "diagnostic", "dedupe_key",
                       "received_at", "raw_text")
    exclude = ("raw",)

    @admin.display(description="raw report")
    def raw_text(self, bounce: Bounce) -> str:
        return bytes(bounce.raw).decode("utf-8", "replace")


@admin.register(MailboxCursor)
class MailboxCursorAdmin(admin.ModelAdmin):
    list_display = ("key", "uidvalidity", "last_uid", "last_polled_at", "last_error")
    readonly_fields = ("key", "uidvalidity", "last_uid", "last_polled_at", "last_error", "lease_until")
