"""Tenant and API-key endpoints."""

from __future__ import annotations

from datetime import UTC, datetime

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from mailproxy.params import query_bool
from mailproxy.schema import envelope, refusal
from tenants import services
from tenants.auth import principal_of, resolve_tenant
from tenants.exceptions import ForbiddenError, NotFoundError
from tenants.models import ApiKey, Tenant
from tenants.permissions import IsAdmin
from tenants.serializers import ApiKeyInSerializer, ApiKeyOutSerializer, TenantInSerializer, TenantOutSerializer


# Only the documentation of _key_answer's envelope; the views build the answer themselves.
class IssuedKeySerializer(ApiKeyOutSerializer):
    """A new API key: its record and, this once, the key itself."""

    ok = serializers.BooleanField()
    api_key = serializers.CharField(help_text="the key itself: shown only in this answer")

    class Meta(ApiKeyOutSerializer.Meta):
        fields = ["ok", *ApiKeyOutSerializer.Meta.fields, "api_key"]


class RotatedKeySerializer(IssuedKeySerializer):
    """The key that replaces a rotated one, which is revoked."""

    revoked = serializers.CharField(help_text="the prefix of the key this one replaces")

    class Meta(IssuedKeySerializer.Meta):
        fields = [*IssuedKeySerializer.Meta.fields, "revoked"]


TENANT_SAVED = envelope(
    "TenantSaved", created=serializers.BooleanField(), tenant=TenantOutSerializer(),
    api_key=serializers.CharField(required=False, help_text="a new tenant's first key: shown only in this answer"),
    api_key_prefix=serializers.CharField(required=False),
)
TENANT_DETAIL = envelope("TenantDetail", tenant=TenantOutSerializer())


def _tenant(request: Request, tenant_id: str) -> Tenant:
    """The tenant in the path, if the caller may see it (else 404, as for a missing one)."""
    return resolve_tenant(principal_of(request), tenant_id)


def _key_answer(issued: services.IssuedKey) -> dict[str, object]:
    return {**ApiKeyOutSerializer(issued.key).data, "api_key": issued.raw}


class TenantSaveView(APIView):
    permission_classes = [IsAdmin]

    @extend_schema(request=TenantInSerializer, responses={200: TENANT_SAVED, 201: TENANT_SAVED})
    def post(self, request: Request) -> Response:
        payload = TenantInSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        saved = services.save_tenant(data=dict(payload.validated_data))
        answer: dict[str, object] = {"ok": True, "created": saved.created,
                                     "tenant": TenantOutSerializer(saved.tenant).data}
        if saved.first_key is not None:
            answer["api_key"] = saved.first_key.raw
            answer["api_key_prefix"] = saved.first_key.key.prefix
        return Response(answer, status=201 if saved.created else 200)


class TenantListView(APIView):
    permission_classes = [IsAdmin]

    @extend_schema(parameters=[OpenApiParameter("active_only", bool)],
                   responses=envelope("TenantList", tenants=TenantOutSerializer(many=True)))
    def get(self, request: Request) -> Response:
        tenants = Tenant.objects.prefetch_related("suspended_batches")
        if query_bool(request, "active_only"):
            tenants = tenants.filter(active=True)
        return Response({"ok": True, "tenants": TenantOutSerializer(tenants, many=True).data})


class TenantDetailView(APIView):
    @extend_schema(responses=TENANT_DETAIL)
    def get(self, request: Request, tenant_id: str) -> Response:
        return Response({"ok": True, "tenant": TenantOutSerializer(_tenant(request, tenant_id)).data})

    @extend_schema(request=TenantInSerializer, responses={
        200: TENANT_DETAIL, 403: refusal("Only the admin can change 'active'."),
    })
    def put(self, request: Request, tenant_id: str) -> Response:
        tenant = _tenant(request, tenant_id)
        if not isinstance(request.data, dict):
            raise ValidationError({"request": "the body must be a JSON object"})
        if "id" in request.data and request.data["id"] != tenant.id:
            raise ValidationError({"id": "a tenant's id cannot be changed"})
        if "active" in request.data and not principal_of(request).is_admin:
            raise ForbiddenError("only the admin can change 'active'", details={"active": "admin only"})
        payload = TenantInSerializer(data={**request.data, "id": tenant.id}, partial=True)
        payload.is_valid(raise_exception=True)
        data = dict(payload.validated_data)
        data.pop("id", None)
        tenant = services.update_tenant(tenant=tenant, data=data)
        return Response({"ok": True, "tenant": TenantOutSerializer(tenant).data})

    @extend_schema(responses={
        200: envelope("TenantDeleted", deleted=serializers.CharField(help_text="the tenant's id")),
        403: refusal("This endpoint needs the admin token."),
    })
    def delete(self, request: Request, tenant_id: str) -> Response:
        tenant = _tenant(request, tenant_id)
        if not principal_of(request).is_admin:
            raise ForbiddenError("this endpoint needs the admin token")
        services.delete_tenant(tenant=tenant)
        return Response({"ok": True, "deleted": tenant_id})


class ApiKeyListView(APIView):
    @extend_schema(responses=envelope("ApiKeyList", api_keys=ApiKeyOutSerializer(many=True)))
    def get(self, request: Request, tenant_id: str) -> Response:
        keys = ApiKey.objects.filter(tenant=_tenant(request, tenant_id))
        return Response({"ok": True, "api_keys": ApiKeyOutSerializer(keys, many=True).data})

    @extend_schema(request=ApiKeyInSerializer, responses={201: IssuedKeySerializer})
    def post(self, request: Request, tenant_id: str) -> Response:
        tenant = _tenant(request, tenant_id)
        payload = ApiKeyInSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        expires_ts = payload.validated_data.get("expires_ts")
        expires_at = None
        if expires_ts is not None:
            try:
                expires_at = datetime.fromtimestamp(expires_ts, tz=UTC)
            except (OverflowError, OSError, ValueError):
                raise ValidationError({"expires_ts": "is out of range"}) from None
            if expires_at <= datetime.now(tz=UTC):
                raise ValidationError({"expires_ts": "is already in the past"})
        issued = services.create_api_key(tenant=tenant, label=payload.validated_data.get("label", ""),
                                         expires_at=expires_at)
        return Response({"ok": True, **_key_answer(issued)}, status=201)


def _key(request: Request, tenant_id: str, prefix: str) -> ApiKey:
    key = ApiKey.objects.filter(tenant=_tenant(request, tenant_id), prefix=prefix).first()
    if key is None:
        raise NotFoundError()
    return key


class ApiKeyDetailView(APIView):
    @extend_schema(responses={200: envelope("ApiKeyRevoked", api_key=ApiKeyOutSerializer())})
    def delete(self, request: Request, tenant_id: str, prefix: str) -> Response:
        key = services.revoke_api_key(key=_key(request, tenant_id, prefix))
        return Response({"ok": True, "api_key": ApiKeyOutSerializer(key).data})


class ApiKeyRotateView(APIView):
    @extend_schema(request=None, responses={201: RotatedKeySerializer})
    def post(self, request: Request, tenant_id: str, prefix: str) -> Response:
        key = _key(request, tenant_id, prefix)
        if key.revoked_at is not None:
            raise NotFoundError("this key is revoked; create a new one")
        issued = services.rotate_api_key(key=key)
        return Response({"ok": True, "revoked": prefix, **_key_answer(issued)}, status=201)
