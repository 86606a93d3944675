"""Raw PEC receipts, downloadable as legal evidence."""

from __future__ import annotations

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from mailproxy.schema import envelope
from pec.models import PecReceiptRecord
from queueing.models import Message
from tenants.auth import principal_of, resolve_tenant
from tenants.exceptions import NotFoundError

TENANT_PARAM = OpenApiParameter("tenant_id", str, description="admin token: the tenant (default: 'default')")


class ReceiptRecordSerializer(serializers.Serializer):
    """One PEC receipt of a message."""

    n = serializers.IntegerField(help_text="the receipt's number, for /receipts/{n}")
    receipt_type = serializers.CharField()
    event = serializers.CharField()
    recipient = serializers.CharField(allow_null=True)
    pec_ts = serializers.FloatField(allow_null=True, help_text="the provider's certified time (unix seconds)")
    error = serializers.CharField(allow_null=True)


def _message(request: Request, message_id: str) -> Message:
    tenant = resolve_tenant(principal_of(request), request.query_params.get("tenant_id"))
    message = Message.objects.filter(tenant=tenant, external_id=message_id).first()
    if message is None:
        raise NotFoundError()
    return message


class ReceiptListView(APIView):
    @extend_schema(parameters=[TENANT_PARAM],
                   responses=envelope("ReceiptList", receipts=ReceiptRecordSerializer(many=True)))
    def get(self, request: Request, message_id: str) -> Response:
        receipts = PecReceiptRecord.objects.filter(message=_message(request, message_id)).order_by("id")
        return Response({"ok": True, "receipts": [
            {"n": index, "receipt_type": r.receipt_type, "event": r.event_type, "recipient": r.recipient or None,
             "pec_ts": r.pec_ts.timestamp() if r.pec_ts else None, "error": r.error or None}
            for index, r in enumerate(receipts, start=1)]})


class ReceiptDownloadView(APIView):
    @extend_schema(parameters=[TENANT_PARAM], responses={(200, "message/rfc822"): OpenApiTypes.BINARY})
    def get(self, request: Request, message_id: str, n: int) -> HttpResponse:
        receipts = list(PecReceiptRecord.objects.filter(message=_message(request, message_id)).order_by("id"))
        if not 1 <= n <= len(receipts):
            raise NotFoundError()
        response = HttpResponse(bytes(receipts[n - 1].raw), content_type="message/rfc822")
        response["Content-Disposition"] = f'attachment; filename="receipt-{n}.eml"'
        return response
