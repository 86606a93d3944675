"""Large attachments (SPEC §9): warn about them, refuse them, or move them to storage behind a link.

Stores are small classes behind a registry keyed by the storage URL's scheme: `s3://`,
`gs://` and `az://` through django-storages, `file:///dir` on local disk, served by the
proxy itself (`delivery.files.download`) behind a signed token.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar, Generic, Protocol, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

from django.core import signing
from django.core.files import File
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage, Storage
from django.utils import timezone
from django.utils.html import escape
from django.utils.http import content_disposition_header

from delivery.models import StoredFile
from tenants.large_files import validate_large_file_config
from tenants.models import Tenant

logger = logging.getLogger(__name__)

MB = 1024 * 1024
FILES_SALT = "mail-proxy.files"
# S3 refuses SigV4 presigned URLs valid for more than 7 days, and GCS V4 signed URLs have
# the same ceiling: their links expire after min(file_ttl_days, 7 days) even though the
# file itself is kept (and removed by cleanup) after file_ttl_days.
PRESIGNED_MAX = timedelta(days=7)
CLEANUP_BATCH = 500
MAX_KEY_NAME = 100


class LargeFileError(Exception):
    """Applying the policy failed; `permanent` says whether trying again could help."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


class Attachment(Protocol):
    @property
    def filename(self) -> str: ...

    @property
    def content(self) -> bytes: ...


T = TypeVar("T", bound=Attachment)


@dataclass(frozen=True)
class Link:
    filename: str
    size: int
    url: str
    expires_at: datetime


@dataclass(frozen=True)
class Decision(Generic[T]):
    """What to do with a message's attachments.

    `reject` set: fail the message (permanently) with that text. Otherwise send `keep` as
    attachments and append `links` to the body (`render_links_text` / `render_links_html`);
    `warnings` are for the message's log or events, the mail goes out unchanged.
    """

    keep: list[T]
    links: list[Link]
    warnings: list[str]
    reject: str | None


# --- stores -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreAddress:
    """A parsed storage URL: `path` is the prefix in the bucket, or the directory for file://."""

    scheme: str
    bucket: str
    path: str
    endpoint_url: str | None


def parse_storage_url(url: str) -> StoreAddress:
    """The parts of a storage URL (already validated by `validate_large_file_config`)."""
    parts = urlsplit(url)
    if parts.scheme not in STORES:
        raise ValueError(f"no store for {parts.scheme!r} URLs")
    query = dict(parse_qsl(parts.query))
    if parts.scheme == "file":
        return StoreAddress(scheme="file", bucket="", path=unquote(parts.path), endpoint_url=None)
    return StoreAddress(scheme=parts.scheme, bucket=parts.netloc, path=unquote(parts.path).strip("/"),
                        endpoint_url=query.get("endpoint_url") or None)


class Store:
    """One storage backend; clients connect lazily, on the first upload, link or delete."""

    scheme: ClassVar[str]

    def __init__(self, address: StoreAddress) -> None:
        self.address = address
        # Any: django-storages has no type hints, and its url() takes more than Storage.url().
        self.storage: Any = self.build_storage()

    def build_storage(self) -> Storage:
        raise NotImplementedError

    def save(self, *, key: str, content: bytes) -> str:
        """Upload under `key`, never over an existing file; the key actually used."""
        return self.storage.save(key, ContentFile(content))

    def delete(self, *, key: str) -> None:
        self.storage.delete(key)

    def open(self, *, key: str) -> File:
        return self.storage.open(key, "rb")

    def link(self, *, stored: StoredFile, public_base_url: str, now: datetime) -> tuple[str, datetime]:
        """A download URL of the stored file and when it stops working."""
        raise NotImplementedError


STORES: dict[str, type[Store]] = {}


def register(store: type[Store]) -> type[Store]:
    STORES[store.scheme] = store
    return store


def store_for(storage_url: str) -> Store:
    """The store a storage URL names."""
    address = parse_storage_url(storage_url)
    return STORES[address.scheme](address)


def _presigned_lifetime(stored: StoredFile, now: datetime) -> timedelta:
    return max(min(stored.expires_at - now, PRESIGNED_MAX), timedelta(seconds=1))


def _env(names: list[tuple[str, str]]) -> dict[str, str]:
    """Storage settings from (setting, environment variable) pairs, only the variables that are set."""
    return {setting: os.environ[name] for setting, name in names if os.environ.get(name)}


@register
class S3Store(Store):
    scheme = "s3"

    def build_storage(self) -> Storage:
        from storages.backends.s3 import S3Storage

        # Credentials, region and (without ?endpoint_url) the endpoint come from the standard
        # AWS environment variables, which boto3 reads itself.
        # SigV4 explicitly: botocore may presign with legacy SigV2, which newer regions refuse.
        options: dict[str, Any] = {"bucket_name": self.address.bucket, "location": self.address.path,
                                   "file_overwrite": False, "querystring_auth": True, "signature_version": "s3v4"}
        if self.address.endpoint_url:
            options["endpoint_url"] = self.address.endpoint_url
        return S3Storage(**options)

    def link(self, *, stored: StoredFile, public_base_url: str, now: datetime) -> tuple[str, datetime]:
        lifetime = _presigned_lifetime(stored, now)
        url = self.storage.url(stored.key, expire=int(lifetime.total_seconds()), parameters={
            "ResponseContentDisposition": content_disposition_header(True, stored.filename)})
        return url, now + timedelta(seconds=int(lifetime.total_seconds()))


@register
class GoogleCloudStore(Store):
    scheme = "gs"

    def build_storage(self) -> Storage:
        from storages.backends.gcloud import GoogleCloudStorage

        # Credentials and project: Application Default Credentials
        # (GOOGLE_APPLICATION_CREDENTIALS, GOOGLE_CLOUD_PROJECT), read by the client itself.
        return GoogleCloudStorage(bucket_name=self.address.bucket, location=self.address.path,
                                  file_overwrite=False, querystring_auth=True)

    def link(self, *, stored: StoredFile, public_base_url: str, now: datetime) -> tuple[str, datetime]:
        lifetime = _presigned_lifetime(stored, now)
        url = self.storage.url(stored.key, parameters={
            "expiration": lifetime,
            "response_disposition": content_disposition_header(True, stored.filename)})
        return url, now + lifetime


@register
class AzureStore(Store):
    scheme = "az"

    def build_storage(self) -> Storage:
        from storages.backends.azure_storage import AzureStorage

        # The Azure CLI's variables; what is unset falls back to django-storages' AZURE_* settings.
        credentials = _env([("connection_string", "AZURE_STORAGE_CONNECTION_STRING"),
                            ("account_name", "AZURE_STORAGE_ACCOUNT"), ("account_key", "AZURE_STORAGE_KEY"),
                            ("sas_token", "AZURE_STORAGE_SAS_TOKEN")])
        return AzureStorage(azure_container=self.address.bucket, location=self.address.path,
                            overwrite_files=False, **credentials)

    def link(self, *, stored: StoredFile, public_base_url: str, now: datetime) -> tuple[str, datetime]:
        # An account-key SAS has no ceiling: the link lives as long as the file.
        lifetime = max(stored.expires_at - now, timedelta(seconds=1))
        url = self.storage.url(stored.key, expire=int(lifetime.total_seconds()), parameters={
            "content_disposition": content_disposition_header(True, stored.filename)})
        return url, now + timedelta(seconds=int(lifetime.total_seconds()))


@register
class FileStore(Store):
    scheme = "file"

    def build_storage(self) -> Storage:
        return FileSystemStorage(location=self.address.path)

    def delete(self, *, key: str) -> None:
        # A file where a folder of the key should be: the file itself cannot exist.
        with contextlib.suppress(NotADirectoryError):
            self.storage.delete(key)

    def link(self, *, stored: StoredFile, public_base_url: str, now: datetime) -> tuple[str, datetime]:
        return f"{public_base_url.rstrip('/')}/files/{make_token(stored)}", stored.expires_at


def make_token(stored: StoredFile) -> str:
    """The signed capability that lets anyone holding it download one file://-stored file."""
    return signing.dumps({"f": stored.pk}, salt=FILES_SALT)


def stored_file_for_token(token: str, *, now: datetime) -> StoredFile | None:
    """The unexpired file://-stored file a token names; None for a bad, expired or foreign token."""
    try:
        payload = signing.loads(token, salt=FILES_SALT, max_age=None)
        pk = int(payload["f"])
    except (signing.BadSignature, KeyError, TypeError, ValueError):
        return None
    stored = StoredFile.objects.filter(pk=pk, expires_at__gt=now).first()
    if stored is None or urlsplit(stored.storage_url).scheme != FileStore.scheme:
        return None
    return stored


# --- policy -------------------------------------------------------------------------------


def _mb(size: float) -> str:
    # Rounded up, so a file just over the limit never reads as equal to it.
    return f"{math.ceil(size * 10 / MB) / 10:.1f}"


def _over_limit(attachment: Attachment, max_size_mb: float) -> str:
    return (f"attachment {attachment.filename} is {_mb(len(attachment.content))} MB, "
            f"over the tenant limit of {max_size_mb:.1f} MB")


def key_for(*, tenant: Tenant, filename: str) -> str:
    """A fresh store key `<tenant id>/<uuid>/<safe name>`: never the key of another file."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-") or "file"
    if len(name) > MAX_KEY_NAME:
        stem, ext = os.path.splitext(name)
        ext = ext[:20]
        name = stem[: MAX_KEY_NAME - len(ext)] + ext
    return f"{tenant.id}/{uuid.uuid4().hex}/{name}"


def _upload(*, store: Store, tenant: Tenant, config: dict[str, Any], attachment: Attachment,
            now: datetime) -> StoredFile:
    # The row goes in before the upload, so no file is ever in a store without a row that
    # lets cleanup find it; a failed upload removes what it may have left, then the row (a
    # store that cannot even delete keeps the row, for cleanup to try again).
    stored = StoredFile.objects.create(
        tenant=tenant, storage_url=config["storage_url"], key=key_for(tenant=tenant, filename=attachment.filename),
        filename=attachment.filename[:255], size=len(attachment.content), created_at=now,
        expires_at=now + timedelta(days=config["file_ttl_days"]),
    )
    try:
        saved = store.save(key=stored.key, content=attachment.content)
    except Exception as exc:
        _remove(stored, {stored.storage_url: store})
        detail = f"{type(exc).__name__}: {exc}"[:300]
        raise LargeFileError(f"attachment {attachment.filename}: upload to storage failed ({detail})",
                             permanent=False) from exc
    if saved != stored.key:
        stored.key = saved
        stored.save(update_fields=["key"])
    return stored


def apply_policy(*, tenant: Tenant, attachments: list[T]) -> Decision[T]:
    """Apply the tenant's large-file policy; under `rewrite`, upload the oversized files.

    Uploads happen here (network I/O): call it outside any transaction. Raises
    `LargeFileError`: permanent for an invalid config, temporary for a failed upload (the
    files of this call already uploaded are removed again).
    """
    try:
        config = validate_large_file_config(tenant.large_file_config or {})
    except ValueError as exc:
        raise LargeFileError(f"large_file_config of tenant {tenant.id} is invalid: {exc}", permanent=True) from None
    nothing = Decision(keep=list(attachments), links=[], warnings=[], reject=None)
    if not config["enabled"]:
        return nothing
    limit = config["max_size_mb"] * MB
    oversized = [item for item in attachments if len(item.content) > limit]
    if not oversized:
        return nothing
    if config["action"] == "warn":
        logger.warning("large attachments kept tenant=%s count=%d", tenant.id, len(oversized))
        return Decision(keep=list(attachments), links=[], warnings=[_over_limit(item, config["max_size_mb"])
                                                                    for item in oversized], reject=None)
    if config["action"] == "reject":
        return Decision(keep=list(attachments), links=[], warnings=[],
                        reject=_over_limit(oversized[0], config["max_size_mb"]))

    now = timezone.now()
    uploaded: list[StoredFile] = []
    links: list[Link] = []
    try:
        store = store_for(config["storage_url"])
        for item in oversized:
            stored = _upload(store=store, tenant=tenant, config=config, attachment=item, now=now)
            uploaded.append(stored)
            url, expires_at = store.link(stored=stored, public_base_url=config["public_base_url"], now=now)
            links.append(Link(filename=item.filename, size=stored.size, url=url, expires_at=expires_at))
    except Exception as exc:
        for stored in uploaded:
            _remove(stored, {stored.storage_url: store})
        if isinstance(exc, LargeFileError):
            raise
        detail = f"{type(exc).__name__}: {exc}"[:300]
        raise LargeFileError(f"large attachments: storage failed ({detail})", permanent=False) from exc
    logger.info("large attachments moved to storage tenant=%s count=%d", tenant.id, len(links))
    return Decision(keep=[item for item in attachments if len(item.content) <= limit], links=links,
                    warnings=[], reject=None)


# --- rendering ----------------------------------------------------------------------------


def _heading(links: list[Link]) -> str:
    until = min(link.expires_at for link in links)
    return f"Files available for download until {until:%Y-%m-%d %H:%M} UTC:"


def _one_line(text: str) -> str:
    # A file name with a line break must not start a line of its own in the body.
    return re.sub(r"[\x00-\x1f\x7f]+", " ", text)


def render_links_text(links: list[Link]) -> str:
    """A plain-text block listing the links, to append to a plain body ("" without links)."""
    if not links:
        return ""
    lines = [_heading(links), *(f"- {_one_line(link.filename)} ({_mb(link.size)} MB): {link.url}" for link in links)]
    return "\n".join(lines) + "\n"


def render_links_html(links: list[Link]) -> str:
    """An HTML block listing the links, to append to an HTML body ("" without links)."""
    if not links:
        return ""
    items = "".join(
        f'<li><a href="{escape(link.url)}">{escape(link.filename)}</a> ({_mb(link.size)} MB)</li>' for link in links
    )
    return f'<div class="mail-proxy-files"><p>{escape(_heading(links))}</p><ul>{items}</ul></div>'


# --- cleanup ------------------------------------------------------------------------------


def _remove(stored: StoredFile, stores: dict[str, Store]) -> bool:
    """Delete one file from its store, then its row; False (logged) when the store failed."""
    try:
        if stored.storage_url not in stores:
            stores[stored.storage_url] = store_for(stored.storage_url)
        stores[stored.storage_url].delete(key=stored.key)
    except Exception as exc:  # noqa: BLE001 (the row stays: the next run tries again)
        logger.warning("stored file not removed id=%s tenant=%s error=%s", stored.pk, stored.tenant_id,
                       type(exc).__name__)
        return False
    deleted, _ = StoredFile.objects.filter(pk=stored.pk).delete()
    return deleted > 0


def _remove_all(rows: Any) -> int:
    removed, last = 0, 0
    stores: dict[str, Store] = {}
    while True:
        # Batches by primary key: no cursor stays open over the table being deleted from.
        batch = list(rows.filter(pk__gt=last).order_by("pk")[:CLEANUP_BATCH])
        if not batch:
            return removed
        last = batch[-1].pk
        removed += sum(_remove(stored, stores) for stored in batch)


def cleanup_expired(*, now: datetime | None = None) -> int:
    """Delete expired files from their stores and their rows; how many were removed.

    Safe to run twice or concurrently: a file already gone counts once. A file its store
    cannot delete now keeps its row and is tried again on the next run.
    """
    return _remove_all(StoredFile.objects.filter(expires_at__lte=now or timezone.now()))


def remove_tenant_files(*, tenant: Tenant) -> int:
    """Delete every stored file of a tenant (call before deleting the tenant: CASCADE only drops rows)."""
    return _remove_all(StoredFile.objects.filter(tenant=tenant))
