"""Admin console: messages (read-only, with their events), suppressions."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.core.paginator import Paginator
from django.db import connection
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.functional import cached_property

from queueing import services
from queueing.models import WAITING_STATUSES, Message, MessageEvent, Status, Suppression
from tenants.models import Tenant


class EstimatedCountPaginator(Paginator):
    """A changelist of a million rows must not COUNT(*) them.

    On PostgreSQL a large result is counted by the planner's estimate (the table's
    statistics unfiltered, EXPLAIN's row estimate when filtered); only a result estimated
    small is counted exactly. The page shows "about N" either way of magnitude.
    """

    EXACT_BELOW = 10000

    @cached_property
    def count(self) -> int:  # type: ignore[override]
        query = getattr(self.object_list, "query", None)
        if connection.vendor == "postgresql" and query is not None:
            estimate = self._estimate(query)
            if estimate is not None and estimate > self.EXACT_BELOW:
                return estimate
        return super().count

    def _estimate(self, query: Any) -> int | None:
        with connection.cursor() as cursor:
            if not query.where:
                cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE relname = %s", [Message._meta.db_table])
                row = cursor.fetchone()
                return int(row[0]) if row and row[0] is not None else None
            sql, params = query.sql_with_params()
            cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
            row = cursor.fetchone()
        plan = json.loads(row[0]) if isinstance(row[0], str) else row[0]
        return int(plan[0]["Plan"]["Plan Rows"])


class BatchCodeFilter(admin.SimpleListFilter):
    """Batches of the latest messages: listing every distinct code would read the whole table.

    Any batch can still be filtered by URL (`?batch_code=…`).
    """

    title = "batch code"
    parameter_name = "batch_code"
    RECENT = 5000

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        recent = Message.objects.order_by("-pk").values("pk")[: self.RECENT]
        codes = (Message.objects.filter(pk__in=recent).exclude(batch_code="").order_by("batch_code")
                 .values_list("batch_code", flat=True).distinct()[:100])
        return [(code, code) for code in codes]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Message]) -> QuerySet[Message]:
        value = self.value()
        return queryset.filter(batch_code=value) if value else queryset


class MessageEventInline(admin.TabularInline):
    model = MessageEvent
    fields = ("event_type", "occurred_at", "details", "reported_at", "undelivered_at")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ("external_id", "tenant", "account", "status", "priority", "subject", "created_at",
                    "attempts", "sent_at")
    list_filter = ("status", "priority", "tenant", "account", BatchCodeFilter, "created_at")
    search_fields = ("=external_id", "subject", "to")
    list_select_related = ("account", "tenant")
    show_full_result_count = False
    paginator = EstimatedCountPaginator
    inlines = (MessageEventInline,)
    actions = ("retry_now", "cancel", "resend_reports")

    def get_readonly_fields(self, request: HttpRequest, obj: Message | None = None) -> Any:
        # A message given whole shows its size here, not megabytes of base64.
        return [field.name for field in Message._meta.fields if field.name != "raw_eml"] + ["eml"]

    def get_exclude(self, request: HttpRequest, obj: Message | None = None) -> Any:
        return ("raw_eml",)

    @admin.display(description="eml")
    def eml(self, message: Message) -> str:
        if not message.raw_eml:
            return "-"
        return f"given whole: {len(message.raw_eml) * 3 // 4:,} bytes (sent as given)"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # messages come in through the API

    @admin.action(description="Retry now (waiting messages)")
    def retry_now(self, request: HttpRequest, queryset: QuerySet[Message]) -> None:
        count = queryset.filter(status__in=[Status.QUEUED, Status.DEFERRED]).update(next_attempt_at=timezone.now())
        self.message_user(request, f"{count} message(s) will be tried at the next sweep.")

    @admin.action(description="Cancel (waiting messages)")
    def cancel(self, request: HttpRequest, queryset: QuerySet[Message]) -> None:
        total = 0
        for tenant_id in set(queryset.values_list("tenant_id", flat=True)):
            ids = list(queryset.filter(tenant_id=tenant_id, status__in=WAITING_STATUSES)
                       .values_list("external_id", flat=True))
            if ids:
                total += len(services.delete_messages(tenant=Tenant.objects.get(pk=tenant_id), ids=ids).removed)
        self.message_user(request, f"{total} message(s) cancelled.")

    @admin.action(description="Send their delivery reports again")
    def resend_reports(self, request: HttpRequest, queryset: QuerySet[Message]) -> None:
        count = MessageEvent.objects.filter(message__in=queryset).update(reported_at=None, undelivered_at=None)
        self.message_user(request, f"{count} event(s) will be reported again.")


@admin.register(Suppression)
class SuppressionAdmin(admin.ModelAdmin):
    list_display = ("address", "tenant", "reason", "source", "created_at", "expires_at")
    list_filter = ("tenant", "source")
    search_fields = ("address", "reason")
