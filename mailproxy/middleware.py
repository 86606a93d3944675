"""Refuse oversized request bodies, and NUL in paths and queries, before anything reads them."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

from mailproxy.exceptions import error_body


class RequestSizeLimitMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        # A NUL names nothing, and PostgreSQL refuses it outright: in the path it is answered
        # like any id that does not exist, in the query as the bad input it is.
        if "\x00" in request.path:
            return JsonResponse(error_body("not found"), status=404)
        query = request.META.get("QUERY_STRING", "")
        if "%00" in query or "\x00" in query:
            return JsonResponse(error_body("NUL is not allowed in the query"), status=400)
        limit = settings.GMP_MAX_REQUEST_MB * 1024 * 1024
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return JsonResponse(error_body("invalid Content-Length"), status=400)
        if length > limit:
            return JsonResponse(
                error_body(f"request body of {length} bytes is over the limit of {settings.GMP_MAX_REQUEST_MB} MB"),
                status=413,
            )
        return self.get_response(request)
