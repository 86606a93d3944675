"""Delivery-report endpoints."""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from delivery import reports
from tenants.permissions import IsAdmin


class SyncStatusView(APIView):
    permission_classes = [IsAdmin]

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request: Request) -> Response:
        """Per tenant: last acknowledged sync, next one due, Do Not Disturb, reports waiting, last error."""
        return Response({"ok": True, "sync_interval_seconds": settings.GMP_SYNC_INTERVAL,
                         "tenants": reports.sync_status()})
