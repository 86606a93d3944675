"""The tenant's suppression list (SPEC §12.3)."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from delivery.mime import addr_spec
from mailproxy.schema import envelope
from queueing.models import Suppression, SuppressionSource
from queueing.validation import Invalid, one_address
from tenants.auth import principal_of, resolve_tenant
from tenants.exceptions import NotFoundError

TENANT_PARAM = OpenApiParameter("tenant_id", str, description="admin token: the tenant (default: 'default')")


class SuppressionInSerializer(serializers.Serializer):
    tenant_id = serializers.CharField(required=False)
    address = serializers.CharField(max_length=320)
    reason = serializers.CharField(max_length=500, required=False, default="added through the API")

    def validate_address(self, value: str) -> str:
        try:
            return addr_spec(one_address("address", value)).lower()
        except Invalid as exc:
            raise serializers.ValidationError(exc.reason.removeprefix("address: ")) from None


class SuppressionRecordSerializer(serializers.Serializer):
    """An address on the tenant's suppression list (documents `_record`)."""

    address = serializers.CharField()
    reason = serializers.CharField()
    source = serializers.ChoiceField(choices=SuppressionSource.choices)  # type: ignore[assignment]
    created_at = serializers.DateTimeField()
    expires_ts = serializers.FloatField(allow_null=True, help_text="unix seconds; null: never expires")


SUPPRESSION_SAVED = envelope("SuppressionSaved", created=serializers.BooleanField(),
                             suppression=SuppressionRecordSerializer())


def _record(entry: Suppression) -> dict[str, object]:
    return {"address": entry.address, "reason": entry.reason, "source": entry.source,
            "created_at": entry.created_at.isoformat(),
            "expires_ts": entry.expires_at.timestamp() if entry.expires_at else None}


class SuppressionListView(APIView):
    @extend_schema(parameters=[TENANT_PARAM],
                   responses=envelope("SuppressionList", suppressions=SuppressionRecordSerializer(many=True)))
    def get(self, request: Request) -> Response:
        tenant = resolve_tenant(principal_of(request), request.query_params.get("tenant_id"))
        entries = Suppression.objects.filter(tenant=tenant).exclude(expires_at__lte=timezone.now())
        return Response({"ok": True, "suppressions": [_record(entry) for entry in entries]})

    @extend_schema(request=SuppressionInSerializer, responses={200: SUPPRESSION_SAVED, 201: SUPPRESSION_SAVED})
    def post(self, request: Request) -> Response:
        payload = SuppressionInSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        tenant = resolve_tenant(principal_of(request), data.get("tenant_id"), create_default=True)
        days = settings.GMP_SUPPRESSION_DAYS
        entry, created = Suppression.objects.update_or_create(
            tenant=tenant, address=data["address"],
            defaults={"reason": data["reason"], "source": SuppressionSource.API,
                      "expires_at": timezone.now() + timedelta(days=days) if days else None},
        )
        return Response({"ok": True, "created": created, "suppression": _record(entry)}, status=201 if created else 200)


class SuppressionDetailView(APIView):
    @extend_schema(parameters=[TENANT_PARAM], responses={
        200: envelope("SuppressionDeleted", deleted=serializers.CharField(help_text="the address, lower-cased")),
    })
    def delete(self, request: Request, address: str) -> Response:
        tenant = resolve_tenant(principal_of(request), request.query_params.get("tenant_id"))
        deleted, _ = Suppression.objects.filter(tenant=tenant, address=address.lower()).delete()
        if not deleted:
            raise NotFoundError()
        return Response({"ok": True, "deleted": address.lower()})
