"""Delivery-report endpoints."""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from delivery import reports
from mailproxy.schema import envelope
from tenants.permissions import IsAdmin


class TenantSyncStatusSerializer(serializers.Serializer):
    """One tenant's report sync: last acknowledged, next due, reports waiting, last error."""

    tenant_id = serializers.CharField()
    sync_url_configured = serializers.BooleanField()
    last_sync_ts = serializers.FloatField(allow_null=True)
    next_sync_due = serializers.FloatField()
    in_dnd = serializers.BooleanField()
    pending_reports = serializers.IntegerField()
    undelivered_reports = serializers.IntegerField()
    failing_since = serializers.FloatField(allow_null=True)
    last_error = serializers.CharField(allow_null=True)


class SyncStatusView(APIView):
    permission_classes = [IsAdmin]

    @extend_schema(responses=envelope("SyncStatus", sync_interval_seconds=serializers.IntegerField(),
                                      tenants=TenantSyncStatusSerializer(many=True)))
    def get(self, request: Request) -> Response:
        """Per tenant: last acknowledged sync, next one due, Do Not Disturb, reports waiting, last error."""
        return Response({"ok": True, "sync_interval_seconds": settings.GMP_SYNC_INTERVAL,
                         "tenants": reports.sync_status()})
