"""Message commands and listings, and the SMTP account endpoints.

Accounts live here rather than in `tenants` because removing one must deal with the
messages waiting on it, and `tenants` does not know about messages.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from mailproxy.params import query_bool, query_int, query_time
from mailproxy.schema import envelope, refusal
from queueing import selectors, services
from queueing.models import EventType, MessageEvent, Status
from queueing.serializers import (
    AddMessagesInSerializer,
    AddMessagesOutSerializer,
    CleanupInSerializer,
    DeleteMessagesInSerializer,
    SuspendInSerializer,
    event_record,
    message_record,
)
from queueing.validation import Invalid, parse_priority
from tenants import services as tenant_services
from tenants.auth import principal_of, resolve_tenant
from tenants.exceptions import NotFoundError, PayloadTooLargeError
from tenants.models import SmtpAccount, Tenant
from tenants.serializers import AccountInSerializer, AccountOutSerializer

TENANT_PARAM = OpenApiParameter("tenant_id", str, description="admin token: the tenant (default: 'default')")


# The records below only document what message_record and event_record build: the views call
# those functions directly, so listings of 1,000 rows stay cheap.
class MessageRecordSerializer(serializers.Serializer):
    """A message, as the listings show it."""

    id = serializers.CharField()
    pk = serializers.IntegerField()
    tenant_id = serializers.CharField()
    account_id = serializers.CharField(allow_null=True)
    status = serializers.ChoiceField(choices=Status.choices)
    priority = serializers.IntegerField()
    priority_label = serializers.CharField()
    batch_code = serializers.CharField(allow_null=True)
    subject = serializers.CharField()
    to = serializers.JSONField(help_text="the recipients, as stored")
    created_at = serializers.DateTimeField()
    deferred_ts = serializers.FloatField(allow_null=True)
    next_attempt_ts = serializers.FloatField()
    attempts = serializers.IntegerField()
    sent_ts = serializers.FloatField(allow_null=True)
    error_ts = serializers.FloatField(allow_null=True)
    error = serializers.CharField(allow_null=True)
    smtp_code = serializers.IntegerField(allow_null=True)
    message_id = serializers.CharField()


class MessageEventRecordSerializer(serializers.Serializer):
    """One event of a message's history."""

    event_id = serializers.IntegerField()
    type = serializers.ChoiceField(choices=EventType.choices)
    ts = serializers.FloatField()
    details = serializers.JSONField()
    reported_ts = serializers.FloatField(allow_null=True)


class MessageDetailRecordSerializer(MessageRecordSerializer):
    """A message with its events."""

    events = MessageEventRecordSerializer(many=True)


SUSPENSION_STATE = envelope(
    "SuspensionState", tenant_id=serializers.CharField(), suspended=serializers.BooleanField(),
    suspended_batches=serializers.ListField(child=serializers.CharField()), held=serializers.IntegerField(),
)


def tenant_from_query(request: Request) -> Tenant:
    return resolve_tenant(principal_of(request), request.query_params.get("tenant_id"))


def body_object(request: Request) -> dict[str, Any]:
    if not isinstance(request.data, dict):
        raise ValidationError({"request": "the body must be a JSON object"})
    return request.data


class AddMessagesView(APIView):
    @extend_schema(request=AddMessagesInSerializer, responses={
        200: AddMessagesOutSerializer,
        413: refusal("More messages than GMP_MAX_BATCH in one request, or a body over GMP_MAX_REQUEST_MB."),
    })
    def post(self, request: Request) -> Response:
        data = body_object(request)
        messages = data.get("messages")
        if not isinstance(messages, list):
            raise ValidationError({"messages": "must be a list of messages"})
        if len(messages) > settings.GMP_MAX_BATCH:
            raise PayloadTooLargeError(
                f"{len(messages)} messages in one request; the limit is {settings.GMP_MAX_BATCH}",
                details={"messages": len(messages), "limit": settings.GMP_MAX_BATCH},
            )
        default_priority = None
        if data.get("default_priority") is not None:
            try:
                default_priority = parse_priority(data["default_priority"], "default_priority")
            except Invalid as exc:
                raise ValidationError({exc.field: exc.reason}) from None
        unknown = sorted(set(data) - {"messages", "default_priority"})
        if unknown:
            raise ValidationError({unknown[0]: "is not a known field"})
        principal = principal_of(request)
        result = services.submit_messages(
            scope=principal.tenant, payloads=messages, default_priority=default_priority
        )
        return Response({
            "ok": result.queued > 0 or not result.rejected,
            "queued": result.queued,
            "rejected": [item.as_dict() for item in result.rejected],
            **({"suppressed": result.suppressed} if result.suppressed else {}),
        })


class MessageListView(APIView):
    @extend_schema(
        parameters=[
            TENANT_PARAM,
            OpenApiParameter("all", bool, description="admin: every tenant"),
            OpenApiParameter("status", str, description="comma-separated statuses"),
            OpenApiParameter("batch_code", str),
            OpenApiParameter("account_id", str),
            OpenApiParameter("active_only", bool),
            OpenApiParameter("since", float, description="created at or after (unix seconds)"),
            OpenApiParameter("limit", int, description="1-1000, default 100"),
            OpenApiParameter("cursor", str, description="next_cursor of the previous page"),
        ],
        operation_id="messages_list",
        responses=envelope("MessageList", messages=MessageRecordSerializer(many=True),
                           next_cursor=serializers.CharField(allow_null=True,
                                                             help_text="null on the last page")),
    )
    def get(self, request: Request) -> Response:
        principal = principal_of(request)
        every_tenant = principal.is_admin and query_bool(request, "all")
        tenant = None if every_tenant else tenant_from_query(request)
        statuses = [s for s in request.query_params.get("status", "").split(",") if s]
        unknown = [s for s in statuses if s not in Status.values]
        if unknown:
            raise ValidationError({"status": f"{unknown[0]!r} is not one of {', '.join(Status.values)}"})
        since = query_time(request, "since")
        limit = query_int(request, "limit", 100, minimum=1, maximum=1000) or 100
        cursor = query_int(request, "cursor", None, minimum=1)
        rows = list(selectors.list_messages(
            tenant=tenant, statuses=statuses, batch_code=request.query_params.get("batch_code"),
            account_id=request.query_params.get("account_id"), active_only=query_bool(request, "active_only"),
            since=since,
            before_pk=cursor, limit=limit,
        ))
        return Response({
            "ok": True,
            "messages": [message_record(row, getattr(row, "account_external_id", None)) for row in rows],
            "next_cursor": str(rows[-1].pk) if len(rows) == limit else None,
        })


class MessageDetailView(APIView):
    @extend_schema(parameters=[TENANT_PARAM],
                   responses=envelope("MessageDetail", message=MessageDetailRecordSerializer()))
    def get(self, request: Request, message_id: str) -> Response:
        tenant = tenant_from_query(request)
        message = selectors.get_message(tenant=tenant, external_id=message_id)
        if message is None:
            raise NotFoundError()
        record = message_record(message, getattr(message, "account_external_id", None))
        record["events"] = [event_record(event) for event in MessageEvent.objects.filter(message=message)]
        return Response({"ok": True, "message": record})


class DeleteMessagesView(APIView):
    @extend_schema(parameters=[TENANT_PARAM], request=DeleteMessagesInSerializer, responses=envelope(
        "MessagesDeleted", removed=serializers.IntegerField(),
        removed_ids=serializers.ListField(child=serializers.CharField()),
        not_found=serializers.ListField(child=serializers.CharField()),
        unauthorized=serializers.ListField(child=serializers.CharField(), help_text="always empty"),
        in_flight=serializers.ListField(child=serializers.CharField(), help_text="being sent now: kept"),
    ))
    def post(self, request: Request) -> Response:
        tenant = tenant_from_query(request)
        payload = DeleteMessagesInSerializer(data=body_object(request))
        payload.is_valid(raise_exception=True)
        result = services.delete_messages(tenant=tenant, ids=payload.validated_data["ids"])
        return Response({"ok": True, "removed": len(result.removed), "removed_ids": result.removed,
                         "not_found": result.not_found, "unauthorized": [], "in_flight": result.in_flight})


class CleanupMessagesView(APIView):
    @extend_schema(parameters=[TENANT_PARAM], request=CleanupInSerializer,
                   responses=envelope("MessagesCleanedUp", removed=serializers.IntegerField()))
    def post(self, request: Request) -> Response:
        principal = principal_of(request)
        tenant_id = request.query_params.get("tenant_id") or body_object(request).get("tenant_id")
        # The admin cleans every tenant unless it names one; a tenant only itself.
        tenant = None if principal.is_admin and not tenant_id else resolve_tenant(principal, tenant_id)
        payload = CleanupInSerializer(data={k: v for k, v in body_object(request).items() if k != "tenant_id"})
        payload.is_valid(raise_exception=True)
        removed = services.cleanup_messages(
            tenant=tenant, older_than_seconds=payload.validated_data.get("older_than_seconds")
        )
        return Response({"ok": True, "removed": removed})


class _SuspensionView(APIView):
    def _act(self, request: Request, *, suspend: bool) -> Response:
        payload = SuspendInSerializer(data=body_object(request))
        payload.is_valid(raise_exception=True)
        tenant = resolve_tenant(principal_of(request), payload.validated_data.get("tenant_id"))
        action = services.suspend_sending if suspend else services.activate_sending
        state = action(tenant=tenant, batch_code=payload.validated_data.get("batch_code"))
        return Response({"ok": True, "tenant_id": state.tenant_id, "suspended": state.suspended,
                         "suspended_batches": state.suspended_batches, "held": state.held})


class SuspendView(_SuspensionView):
    @extend_schema(request=SuspendInSerializer, responses=SUSPENSION_STATE)
    def post(self, request: Request) -> Response:
        return self._act(request, suspend=True)


class ActivateView(_SuspensionView):
    @extend_schema(request=SuspendInSerializer, responses={
        200: SUSPENSION_STATE,
        409: refusal("A batch cannot be activated while its tenant is suspended as a whole."),
    })
    def post(self, request: Request) -> Response:
        return self._act(request, suspend=False)


def _account(request: Request, account_id: str) -> SmtpAccount:
    tenant = tenant_from_query(request)
    account = SmtpAccount.objects.filter(tenant=tenant, external_id=account_id).first()
    if account is None:
        raise NotFoundError()
    return account


class AccountSaveView(APIView):
    @extend_schema(request=AccountInSerializer, responses=envelope(
        "AccountSaved", created=serializers.BooleanField(), account=AccountOutSerializer()))
    def post(self, request: Request) -> Response:
        payload = AccountInSerializer(data=body_object(request))
        payload.is_valid(raise_exception=True)
        data = dict(payload.validated_data)
        tenant = resolve_tenant(principal_of(request), data.pop("tenant_id", None), create_default=True)
        saved = tenant_services.save_account(tenant=tenant, data=data)
        return Response({"ok": True, "created": saved.created, "account": AccountOutSerializer(saved.account).data})


class AccountListView(APIView):
    @extend_schema(parameters=[TENANT_PARAM],
                   responses=envelope("AccountList", accounts=AccountOutSerializer(many=True)))
    def get(self, request: Request) -> Response:
        principal = principal_of(request)
        tenant_id = request.query_params.get("tenant_id")
        accounts = SmtpAccount.objects.all()
        if not principal.is_admin or tenant_id:
            accounts = accounts.filter(tenant=resolve_tenant(principal, tenant_id))
        return Response({"ok": True, "accounts": AccountOutSerializer(accounts, many=True).data})


class AccountDetailView(APIView):
    @extend_schema(parameters=[TENANT_PARAM], responses=envelope("AccountDetail", account=AccountOutSerializer()))
    def get(self, request: Request, account_id: str) -> Response:
        return Response({"ok": True, "account": AccountOutSerializer(_account(request, account_id)).data})

    @extend_schema(parameters=[TENANT_PARAM, OpenApiParameter("force", bool)], responses={
        200: envelope("AccountDeleted", failed_messages=serializers.IntegerField(
            help_text="waiting messages failed by force=true")),
        409: refusal("Messages wait on the account; force=true fails them and deletes it."),
    })
    def delete(self, request: Request, account_id: str) -> Response:
        account = _account(request, account_id)
        failed = services.delete_account(account=account, force=query_bool(request, "force"))
        return Response({"ok": True, "failed_messages": failed})


class RunNowView(APIView):
    @extend_schema(request=None, responses=envelope(
        "RunNowResult", accounts_rung=serializers.IntegerField(), reports_resent=serializers.IntegerField()))
    def post(self, request: Request) -> Response:
        """Wake dispatch and reporting now: the admin for every tenant, a tenant for itself."""
        principal = principal_of(request)
        done = services.run_now(tenant_id=None if principal.tenant is None else principal.tenant.id)
        return Response({"ok": True, "accounts_rung": done.accounts_rung, "reports_resent": done.reports_resent})
