from __future__ import annotations

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView


class HealthView(APIView):
    """Liveness: answers without touching the database, Redis or the broker."""

    authentication_classes: list[type] = []
    permission_classes = [AllowAny]

    @extend_schema(auth=[], responses=inline_serializer("Health", {"ok": serializers.BooleanField()}))
    def get(self, request: Request) -> Response:
        return Response({"ok": True})
