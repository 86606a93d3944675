"""Admin console: messages (read-only, with their events), suppressions."""

from __future__ import annotations

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
    """A changelist of a million rows must not COUNT(*) them: use PostgreSQL's estimate when unfiltered."""

    @cached_property
    def count(self) -> int:  # type: ignore[override]
        query = getattr(self.object_list, "query", None)
        if connection.vendor == "postgresql" and query is not None and not query.where:
            with connection.cursor() as cursor:
                cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE relname = %s",
                               [Message._meta.db_table])
                row = cursor.fetchone()
            if row and row[0] > 10000:
                return int(row[0])
        return super().count


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
    list_filter = ("status", "priority", "tenant", "account", "batch_code", "created_at")
    search_fields = ("=external_id", "subject", "to")
    list_select_related = ("account",)
    show_full_result_count = False
    paginator = EstimatedCountPaginator
    inlines = (MessageEventInline,)
    actions = ("retry_now", "cancel", "resend_reports")

    def get_readonly_fields(self, request: HttpRequest, obj: Message | None = None) -> Any:
        return [field.name for field in Message._meta.fields]

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
