"""Liveness (`/health`), readiness (`/ready`) and the Prometheus exposition (`/metrics`)."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING

import redis
from django.conf import settings
from django.db import connection, connections
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from prometheus_client import CONTENT_TYPE_LATEST
from rest_framework import serializers
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import AllowAny
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from mailproxy import metrics
from mailproxy.celery import app as celery_app
from mailproxy.celery import beat_interval
from mailproxy.exceptions import error_body
from tenants.permissions import IsAdmin

if TYPE_CHECKING:
    from rest_framework.permissions import _SupportsHasPermission

logger = logging.getLogger(__name__)

READY_TIMEOUT = 2.5  # seconds for all checks together: /ready answers within it, whatever hangs
CHECK_TIMEOUT = 1.0  # seconds, to connect and per command of one check
BEAT = "beat"


class HealthView(APIView):
    """Liveness: answers without touching the database, Redis or the broker."""

    authentication_classes: list[type] = []
    permission_classes = [AllowAny]

    @extend_schema(auth=[], responses=inline_serializer("Health", {"ok": serializers.BooleanField()}))
    def get(self, request: Request) -> Response:
        return Response({"ok": True})


# --- Readiness --------------------------------------------------------------------------


def beat_window() -> float:
    """A heartbeat older than this means beat is down: three sweep intervals, at least 15 s.

    Three missed beats, not one: the heartbeat is written by whichever worker takes the task,
    and a fleet busy with long batches may take a few seconds to get to it.
    """
    return 3 * beat_interval()


def record_beat() -> None:
    """Beat is alive: write the heartbeat into the shared store (Redis or SQL, as the metrics)."""
    metrics.get_store().beat(BEAT)


class NotReady(Exception):
    """A check failed; the text says why, in a few words and without secrets."""


def redis_configured() -> bool:
    return settings.GMP_RATE_LIMITER == "redis" or settings.CELERY_BROKER_URL.startswith("redis")


def _check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _check_redis(url: str) -> None:
    client = redis.Redis.from_url(url, socket_timeout=CHECK_TIMEOUT, socket_connect_timeout=CHECK_TIMEOUT)
    try:
        client.ping()
    finally:
        client.close()


def _check_broker(url: str) -> None:
    if url.startswith("filesystem"):
        folder = str(settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("data_folder_in") or "")
        if not folder or not os.path.isdir(folder):
            raise NotReady("the broker folder does not exist")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise NotReady("the broker folder is not writable")
        return
    # The URL of the settings now (not the one the Celery app read at start), one try, short timeouts.
    options = {"socket_timeout": CHECK_TIMEOUT, "socket_connect_timeout": CHECK_TIMEOUT}
    with celery_app.connection_for_write(url=url, connect_timeout=CHECK_TIMEOUT,
                                         transport_options=options) as conn:
        conn.ensure_connection(max_retries=0, timeout=CHECK_TIMEOUT)


def _check_beat() -> None:
    try:
        last = metrics.get_store().last_beat(BEAT)
    except metrics.STORE_ERRORS as exc:
        raise NotReady(f"heartbeat unreadable ({metrics.short_reason(exc)})") from None
    if last is None:
        raise NotReady("no heartbeat from beat yet")
    age = time.time() - last
    if age > beat_window():
        raise NotReady(f"last heartbeat {age:.0f} s ago (limit {beat_window():.0f} s)")


def _run(name: str, check: Callable[[], None], results: dict[str, str]) -> None:
    try:
        check()
        results[name] = "ok"
    except Exception as exc:  # noqa: BLE001 (any failure is the answer of the check)
        results[name] = str(exc) if isinstance(exc, NotReady) else metrics.short_reason(exc)
    finally:
        connections.close_all()  # this thread's own connections


def readiness() -> dict[str, str]:
    """Each check's "ok" or short reason; all run side by side within READY_TIMEOUT."""
    checks: dict[str, Callable[[], None]] = {"database": _check_database}
    if redis_configured():
        checks["redis"] = partial(_check_redis, settings.REDIS_URL)
    checks["broker"] = partial(_check_broker, settings.CELERY_BROKER_URL)
    checks["beat"] = _check_beat
    results: dict[str, str] = {}
    threads = [threading.Thread(target=_run, args=(name, check, results), name=f"ready-{name}", daemon=True)
               for name, check in checks.items()]
    deadline = time.monotonic() + READY_TIMEOUT
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return {name: results.get(name, f"no answer within {READY_TIMEOUT:g} s") for name in checks}


class ReadyView(APIView):
    """Readiness: database, Redis (when configured), the broker, and a fresh beat heartbeat."""

    authentication_classes: list[type] = []
    permission_classes = [AllowAny]

    @extend_schema(auth=[], responses={
        200: inline_serializer("Ready", {"ok": serializers.BooleanField(),
                                         "checks": serializers.DictField(child=serializers.CharField())}),
        503: inline_serializer("NotReady", {"ok": serializers.BooleanField(), "error": serializers.CharField(),
                                            "details": serializers.DictField(child=serializers.CharField())}),
    })
    def get(self, request: Request) -> Response:
        results = readiness()
        failed = {name: reason for name, reason in results.items() if reason != "ok"}
        if failed:
            logger.warning("not ready %s", " ".join(f"{name}={reason!r}" for name, reason in failed.items()))
            return Response(error_body(f"not ready: {', '.join(failed)}", failed), status=503)
        return Response({"ok": True, "checks": results})


# --- Metrics ----------------------------------------------------------------------------


class MetricsView(APIView):
    """Prometheus exposition: the admin token, unless GMP_METRICS_PUBLIC=true."""

    permission_classes = [IsAdmin]

    def get_authenticators(self) -> list[BaseAuthentication]:
        return [] if settings.GMP_METRICS_PUBLIC else super().get_authenticators()

    def get_permissions(self) -> Sequence[_SupportsHasPermission]:
        return [AllowAny()] if settings.GMP_METRICS_PUBLIC else super().get_permissions()

    def perform_content_negotiation(self, request: Request, force: bool = False) -> tuple[BaseRenderer, str]:
        # Scrapers ask for text/plain or OpenMetrics; the answer is always the text format,
        # and a refusal (401, 403) is JSON whatever was asked for.
        return super().perform_content_negotiation(request, force=True)

    @extend_schema(responses={(200, "text/plain"): OpenApiResponse(
        OpenApiTypes.STR, description="Prometheus text exposition format (SPEC §15)")})
    def get(self, request: Request) -> HttpResponse:
        return HttpResponse(metrics.exposition(), content_type=CONTENT_TYPE_LATEST)
