"""Download of large files stored on the proxy's own disk (`file://` stores, SPEC §9)."""

from __future__ import annotations

from django.core.exceptions import SuspiciousFileOperation
from django.http import FileResponse, HttpRequest, JsonResponse
from django.http.response import HttpResponseBase
from django.utils import timezone

from delivery import largefiles


def _not_found() -> JsonResponse:
    # One answer for a bad signature, an expired link and a missing file: nothing leaks.
    return JsonResponse({"ok": False, "error": "not found", "details": None}, status=404)


def download(request: HttpRequest, token: str) -> HttpResponseBase:
    """Stream the file a signed token names; no authentication, the token is the capability."""
    if request.method not in ("GET", "HEAD"):
        return JsonResponse({"ok": False, "error": "method not allowed", "details": None}, status=405,
                            headers={"Allow": "GET, HEAD"})
    stored = largefiles.stored_file_for_token(token, now=timezone.now())
    if stored is None:
        return _not_found()
    try:
        handle = largefiles.store_for(stored.storage_url).open(key=stored.key)
    except (OSError, SuspiciousFileOperation):  # gone, or a key that would leave its store
        return _not_found()
    response = FileResponse(handle, as_attachment=True, filename=stored.filename)
    # The file is the sender's content on the proxy's origin: never let a browser run it.
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = "sandbox"
    return response
