from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from django.core import signing
from django.test import Client, override_settings
from django.utils import timezone

from delivery.largefiles import FILES_SALT, apply_policy, make_token
from delivery.models import StoredFile
from tests.delivery.largefiles.items import Item
from tests.factories import TenantFactory

pytestmark = pytest.mark.django_db

NOT_FOUND = {"ok": False, "error": "not found", "details": None}


@pytest.fixture(autouse=True)
def _files_urls() -> Iterator[None]:
    with override_settings(ROOT_URLCONF="tests.delivery.largefiles.urls"):
        yield


def _upload(tmp_path: Path, filename: str = "report.pdf", content: bytes = b"%PDF-" + b"r" * 2048) -> str:
    tenant = TenantFactory(large_file_config={"enabled": True, "action": "rewrite", "max_size_mb": 0.001,
                                              "storage_url": f"file://{tmp_path}/store",
                                              "public_base_url": "https://proxy.example.com/base/"})
    [link] = apply_policy(tenant=tenant, attachments=[Item(filename, content)]).links
    assert link.url.startswith("https://proxy.example.com/base/files/")
    return "/" + link.url.removeprefix("https://proxy.example.com/base/")


def test_download_streams_the_bytes_as_an_attachment(tmp_path: Path) -> None:
    content = b"%PDF-" + bytes(range(256)) * 10
    response = Client().get(_upload(tmp_path, content=content))
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == content  # type: ignore[attr-defined]
    assert response["Content-Disposition"] == 'attachment; filename="report.pdf"'
    assert response["Content-Type"] == "application/pdf"
    assert response["Content-Length"] == str(len(content))
    assert response["X-Content-Type-Options"] == "nosniff"


def test_non_ascii_name_is_encoded_per_rfc_5987(tmp_path: Path) -> None:
    response = Client().get(_upload(tmp_path, filename="fattura n°1 €.pdf"))
    assert response.status_code == 200
    assert response["Content-Disposition"] == "attachment; filename*=utf-8''fattura%20n%C2%B01%20%E2%82%AC.pdf"


def test_expired_link_is_not_found(tmp_path: Path) -> None:
    path = _upload(tmp_path)
    StoredFile.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    response = Client().get(path)
    assert (response.status_code, response.json()) == (404, NOT_FOUND)


def test_tampered_token_is_not_found(tmp_path: Path) -> None:
    path = _upload(tmp_path)
    stored = StoredFile.objects.get()
    forged = signing.dumps({"f": stored.pk}, salt="another.salt")
    for bad in (path[:-2] + ("AA" if not path.endswith("AA") else "BB"), "/files/" + forged, "/files/garbage"):
        response = Client().get(bad)
        assert (response.status_code, response.json()) == (404, NOT_FOUND), bad


def test_token_of_a_missing_row_or_file_is_not_found(tmp_path: Path) -> None:
    path = _upload(tmp_path)
    stored = StoredFile.objects.get()
    (tmp_path / "store" / stored.key).unlink()
    assert Client().get(path).status_code == 404
    stored.delete()
    assert Client().get(path).json() == NOT_FOUND


def test_token_of_a_cloud_file_is_not_served(tmp_path: Path) -> None:
    tenant = TenantFactory()
    stored = StoredFile.objects.create(tenant=tenant, storage_url="s3://bucket/p", key="k", filename="k", size=1,
                                       expires_at=timezone.now() + timedelta(days=1))
    assert Client().get(f"/files/{make_token(stored)}").status_code == 404


def test_token_with_another_payload_is_not_found() -> None:
    for payload in ({"g": 1}, ["f"], {"f": "x"}):
        token = signing.dumps(payload, salt=FILES_SALT)
        assert Client().get(f"/files/{token}").json() == NOT_FOUND


def test_only_get_and_head_are_allowed(tmp_path: Path) -> None:
    path = _upload(tmp_path)
    assert Client().head(path).status_code == 200
    response = Client().post(path)
    assert response.status_code == 405
    assert response.json()["ok"] is False
