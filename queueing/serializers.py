"""Shapes of the message endpoints.

The add-messages request is validated by `queueing.validation` (speed, and reasons that
name the offending value); `MessageInSerializer` documents the same shape for OpenAPI.
Records are built by `message_record`, a plain function: listings of 1,000 rows stay cheap.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rest_framework import serializers

from queueing.models import Message, MessageEvent, Priority


class AttachmentInSerializer(serializers.Serializer):
    filename = serializers.CharField(max_length=255)
    storage_path = serializers.CharField()
    fetch_mode = serializers.ChoiceField(choices=["base64", "filesystem", "http_url", "endpoint"], required=False)
    mime_type = serializers.CharField(required=False)
    content_md5 = serializers.CharField(required=False)
    auth = serializers.DictField(required=False)


class MessageInSerializer(serializers.Serializer):
    id = serializers.CharField(max_length=200)
    tenant_id = serializers.CharField(required=False, help_text="admin token: required unless 'default'")
    account_id = serializers.CharField(required=False)
    from_ = serializers.CharField(label="from")
    to = serializers.JSONField(help_text="a list of addresses or a comma-separated string")
    cc = serializers.JSONField(required=False)
    bcc = serializers.JSONField(required=False)
    reply_to = serializers.CharField(required=False)
    return_path = serializers.CharField(required=False)
    subject = serializers.CharField()
    body = serializers.CharField(required=False)
    content_type = serializers.ChoiceField(choices=["plain", "html"], required=False)
    body_text = serializers.CharField(required=False)
    body_html = serializers.CharField(required=False)
    headers = serializers.DictField(child=serializers.CharField(), required=False)
    message_id = serializers.CharField(required=False)
    priority = serializers.JSONField(required=False, help_text="0-3 or immediate/high/medium/low")
    deferred_ts = serializers.FloatField(required=False)
    expires_ts = serializers.FloatField(required=False)
    batch_code = serializers.CharField(required=False)
    attachments = AttachmentInSerializer(many=True, required=False)

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        fields["from"] = fields.pop("from_")
        return fields


class AddMessagesInSerializer(serializers.Serializer):
    messages = MessageInSerializer(many=True)
    default_priority = serializers.JSONField(required=False, help_text="0-3 or a priority label")


class RejectedSerializer(serializers.Serializer):
    id = serializers.CharField(allow_null=True)
    index = serializers.IntegerField()
    field = serializers.CharField()
    reason = serializers.CharField()


class AddMessagesOutSerializer(serializers.Serializer):
    ok = serializers.BooleanField()
    queued = serializers.IntegerField()
    rejected = RejectedSerializer(many=True)


class DeleteMessagesInSerializer(serializers.Serializer):
    ids = serializers.ListField(child=serializers.CharField(max_length=200), allow_empty=False, max_length=10000)


class CleanupInSerializer(serializers.Serializer):
    older_than_seconds = serializers.IntegerField(min_value=0, required=False)


class SuspendInSerializer(serializers.Serializer):
    tenant_id = serializers.CharField(required=False)
    batch_code = serializers.CharField(required=False, max_length=200)


def _ts(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def message_record(message: Message, account_external_id: str | None) -> dict[str, Any]:
    return {
        "id": message.external_id,
        "pk": message.pk,
        "tenant_id": message.tenant_id,
        "account_id": account_external_id,
        "status": message.status,
        "priority": message.priority,
        "priority_label": Priority(message.priority).label,
        "batch_code": message.batch_code or None,
        "subject": message.subject,
        "to": message.to,
        "created_at": message.created_at.isoformat(),
        "deferred_ts": _ts(message.deferred_until),
        "next_attempt_ts": _ts(message.next_attempt_at),
        "attempts": message.attempts,
        "sent_ts": _ts(message.sent_at),
        "error_ts": _ts(message.error_at),
        "error": message.last_error or None,
        "smtp_code": message.smtp_code,
        "message_id": message.message_id,
    }


def event_record(event: MessageEvent) -> dict[str, Any]:
    return {
        "event_id": event.pk,
        "type": event.event_type,
        "ts": event.occurred_at.timestamp(),
        "details": event.details,
        "reported_ts": _ts(event.reported_at),
    }
