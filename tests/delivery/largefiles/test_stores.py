from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import boto3
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.core.files.storage import FileSystemStorage
from django.utils import timezone
from google.oauth2 import service_account
from storages.backends.azure_storage import AzureStorage
from storages.backends.gcloud import GoogleCloudStorage
from storages.backends.s3 import S3Storage

from delivery.largefiles import (
    MB,
    PRESIGNED_MAX,
    STORES,
    AzureStore,
    FileStore,
    GoogleCloudStore,
    LargeFileError,
    S3Store,
    apply_policy,
    cleanup_expired,
    key_for,
    parse_storage_url,
    store_for,
)
from delivery.models import StoredFile
from tests.delivery.largefiles.items import Item
from tests.factories import TenantFactory

pytestmark = pytest.mark.django_db

BIG = Item("Quarterly report.pdf", b"%PDF-" + b"q" * (MB + 10))


def test_registry_covers_every_scheme() -> None:
    expected = {"s3": S3Store, "gs": GoogleCloudStore, "az": AzureStore, "file": FileStore}
    assert expected == STORES


def test_registry_builds_s3_with_bucket_prefix_and_endpoint(aws_env: None) -> None:
    store = store_for("s3://reports/mail/large?endpoint_url=http://127.0.0.1:9000")
    assert isinstance(store, S3Store)
    assert isinstance(store.storage, S3Storage)
    assert (store.storage.bucket_name, store.storage.location) == ("reports", "mail/large")
    assert store.storage.endpoint_url == "http://127.0.0.1:9000"
    assert store.storage.file_overwrite is False
    assert store.storage.signature_version == "s3v4"


def test_registry_builds_s3_without_endpoint(aws_env: None) -> None:
    store = store_for("s3://reports")
    assert (store.storage.bucket_name, store.storage.location, store.storage.endpoint_url) == ("reports", "", None)


def test_registry_builds_google_cloud_storage_without_network() -> None:
    store = store_for("gs://gmp-files/tenant/files/")
    assert isinstance(store.storage, GoogleCloudStorage)
    assert (store.storage.bucket_name, store.storage.location) == ("gmp-files", "tenant/files")
    assert store.storage.file_overwrite is False
    assert store.storage._client is None  # no client (and no credentials lookup) until first use


def test_registry_builds_azure_storage_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT", "gmpaccount")
    monkeypatch.setenv("AZURE_STORAGE_KEY", "a2V5")
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    monkeypatch.delenv("AZURE_STORAGE_SAS_TOKEN", raising=False)
    store = store_for("az://mail-files/large")
    assert isinstance(store.storage, AzureStorage)
    assert (store.storage.azure_container, store.storage.location) == ("mail-files", "large")
    assert (store.storage.account_name, store.storage.account_key) == ("gmpaccount", "a2V5")
    assert store.storage.overwrite_files is False
    assert store.storage._client is None


def _stored(days: int) -> StoredFile:
    now = timezone.now()
    return StoredFile(pk=1, key="acme/0f/a.pdf", filename="a è.pdf", size=1, created_at=now,
                      expires_at=now + timedelta(days=days))


def test_google_cloud_link_is_a_v4_signed_url_capped_at_seven_days() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    store = store_for("gs://gmp-files/pre")
    # Offline signing with a throwaway service-account key: no token is fetched, no bucket reached.
    store.storage.credentials = service_account.Credentials.from_service_account_info({
        "type": "service_account", "client_email": "gmp@proj.iam.gserviceaccount.com", "private_key": pem,
        "token_uri": "https://oauth2.googleapis.com/token", "project_id": "proj"})
    store.storage.project_id = "proj"
    now = timezone.now()
    url, expires_at = store.link(stored=_stored(30), public_base_url="", now=now)
    assert url.startswith("https://storage.googleapis.com/gmp-files/pre/acme/0f/a.pdf?X-Goog-Algorithm=GOOG4-RSA")
    assert "X-Goog-Expires=604800" in url
    assert "response-content-disposition=attachment" in url
    assert expires_at == now + PRESIGNED_MAX


def test_azure_link_is_a_sas_url_for_the_whole_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT", "gmpaccount")
    monkeypatch.setenv("AZURE_STORAGE_KEY", "a2V5a2V5a2V5")
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    store = store_for("az://mail-files/large")
    stored = _stored(30)
    url, expires_at = store.link(stored=stored, public_base_url="", now=stored.created_at)
    assert url.startswith("https://gmpaccount.blob.core.windows.net/mail-files/large/acme/0f/a.pdf?")
    assert f"se={stored.expires_at:%Y-%m-%dT%H}%3A" in url
    for part in ("sp=r", "sig=", "rscd=attachment"):
        assert part in url
    assert abs((expires_at - stored.expires_at).total_seconds()) < 1


def test_registry_builds_file_system_storage(tmp_path: Path) -> None:
    store = store_for(f"file://{tmp_path}/files")
    assert isinstance(store.storage, FileSystemStorage)
    assert store.storage.location == str(tmp_path / "files")


def test_unknown_scheme_has_no_store() -> None:
    with pytest.raises(ValueError, match="no store for 'ftp'"):
        store_for("ftp://host/x")


def test_parse_storage_url() -> None:
    address = parse_storage_url("s3://b-1/a/b/?endpoint_url=http%3A%2F%2Fminio%3A9000")
    assert (address.scheme, address.bucket, address.path, address.endpoint_url) == (
        "s3", "b-1", "a/b", "http://minio:9000")
    assert parse_storage_url("file:///srv/my%20files").path == "/srv/my files"


def test_keys_are_fresh_and_scoped_to_the_tenant() -> None:
    tenant = TenantFactory(id="acme")
    first, second = key_for(tenant=tenant, filename="a.pdf"), key_for(tenant=tenant, filename="a.pdf")
    assert first != second
    assert first.startswith("acme/")
    assert first.endswith("/a.pdf")
    long_name = key_for(tenant=tenant, filename="x" * 300 + ".tar.gz").rsplit("/", 1)[-1]
    assert len(long_name) == 100
    assert long_name.endswith(".gz")
    assert key_for(tenant=tenant, filename="...").endswith("/file")


@pytest.fixture
def bucket(moto_endpoint: str, aws_env: None) -> str:
    name = f"gmp-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


def _objects(moto_endpoint: str, bucket: str) -> dict[str, bytes]:
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    listing = client.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {item["Key"]: client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read() for item in listing}


def test_s3_rewrite_uploads_and_presigns_a_fetchable_url(moto_endpoint: str, bucket: str) -> None:
    tenant = TenantFactory(large_file_config={
        "enabled": True, "action": "rewrite", "max_size_mb": 1, "file_ttl_days": 30,
        "storage_url": f"s3://{bucket}/mail/large?endpoint_url={moto_endpoint}"})
    before = timezone.now()
    decision = apply_policy(tenant=tenant, attachments=[BIG])

    assert decision.keep == []
    [link] = decision.links
    stored = StoredFile.objects.get()
    assert _objects(moto_endpoint, bucket) == {f"mail/large/{stored.key}": BIG.content}
    assert stored.expires_at - before >= timedelta(days=30)
    # The presigned URL stops at S3's ceiling even though the file is kept for 30 days.
    assert before + PRESIGNED_MAX - timedelta(seconds=5) <= link.expires_at <= timezone.now() + PRESIGNED_MAX
    assert "X-Amz-Expires=604800" in link.url

    session = requests.Session()
    session.trust_env = False
    response = session.get(link.url, timeout=10)
    assert response.status_code == 200
    assert response.content == BIG.content
    assert response.headers["Content-Disposition"] == 'attachment; filename="Quarterly report.pdf"'


def test_s3_presigned_url_lives_as_long_as_a_short_ttl(moto_endpoint: str, bucket: str) -> None:
    tenant = TenantFactory(large_file_config={
        "enabled": True, "action": "rewrite", "max_size_mb": 1, "file_ttl_days": 2,
        "storage_url": f"s3://{bucket}?endpoint_url={moto_endpoint}"})
    [link] = apply_policy(tenant=tenant, attachments=[BIG]).links
    assert abs((link.expires_at - StoredFile.objects.get().expires_at).total_seconds()) < 1
    assert "X-Amz-Expires=172800" in link.url


def test_s3_cleanup_deletes_the_object(moto_endpoint: str, bucket: str) -> None:
    tenant = TenantFactory(large_file_config={
        "enabled": True, "action": "rewrite", "max_size_mb": 1, "file_ttl_days": 1,
        "storage_url": f"s3://{bucket}/p?endpoint_url={moto_endpoint}"})
    apply_policy(tenant=tenant, attachments=[BIG, Item("second.bin", b"s" * (MB + 1))])
    assert len(_objects(moto_endpoint, bucket)) == 2

    assert cleanup_expired(now=timezone.now() + timedelta(days=1, seconds=1)) == 2

    assert _objects(moto_endpoint, bucket) == {}
    assert not StoredFile.objects.exists()


def test_s3_upload_to_a_missing_bucket_is_temporary_and_leaves_no_row(moto_endpoint: str, aws_env: None) -> None:
    tenant = TenantFactory(large_file_config={
        "enabled": True, "action": "rewrite", "max_size_mb": 1,
        "storage_url": f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}?endpoint_url={moto_endpoint}"})
    with pytest.raises(LargeFileError, match="upload to storage failed") as caught:
        apply_policy(tenant=tenant, attachments=[BIG])
    assert caught.value.permanent is False
    assert not StoredFile.objects.exists()
