"""Validation of a tenant's `large_file_config` (SPEC §9): pure, no I/O."""

from __future__ import annotations

import math
import re
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

ACTIONS = ("warn", "reject", "rewrite")
STORAGE_SCHEMES = ("s3", "gs", "az", "file")
DEFAULTS: dict[str, Any] = {
    "enabled": False,
    "max_size_mb": 10,
    "storage_url": "",
    "public_base_url": "",
    "file_ttl_days": 30,
    "action": "warn",
}
# Ten years: far beyond any sensible link lifetime, and well inside datetime's range.
MAX_TTL_DAYS = 3650
# The common ground of S3 bucket, GCS bucket and Azure container names.
BUCKET_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
# The only query parameter a storage URL may carry: an S3-compatible endpoint (MinIO, moto).
S3_QUERY_KEYS = ("endpoint_url",)


def validate_large_file_config(value: dict[str, Any]) -> dict[str, Any]:
    """The config with defaults filled in; `ValueError` naming the key when it is not valid."""
    if not isinstance(value, dict):
        raise ValueError("large_file_config must be an object")
    unknown = sorted(set(value) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r}; use {', '.join(DEFAULTS)}")
    config = {**DEFAULTS, **{key: item for key, item in value.items() if item is not None}}

    if not isinstance(config["enabled"], bool):
        raise ValueError("enabled must be true or false")
    size = config["max_size_mb"]
    if isinstance(size, bool) or not isinstance(size, int | float) or not math.isfinite(size) or size <= 0:
        raise ValueError("max_size_mb must be a number greater than 0")
    ttl = config["file_ttl_days"]
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 < ttl <= MAX_TTL_DAYS:
        raise ValueError(f"file_ttl_days must be a whole number from 1 to {MAX_TTL_DAYS}")
    if config["action"] not in ACTIONS:
        raise ValueError("action must be warn, reject or rewrite")
    if not isinstance(config["storage_url"], str):
        raise ValueError("storage_url must be a string")
    if not isinstance(config["public_base_url"], str):
        raise ValueError("public_base_url must be a string")

    if config["storage_url"]:
        _check_storage_url(config["storage_url"])
    if config["public_base_url"]:
        config["public_base_url"] = _check_public_base_url(config["public_base_url"])

    if config["enabled"] and config["action"] == "rewrite":
        if not config["storage_url"]:
            raise ValueError("storage_url is required when action is rewrite")
        if config["storage_url"].startswith("file:") and not config["public_base_url"]:
            raise ValueError("public_base_url is required for a file:// storage_url when action is rewrite")
    return config


def _check_storage_url(url: str) -> None:
    schemes = ", ".join(f"{scheme}://" for scheme in STORAGE_SCHEMES)
    parts = urlsplit(url)
    if parts.scheme not in STORAGE_SCHEMES or "://" not in url:
        raise ValueError(f"storage_url must start with one of {schemes}")
    if parts.fragment:
        raise ValueError("storage_url must not have a #fragment")
    path = unquote(parts.path)
    if any(segment in (".", "..") for segment in path.split("/")):
        raise ValueError("storage_url must not contain '.' or '..' path segments")

    if parts.scheme == "file":
        if parts.netloc:
            raise ValueError("storage_url must be file:///absolute/dir (three slashes, no host)")
        if not path.startswith("/") or path.strip("/") == "":
            raise ValueError("storage_url must name an absolute directory other than '/': file:///absolute/dir")
        if parts.query:
            raise ValueError("storage_url must not have a query for file://")
        return

    if "@" in parts.netloc or ":" in parts.netloc:
        raise ValueError("storage_url must not carry credentials or a port; credentials come from the environment")
    if not BUCKET_PATTERN.match(parts.netloc):
        raise ValueError(
            f"storage_url must name a bucket or container: {parts.scheme}://name/prefix "
            "(3-222 lowercase letters, digits, '.', '-', '_')"
        )
    if not parts.query:
        return
    if parts.scheme != "s3":
        raise ValueError(f"storage_url must not have a query for {parts.scheme}://")
    try:
        query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise ValueError("storage_url has a malformed query") from None
    names = [name for name, _ in query]
    if any(name not in S3_QUERY_KEYS for name in names) or len(names) != len(set(names)):
        raise ValueError(f"storage_url query may only set {', '.join(S3_QUERY_KEYS)}, once")
    endpoint = urlsplit(dict(query)["endpoint_url"])
    if endpoint.scheme not in ("http", "https") or not endpoint.hostname or endpoint.username or endpoint.password:
        raise ValueError("storage_url endpoint_url must be an http:// or https:// URL with a host and no credentials")


def _check_public_base_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("public_base_url must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise ValueError("public_base_url must not carry credentials")
    if parts.query or parts.fragment:
        raise ValueError("public_base_url must not have a query or #fragment")
    return url.rstrip("/")
