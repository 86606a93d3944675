"""Attachments of a message (SPEC §8): fetched by mode, in parallel, through the cache.

Cache keys, all scoped to the tenant so one tenant never gets another's bytes (an MD5 or a
URL fetched with another tenant's credentials is no proof of access):
`md5:<tenant>:<hex>` when an MD5 is known (marker or content_md5; the bytes are checked
before they are stored), else `url:<tenant>:<url>` for http_url, else
`endpoint:<tenant>:<storage_path>`. base64 and filesystem items are never cached: decoding
and a local read cost no more than a cache lookup, and a file changed in place would be
served stale.
"""

from __future__ import annotations

import hashlib
import mimetypes
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from delivery.attachments.cache import AttachmentCache, default_cache
from delivery.attachments.fetchers import FETCHERS, MD5_HEX, FetchError, split_marker
from queueing.validation import infer_fetch_mode as infer_mode
from tenants.models import Tenant

__all__ = ["Attachment", "AttachmentError", "cache_key", "fetch_attachments", "split_marker"]

CACHED_MODES = frozenset({"http_url", "endpoint"})


@dataclass(frozen=True)
class Attachment:
    filename: str
    mime_type: str
    content: bytes = field(repr=False)  # bodies stay out of logs and tracebacks


class AttachmentError(Exception):
    """An attachment cannot be had; the message names it, `permanent` says whether trying again could help."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class _Plan:
    item: dict[str, Any]
    filename: str
    mime_type: str
    mode: str
    md5: str | None
    key: str | None


def cache_key(*, mode: str, storage_path: str, md5: str | None, tenant: Tenant) -> str | None:
    """The cache key of an item, or None for the modes that are not cached."""
    if mode not in CACHED_MODES:
        return None
    if md5:
        return f"md5:{tenant.pk}:{md5}"
    if mode == "http_url":
        return f"url:{tenant.pk}:{storage_path}"
    return f"endpoint:{tenant.pk}:{storage_path}"


def _plan(index: int, item: dict[str, Any], tenant: Tenant) -> _Plan:
    raw_name = item.get("filename")
    if not isinstance(raw_name, str) or not raw_name:
        raise AttachmentError(f"attachment #{index + 1}: filename is missing", permanent=True)
    filename, marker_md5 = split_marker(raw_name)

    def refuse(reason: str) -> AttachmentError:
        return AttachmentError(f"attachment {filename!r}: {reason}", permanent=True)

    storage_path = item.get("storage_path")
    if not isinstance(storage_path, str) or not storage_path:
        raise refuse("storage_path is missing")
    mode = item.get("fetch_mode") or infer_mode(storage_path)
    if not isinstance(mode, str) or mode not in FETCHERS:
        raise refuse(f"fetch mode {mode!r} is unknown")
    content_md5 = item.get("content_md5")
    if content_md5 is not None and not (isinstance(content_md5, str) and MD5_HEX.fullmatch(content_md5)):
        raise refuse("content_md5 is not 32 hexadecimal digits")
    md5 = content_md5.lower() if content_md5 else marker_md5
    if marker_md5 and md5 != marker_md5:
        raise refuse("the MD5 marker in the file name and content_md5 disagree")
    mime_type = str(item.get("mime_type") or mimetypes.guess_type(filename)[0] or "application/octet-stream")
    return _Plan(item=item, filename=filename, mime_type=mime_type, mode=mode, md5=md5,
                 key=cache_key(mode=mode, storage_path=storage_path, md5=md5, tenant=tenant))


def _fetch(plan: _Plan, tenant: Tenant, cache: AttachmentCache) -> Attachment:
    def fetch() -> bytes:
        content = FETCHERS[plan.mode].fetch(plan.item, tenant)
        if plan.md5 is not None:
            actual = hashlib.md5(content, usedforsecurity=False).hexdigest()
            if actual != plan.md5:
                raise FetchError(f"content does not match its MD5 (expected {plan.md5}, got {actual})",
                                 permanent=True)
        return content

    try:
        content = fetch() if plan.key is None else cache.get_or_fetch(plan.key, fetch)
    except FetchError as exc:
        raise AttachmentError(f"attachment {plan.filename!r}: {exc.reason}", permanent=exc.permanent) from None
    return Attachment(filename=plan.filename, mime_type=plan.mime_type, content=content)


def fetch_attachments(items: list[dict[str, Any]], *, tenant: Tenant) -> list[Attachment]:
    """Every attachment of a message, in the items' order, fetched in parallel through the cache.

    Raises the first AttachmentError in item order, a permanent one before a temporary one.
    A malformed item fails before anything is fetched; after a permanent failure the fetches
    not yet started are dropped (the message fails anyway), while after a temporary one the
    others go on and fill the cache for the retry. No database access happens here.
    """
    plans = [_plan(index, item, tenant) for index, item in enumerate(items)]
    cache = default_cache()
    if len(plans) <= 1:
        return [_fetch(plan, tenant, cache) for plan in plans]
    abort = threading.Event()

    def run(plan: _Plan) -> Attachment | None:
        if abort.is_set():
            return None
        try:
            return _fetch(plan, tenant, cache)
        except AttachmentError as error:
            if error.permanent:
                abort.set()  # set by the worker itself, before it takes the next item
            raise

    workers = min(settings.GMP_MAX_CONCURRENT_FETCHES, len(plans))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="attachment-fetch") as pool:
        futures = [pool.submit(run, plan) for plan in plans]
    errors: list[AttachmentError] = []
    for future in futures:
        error = future.exception()
        if isinstance(error, AttachmentError):
            errors.append(error)
        elif error is not None:
            raise error
    if errors:
        raise next((error for error in errors if error.permanent), errors[0])
    return [attachment for future in futures if (attachment := future.result()) is not None]
