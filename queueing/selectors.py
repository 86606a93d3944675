"""Named reads of messages."""

from __future__ import annotations

from datetime import datetime

from django.db.models import F, QuerySet

from queueing.models import WAITING_STATUSES, Message, Status
from tenants.models import Tenant

RECORD_FIELDS = ("id", "tenant_id", "external_id", "status", "priority", "batch_code", "subject", "to",
                 "created_at", "deferred_until", "next_attempt_at", "attempts", "sent_at", "error_at",
                 "last_error", "smtp_code", "message_id")


def list_messages(
    *, tenant: Tenant | None, statuses: list[str] | None = None, batch_code: str | None = None,
    account_id: str | None = None, active_only: bool = False, since: datetime | None = None,
    before_pk: int | None = None, limit: int = 100,
) -> QuerySet[Message]:
    """Messages newest first; `tenant` None means every tenant (admin only)."""
    rows = Message.objects.all()
    if tenant is not None:
        rows = rows.filter(tenant=tenant)
    if statuses:
        rows = rows.filter(status__in=statuses)
    if active_only:
        rows = rows.filter(status__in=[*WAITING_STATUSES, Status.SENDING])
    if batch_code:
        rows = rows.filter(batch_code=batch_code)
    if account_id:
        rows = rows.filter(account__external_id=account_id)
    if since is not None:
        rows = rows.filter(created_at__gte=since)
    if before_pk is not None:
        rows = rows.filter(pk__lt=before_pk)
    return (
        rows.only(*RECORD_FIELDS).annotate(account_external_id=F("account__external_id")).order_by("-pk")[:limit]
    )


def get_message(*, tenant: Tenant, external_id: str) -> Message | None:
    return (
        Message.objects.filter(tenant=tenant, external_id=external_id)
        .only(*RECORD_FIELDS).annotate(account_external_id=F("account__external_id")).first()
    )
