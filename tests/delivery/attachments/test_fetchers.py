"""Each fetch mode against real files and a real HTTP server on loopback."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings

from delivery.attachments import Attachment, AttachmentError, fetch_attachments
from delivery.attachments.fetchers import split_marker
from queueing.validation import infer_fetch_mode as infer_mode
from tenants import crypto
from tenants.models import Tenant
from tests.factories import TenantFactory
from tests.file_server import FileServer

pytestmark = pytest.mark.django_db

MD5_A = hashlib.md5(b"a", usedforsecurity=False).hexdigest()
MB = 1024 * 1024


def one(item: dict[str, Any], tenant: Tenant) -> Attachment:
    [attachment] = fetch_attachments([item], tenant=tenant)
    return attachment


def failure(item: dict[str, Any], tenant: Tenant) -> AttachmentError:
    with pytest.raises(AttachmentError) as caught:
        fetch_attachments([item], tenant=tenant)
    return caught.value


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def base_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "files"
    folder.mkdir()
    with override_settings(GMP_ATTACHMENT_BASE_DIRS=[str(folder)]):
        yield folder


@pytest.fixture
def endpoint_tenant(files: FileServer) -> Tenant:
    return TenantFactory(id="acme", client_base_url=files.url + "/", client_auth_method="bearer",
                         client_auth_secret_encrypted=crypto.encrypt("tenant-token"))


# Markers, inference, MIME types


@pytest.mark.parametrize(("filename", "expected"), [
    (f"report_{{MD5:{MD5_A}}}.pdf", ("report.pdf", MD5_A)),
    (f"{{MD5:{MD5_A}}}report.pdf", ("report.pdf", MD5_A)),
    (f"{{MD5:{MD5_A}}}_report.pdf", ("report.pdf", MD5_A)),
    (f"report{{MD5:{MD5_A.upper()}}}.pdf", ("report.pdf", MD5_A)),
    (f"report_{{MD5:{MD5_A}}}_final.pdf", ("report_final.pdf", MD5_A)),
    (f"_{{MD5:{MD5_A}}}.pdf", ("_.pdf", MD5_A)),
    (f"{{MD5:{MD5_A}}}", ("attachment", MD5_A)),
    ("report.pdf", ("report.pdf", None)),
    ("report_{MD5:abc123}.pdf", ("report_{MD5:abc123}.pdf", None)),
])
def test_split_marker_removes_the_marker_and_one_adjacent_underscore(
    filename: str, expected: tuple[str, str | None]
) -> None:
    assert split_marker(filename) == expected


@pytest.mark.parametrize(("storage_path", "mode"), [
    ("base64:SGVsbG8=", "base64"),
    ("http://example.com/a.pdf", "http_url"),
    ("HTTPS://example.com/a.pdf", "http_url"),
    ("/srv/files/a.pdf", "filesystem"),
    ("doc_id=123", "endpoint"),
    ("files/a.pdf", "endpoint"),
])
def test_mode_is_inferred_from_the_storage_path(storage_path: str, mode: str) -> None:
    assert infer_mode(storage_path) == mode


@pytest.mark.parametrize(("item", "mime_type"), [
    ({"filename": "report.pdf"}, "application/pdf"),
    ({"filename": "photo.JPG"}, "image/jpeg"),
    ({"filename": "data.bin", "mime_type": "text/csv"}, "text/csv"),
    ({"filename": "README"}, "application/octet-stream"),
    ({"filename": f"sheet_{{MD5:{MD5_A}}}.csv"}, "text/csv"),
])
def test_mime_type_comes_from_the_item_else_the_file_name(item: dict[str, Any], mime_type: str, tenant: Tenant) -> None:
    assert one({**item, "storage_path": "base64:YQ=="}, tenant).mime_type == mime_type


# base64


def test_base64_with_prefix_and_with_explicit_mode(tenant: Tenant) -> None:
    assert one({"filename": "a.txt", "storage_path": "base64:SGVsbG8="}, tenant).content == b"Hello"
    assert one({"filename": "a.txt", "storage_path": "SGVsbG8=", "fetch_mode": "base64"}, tenant).content == b"Hello"


def test_invalid_base64_is_permanent(tenant: Tenant) -> None:
    error = failure({"filename": "a.txt", "storage_path": "base64:not base64!"}, tenant)
    assert (str(error), error.permanent) == ("attachment 'a.txt': storage_path is not valid base64", True)


def test_unknown_fetch_mode_is_permanent(tenant: Tenant) -> None:
    error = failure({"filename": "a.txt", "storage_path": "x", "fetch_mode": "ftp"}, tenant)
    assert (str(error), error.permanent) == ("attachment 'a.txt': fetch mode 'ftp' is unknown", True)


# filesystem


def test_filesystem_reads_absolute_and_relative_paths_inside_the_folder(base_dir: Path, tenant: Tenant) -> None:
    (base_dir / "sub").mkdir()
    (base_dir / "sub" / "a.txt").write_bytes(b"inside")
    assert one({"filename": "a.txt", "storage_path": str(base_dir / "sub" / "a.txt")}, tenant).content == b"inside"
    assert one({"filename": "a.txt", "storage_path": "sub/a.txt", "fetch_mode": "filesystem"},
               tenant).content == b"inside"


def test_filesystem_reads_from_any_configured_folder(tmp_path: Path, tenant: Tenant) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    first.mkdir()
    second.mkdir()
    (second / "b.txt").write_bytes(b"second")
    with override_settings(GMP_ATTACHMENT_BASE_DIRS=[str(first), str(second)]):
        assert one({"filename": "b.txt", "storage_path": str(second / "b.txt")}, tenant).content == b"second"


def test_filesystem_follows_links_that_stay_inside(base_dir: Path, tenant: Tenant) -> None:
    (base_dir / "real.txt").write_bytes(b"linked")
    (base_dir / "link.txt").symlink_to(base_dir / "real.txt")
    assert one({"filename": "a.txt", "storage_path": str(base_dir / "link.txt")}, tenant).content == b"linked"


def outside_cases(base_dir: Path) -> dict[str, dict[str, Any]]:
    outside = base_dir.parent / "secret.txt"
    outside.write_bytes(b"secret")
    (base_dir / "escape.txt").symlink_to(outside)
    (base_dir / "escape-dir").symlink_to(base_dir.parent)
    (base_dir.parent / "files-sibling").mkdir()
    (base_dir.parent / "files-sibling" / "x.txt").write_bytes(b"sibling")
    return {
        "dotdot relative": {"storage_path": "../secret.txt", "fetch_mode": "filesystem"},
        "dotdot absolute": {"storage_path": f"{base_dir}/../secret.txt"},
        "symlink to a file out": {"storage_path": str(base_dir / "escape.txt")},
        "symlink to a folder out": {"storage_path": str(base_dir / "escape-dir" / "secret.txt")},
        "absolute elsewhere": {"storage_path": str(outside)},
        "prefix sibling": {"storage_path": str(base_dir.parent / "files-sibling" / "x.txt")},
        "system file": {"storage_path": "/etc/passwd"},
    }


@pytest.mark.parametrize("case", ["dotdot relative", "dotdot absolute", "symlink to a file out",
                                  "symlink to a folder out", "absolute elsewhere", "prefix sibling", "system file"])
def test_filesystem_refuses_paths_outside_the_folders(case: str, base_dir: Path, tenant: Tenant) -> None:
    item = {"filename": "a.txt", **outside_cases(base_dir)[case]}
    error = failure(item, tenant)
    assert (str(error), error.permanent) == ("attachment 'a.txt': not inside the allowed folders", True)


def test_filesystem_without_configured_folders_refuses_everything(tmp_path: Path, tenant: Tenant) -> None:
    (tmp_path / "a.txt").write_bytes(b"a")
    with override_settings(GMP_ATTACHMENT_BASE_DIRS=[]):
        error = failure({"filename": "a.txt", "storage_path": str(tmp_path / "a.txt")}, tenant)
    assert (str(error), error.permanent) == ("attachment 'a.txt': not inside the allowed folders", True)


def test_filesystem_missing_file_and_folder_are_permanent(base_dir: Path, tenant: Tenant) -> None:
    (base_dir / "folder").mkdir()
    missing = failure({"filename": "a.txt", "storage_path": str(base_dir / "nope.txt")}, tenant)
    folder = failure({"filename": "a.txt", "storage_path": str(base_dir / "folder")}, tenant)
    assert (str(missing), missing.permanent) == ("attachment 'a.txt': not found", True)
    assert (str(folder), folder.permanent) == ("attachment 'a.txt': not a regular file", True)


@override_settings(GMP_MAX_ATTACHMENT_MB=1)
def test_filesystem_refuses_files_over_the_size_cap(base_dir: Path, tenant: Tenant) -> None:
    (base_dir / "fits.bin").write_bytes(b"x" * MB)
    (base_dir / "big.bin").write_bytes(b"x" * (MB + 1))
    assert len(one({"filename": "fits.bin", "storage_path": str(base_dir / "fits.bin")}, tenant).content) == MB
    error = failure({"filename": "big.bin", "storage_path": str(base_dir / "big.bin")}, tenant)
    assert (str(error), error.permanent) == ("attachment 'big.bin': larger than 1 MB (GMP_MAX_ATTACHMENT_MB)", True)


# http_url


def test_http_url_gets_the_bytes(files: FileServer, tenant: Tenant) -> None:
    url = files.route("/docs/a.pdf", b"%PDF-1.7 content")
    attachment = one({"filename": "a.pdf", "storage_path": url}, tenant)
    assert attachment == Attachment(filename="a.pdf", mime_type="application/pdf", content=b"%PDF-1.7 content")
    assert files.last("/docs/a.pdf").method == "GET"


@pytest.mark.parametrize(("status", "permanent"), [
    (404, True), (403, True), (410, True), (400, True), (401, True),
    (500, False), (502, False), (503, False), (429, False), (408, False),
])
def test_http_status_classification(status: int, permanent: bool, files: FileServer, tenant: Tenant) -> None:
    url = files.route("/a.pdf", b"nope", status=status)
    error = failure({"filename": "report.pdf", "storage_path": url}, tenant)
    assert (str(error), error.permanent) == (f"attachment 'report.pdf': HTTP {status}", permanent)


@override_settings(GMP_FETCH_TIMEOUT=0.1)
def test_http_timeout_is_temporary(files: FileServer, tenant: Tenant) -> None:
    url = files.route("/slow.pdf", b"late", delay=0.5)
    error = failure({"filename": "slow.pdf", "storage_path": url}, tenant)
    assert error.permanent is False
    assert str(error).startswith("attachment 'slow.pdf': fetch failed:")


def test_http_connection_refused_is_temporary(tenant: Tenant) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    error = failure({"filename": "a.pdf", "storage_path": f"http://127.0.0.1:{port}/a.pdf"}, tenant)
    assert error.permanent is False
    assert str(error).startswith("attachment 'a.pdf': fetch failed:")


def test_http_loopback_is_refused_unless_allowed(files: FileServer, tenant: Tenant) -> None:
    url = files.route("/a.pdf", b"a")
    with override_settings(GMP_ALLOWED_HOSTS=[]):
        error = failure({"filename": "a.pdf", "storage_path": url}, tenant)
    assert error.permanent is True
    assert str(error).startswith("attachment 'a.pdf': refused: 127.0.0.1 resolves to 127.0.0.1")
    assert files.count("/a.pdf") == 0


def test_http_scheme_other_than_http_is_refused(tenant: Tenant) -> None:
    error = failure({"filename": "a.pdf", "storage_path": "ftp://example.com/a.pdf", "fetch_mode": "http_url"},
                    tenant)
    assert error.permanent is True
    assert "scheme 'ftp' is not allowed" in str(error)


@override_settings(GMP_MAX_ATTACHMENT_MB=1)
def test_http_answer_over_the_size_cap_is_permanent(files: FileServer, tenant: Tenant) -> None:
    fits = files.route("/fits.bin", b"x" * MB)
    big = files.route("/big.bin", b"x" * (MB + 1))
    assert len(one({"filename": "fits.bin", "storage_path": fits}, tenant).content) == MB
    error = failure({"filename": "big.bin", "storage_path": big}, tenant)
    assert (str(error), error.permanent) == ("attachment 'big.bin': larger than 1 MB (GMP_MAX_ATTACHMENT_MB)", True)


def test_http_url_sends_only_the_items_own_auth(files: FileServer) -> None:
    tenant = TenantFactory(client_auth_method="bearer", client_auth_secret_encrypted=crypto.encrypt("tenant-token"))
    plain = files.route("/plain.pdf", b"p")
    bearer = files.route("/bearer.pdf", b"b")
    basic_url = files.route("/basic.pdf", b"c")
    fetch_attachments([
        {"filename": "plain.pdf", "storage_path": plain},
        {"filename": "bearer.pdf", "storage_path": bearer, "auth": {"method": "bearer", "token": "item-token"}},
        {"filename": "basic.pdf", "storage_path": basic_url,
         "auth": {"method": "basic", "user": "ann", "password": "pw:1"}},
    ], tenant=tenant)
    assert "Authorization" not in files.last("/plain.pdf").headers
    assert files.last("/bearer.pdf").headers["Authorization"] == "Bearer item-token"
    assert files.last("/basic.pdf").headers["Authorization"] == basic("ann", "pw:1")


def test_invalid_auth_is_permanent(files: FileServer, tenant: Tenant) -> None:
    url = files.route("/a.pdf", b"a")
    error = failure({"filename": "a.pdf", "storage_path": url, "auth": {"method": "bearer"}}, tenant)
    assert (str(error), error.permanent) == ("attachment 'a.pdf': auth is not a valid bearer, basic or none setting",
                                             True)
    assert files.count("/a.pdf") == 0


# MD5 checks


def test_md5_marker_is_checked_and_removed(files: FileServer, tenant: Tenant) -> None:
    good = files.route("/good.txt", b"a")
    bad = files.route("/bad.txt", b"b")
    attachment = one({"filename": f"note_{{MD5:{MD5_A}}}.txt", "storage_path": good}, tenant)
    assert (attachment.filename, attachment.content) == ("note.txt", b"a")
    md5_c = hashlib.md5(b"c", usedforsecurity=False).hexdigest()
    error = failure({"filename": f"other_{{MD5:{md5_c}}}.txt", "storage_path": bad}, tenant)
    assert error.permanent is True
    assert str(error).startswith(f"attachment 'other.txt': content does not match its MD5 (expected {md5_c}")


def test_content_md5_mismatch_is_permanent_in_every_mode(files: FileServer, tenant: Tenant) -> None:
    url = files.route("/b.txt", b"b")
    for storage_path in (url, "base64:Yg=="):
        error = failure({"filename": "b.txt", "storage_path": storage_path, "content_md5": MD5_A.upper()}, tenant)
        assert error.permanent is True
        assert "content does not match its MD5" in str(error)
    assert one({"filename": "a.txt", "storage_path": "base64:YQ==", "content_md5": MD5_A}, tenant).content == b"a"


def test_conflicting_or_malformed_md5_fails_before_fetching(files: FileServer, tenant: Tenant) -> None:
    url = files.route("/a.txt", b"a")
    other = hashlib.md5(b"z", usedforsecurity=False).hexdigest()
    conflict = failure({"filename": f"a_{{MD5:{MD5_A}}}.txt", "storage_path": url, "content_md5": other}, tenant)
    malformed = failure({"filename": "a.txt", "storage_path": url, "content_md5": "abc"}, tenant)
    assert str(conflict) == "attachment 'a.txt': the MD5 marker in the file name and content_md5 disagree"
    assert str(malformed) == "attachment 'a.txt': content_md5 is not 32 hexadecimal digits"
    assert conflict.permanent
    assert malformed.permanent
    assert files.count("/a.txt") == 0


# endpoint


def test_endpoint_posts_the_storage_path_with_the_tenants_bearer(files: FileServer, endpoint_tenant: Tenant) -> None:
    files.route("/mail-proxy/attachments", b"document bytes")
    attachment = one({"filename": "doc.pdf", "storage_path": "doc_id=123"}, endpoint_tenant)
    request = files.last("/mail-proxy/attachments")
    assert attachment.content == b"document bytes"
    assert request.method == "POST"
    assert json.loads(request.body) == {"storage_path": "doc_id=123"}
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Authorization"] == "Bearer tenant-token"
    assert "X-Mail-Proxy-Signature" not in request.headers


def test_endpoint_with_basic_auth_custom_path_and_signature(files: FileServer) -> None:
    tenant = TenantFactory(client_base_url=files.url, client_attachment_path="/files/fetch",
                           client_auth_method="basic", client_auth_user="proxy",
                           client_auth_secret_encrypted=crypto.encrypt("pass"),
                           signing_secret_encrypted=crypto.encrypt("sign-me"))
    files.route("/files/fetch", b"doc")
    assert one({"filename": "doc.pdf", "storage_path": "doc_id=9"}, tenant).content == b"doc"
    request = files.last("/files/fetch")
    assert request.headers["Authorization"] == basic("proxy", "pass")
    stamp = request.headers["X-Mail-Proxy-Timestamp"]
    digest = hmac.new(b"sign-me", stamp.encode() + b"." + request.body, hashlib.sha256).hexdigest()
    assert request.headers["X-Mail-Proxy-Signature"] == f"sha256={digest}"


def test_endpoint_auth_is_overridden_per_attachment(files: FileServer, endpoint_tenant: Tenant) -> None:
    files.route("/mail-proxy/attachments", b"doc")
    one({"filename": "a.pdf", "storage_path": "id=1", "auth": {"method": "bearer", "token": "own"}}, endpoint_tenant)
    assert files.last("/mail-proxy/attachments").headers["Authorization"] == "Bearer own"
    one({"filename": "b.pdf", "storage_path": "id=2", "auth": {"method": "basic", "user": "u", "password": "p"}},
        endpoint_tenant)
    assert files.last("/mail-proxy/attachments").headers["Authorization"] == basic("u", "p")
    one({"filename": "c.pdf", "storage_path": "id=3", "auth": {"method": "none"}}, endpoint_tenant)
    assert "Authorization" not in files.last("/mail-proxy/attachments").headers


def test_endpoint_json_answer_with_base64_content_is_decoded(files: FileServer, endpoint_tenant: Tenant) -> None:
    files.route("/mail-proxy/attachments", json.dumps({"content": base64.b64encode(b"\x00binary").decode()}).encode(),
                headers={"Content-Type": "application/json; charset=utf-8"})
    assert one({"filename": "a.bin", "storage_path": "id=1"}, endpoint_tenant).content == b"\x00binary"


def test_endpoint_json_answer_without_content_is_the_file(files: FileServer, endpoint_tenant: Tenant) -> None:
    body = json.dumps({"invoice": 42}).encode()
    files.route("/mail-proxy/attachments", body, headers={"Content-Type": "application/json"})
    assert one({"filename": "invoice.json", "storage_path": "id=1"}, endpoint_tenant).content == body


@pytest.mark.parametrize(("status", "permanent"), [(404, True), (410, True), (500, False), (503, False)])
def test_endpoint_status_classification(status: int, permanent: bool, files: FileServer,
                                        endpoint_tenant: Tenant) -> None:
    files.route("/mail-proxy/attachments", b"", status=status)
    error = failure({"filename": "doc.pdf", "storage_path": "id=1"}, endpoint_tenant)
    assert (str(error), error.permanent) == (f"attachment 'doc.pdf': HTTP {status}", permanent)


def test_endpoint_without_client_base_url_is_permanent(tenant: Tenant) -> None:
    error = failure({"filename": "doc.pdf", "storage_path": "doc_id=1"}, tenant)
    assert (str(error), error.permanent) == (
        "attachment 'doc.pdf': the tenant has no client_base_url for endpoint attachments", True)


def test_endpoint_to_loopback_is_refused_unless_allowed(files: FileServer, endpoint_tenant: Tenant) -> None:
    files.route("/mail-proxy/attachments", b"doc")
    with override_settings(GMP_ALLOWED_HOSTS=[]):
        error = failure({"filename": "doc.pdf", "storage_path": "id=1"}, endpoint_tenant)
    assert error.permanent is True
    assert files.count("/mail-proxy/attachments") == 0


def test_temp_files_are_not_left_in_the_base_folder(base_dir: Path, tenant: Tenant) -> None:
    (base_dir / "a.txt").write_bytes(b"a")
    one({"filename": "a.txt", "storage_path": str(base_dir / "a.txt")}, tenant)
    assert os.listdir(base_dir) == ["a.txt"]
