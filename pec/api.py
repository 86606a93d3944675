"""Raw PEC receipts, downloadable as legal evidence."""

from __future__ import annotations

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from pec.models import PecReceiptRecord
from queueing.models import Message
from tenants.auth import principal_of, resolve_tenant
from tenants.exceptions import NotFoundError

TENANT_PARAM = OpenApiParameter("tenant_id", str, description="admin token: the tenant (default: 'default')")


def _message(request: Request, message_id: str) -> Message:
    tenant = resolve_tenant(principal_of(request), request.query_params.get("tenant_id"))
    message = Message.objects.filter(tenant=tenant, external_id=message_id).first()
    if message is None:
        raise NotFoundError()
    return message


class ReceiptListView(APIView):
    @extend_schema(parameters=[TENANT_PARAM], responses=OpenApiTypes.OBJECT)
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
