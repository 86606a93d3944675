"""One error shape for every API answer: {"ok": false, "error": text, "details": …}."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpRequest, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from tenants.crypto import DecryptionError, EncryptionKeyError
from tenants.exceptions import DomainError

logger = logging.getLogger(__name__)


def flatten_errors(detail: Any, prefix: str = "") -> dict[str, str]:
    """DRF's nested error detail as {"messages[3].to": "text"}."""
    flat: dict[str, str] = {}
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = prefix if key == "non_field_errors" else (f"{prefix}.{key}" if prefix else str(key))
            flat.update(flatten_errors(value, name))
    elif isinstance(detail, list):
        if all(not isinstance(item, dict | list) for item in detail):
            flat[prefix or "request"] = " ".join(str(item) for item in detail)
        else:
            for index, value in enumerate(detail):
                if value:
                    flat.update(flatten_errors(value, f"{prefix}[{index}]"))
    else:
        flat[prefix or "request"] = str(detail)
    return flat


def error_body(message: str, details: Any = None) -> dict[str, Any]:
    return {"ok": False, "error": message, "details": details}


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, OperationalError | InterfaceError):
        # The database is away (restart, failover): say so, and when to try again; nothing was stored.
        logger.error("database unavailable: %s", type(exc).__name__)
        return Response(error_body("the database is unavailable; try again shortly"), status=503,
                        headers={"Retry-After": "5"})
    if isinstance(exc, RequestDataTooBig):
        return Response(error_body("request body too large"), status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
    if isinstance(exc, DomainError):
        return Response(error_body(exc.message, exc.details), status=exc.status_code)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound("not found")
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, DecryptionError | EncryptionKeyError):
        # A configuration fault of the instance, not of the caller; say so without detail.
        logger.error("encryption failure: %s", exc)
        return Response(error_body("the instance cannot open its stored secrets; see its log"), status=500)

    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        fields = flatten_errors(exc.detail)
        message = "; ".join(f"{name}: {text}" for name, text in fields.items()) or "invalid input"
        response.data = error_body(message, fields)
    else:
        detail = getattr(exc, "detail", None)
        response.data = error_body(str(detail) if detail is not None else "request failed")
    return response


def json_not_found(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse(error_body("not found"), status=404)


def json_server_error(request: HttpRequest) -> JsonResponse:
    return JsonResponse(error_body("internal error; the instance log has the details"), status=500)


def json_bad_request(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse(error_body("bad request"), status=400)


def json_forbidden(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse(error_body("forbidden"), status=403)
