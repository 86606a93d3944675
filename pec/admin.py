"""Admin console: PEC receipts with their raw message."""

from __future__ import annotations

from django.contrib import admin

from pec.models import PecReceiptRecord


@admin.register(PecReceiptRecord)
class PecReceiptAdmin(admin.ModelAdmin):
    list_display = ("receipt_type", "event_type", "tenant", "message", "recipient", "pec_ts", "received_at")
    list_filter = ("event_type", "tenant")
    list_select_related = ("tenant", "message")  # the message may be gone: a nullable key
    show_full_result_count = False
    search_fields = ("recipient", "identificativo")
    readonly_fields = ("tenant", "message", "account", "receipt_type", "event_type", "recipient", "pec_ts", "error",
                       "identificativo", "dedupe_key", "received_at", "raw_text")
    exclude = ("raw",)

    @admin.display(description="raw receipt")
    def raw_text(self, receipt: PecReceiptRecord) -> str:
        return bytes(receipt.raw).decode("utf-8", "replace")
