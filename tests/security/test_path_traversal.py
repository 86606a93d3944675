"""Path traversal: filesystem attachments stay inside GMP_ATTACHMENT_BASE_DIRS, stored-file links
cannot be forged, and a hostile file name cannot place an upload outside its store.

"Nothing is read" is observed through Python's `open` audit event (builtins.open and
os.open raise it): no path under the outside folder is ever opened by the process.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core import signing
from django.db import connection
from django.test import Client, override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from delivery import services
from delivery.largefiles import FILES_SALT, apply_policy, make_token
from delivery.models import StoredFile
from queueing.models import Message, Status
from tenants.models import SmtpAccount, Tenant
from tests.conftest import message
from tests.delivery.largefiles.items import Item
from tests.security.conftest import OpenRecorder
from tests.smtp_sink import SmtpSink

pytestmark = pytest.mark.django_db

SECRET = b"OUTSIDE-THE-BASE-DIRS"
NOT_FOUND = {"ok": False, "error": "not found", "details": None}


@dataclass(frozen=True)
class Tree:
    base: Path
    outside: Path


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Tree]:
    base, outside = tmp_path / "base", tmp_path / "outside"
    (base / "sub").mkdir(parents=True)
    outside.mkdir()
    (base / "ok.txt").write_bytes(b"inside and fine")
    (outside / "secret.txt").write_bytes(SECRET)
    (base / "link-out.txt").symlink_to(outside / "secret.txt")
    (base / "linkdir").symlink_to(outside, target_is_directory=True)
    (base / "link-in.txt").symlink_to(base / "ok.txt")
    (base / "dev-zero").symlink_to("/dev/zero")
    os.mkfifo(base / "fifo")
    with override_settings(GMP_ATTACHMENT_BASE_DIRS=[str(base)]):
        yield Tree(base=base, outside=outside)


def _escaping(tree: Tree) -> dict[str, str]:
    """Paths that would leave the base folder if followed."""
    base, outside = tree.base, tree.outside
    return {
        "dot-dot relative": "../outside/secret.txt",
        "dot-dot after a folder": "sub/../../outside/secret.txt",
        "dot-dot in an absolute path": f"{base}/../outside/secret.txt",
        "absolute path elsewhere": f"{outside}/secret.txt",
        "system file": "/etc/passwd",
        "symlink out": "link-out.txt",
        "symlink out, absolute": f"{base}/link-out.txt",
        "through a symlinked folder": "linkdir/secret.txt",
        "symlink to a device": "dev-zero",
        "NUL then dot-dot": "ok.txt\x00/../../outside/secret.txt",
        "NUL at the end": f"{base}/ok.txt\x00",
    }


def _inert(tree: Tree) -> dict[str, str]:
    """Spellings that look like traversal to a URL decoder or a naive filter, but name nothing outside."""
    return {
        "URL-encoded dots": "%2e%2e/outside/secret.txt",
        "URL-encoded dots and slashes": "..%2foutside%2fsecret.txt",
        "double-encoded dots": "%252e%252e/outside/secret.txt",
        "four dots": "....//outside/secret.txt",
        "backslashes": "..\\outside\\secret.txt",
        "a file URL": "file:///etc/passwd",
        "a FIFO": "fifo",
    }


def _attachment(path: str) -> dict[str, Any]:
    return {"filename": "doc.txt", "storage_path": path, "fetch_mode": "filesystem"}


def _case_ids(cases: Callable[[Tree], dict[str, str]]) -> list[str]:
    return list(cases(Tree(Path("/b"), Path("/o"))))


@pytest.mark.parametrize("case", _case_ids(_escaping))
def test_escaping_path_is_refused_at_enqueue_and_nothing_is_read(
    tree: Tree, tenant_client: APIClient, account: SmtpAccount, opened: OpenRecorder, case: str
) -> None:
    path = _escaping(tree)[case]
    answer = tenant_client.post("/commands/add-messages", {"messages": [message(attachments=[_attachment(path)])]},
                                format="json").json()
    assert answer["queued"] == 0, f"{case}: {path!r} was accepted"
    [rejected] = answer["rejected"]
    assert rejected["field"] == "messages[0].attachments[0].storage_path"
    assert not Message.objects.exists()
    assert opened.under(tree.outside) == []


@pytest.fixture
def queued_with(tenant: Tenant, smtp_account: SmtpAccount, tree: Tree) -> Callable[[str], Message]:
    """A message queued with a good file, whose row then names the path under test (past the door)."""

    def make(path: str) -> Message:
        from queueing.services import enqueue_messages

        enqueue_messages(scope=tenant, payloads=[message(attachments=[_attachment("ok.txt")])])
        Message.objects.update(attachments=[_attachment(path)])
        return Message.objects.get()

    return make


@pytest.mark.parametrize("case", _case_ids(_escaping) + _case_ids(_inert))
def test_worker_refuses_the_path_and_reads_nothing_outside(
    tree: Tree, queued_with: Callable[[str], Message], smtp_account: SmtpAccount, smtp_server: SmtpSink,
    opened: OpenRecorder, case: str,
) -> None:
    path = {**_escaping(tree), **_inert(tree)}[case]
    if "\x00" in path and connection.vendor == "postgresql":
        pytest.skip("PostgreSQL cannot store a NUL in a row, so the door's refusal is the only path")
    row = queued_with(path)
    services.send_due(account_pk=smtp_account.pk)
    row.refresh_from_db()
    assert row.status == Status.ERROR, f"{case}: {row.status} {row.last_error}"
    assert "doc.txt" in row.last_error
    assert smtp_server.messages == []
    assert opened.under(tree.outside) == []
    assert not [p for p in opened.paths if p in ("/etc/passwd", "/dev/zero")]


def test_the_same_tree_serves_a_file_inside_and_a_link_that_stays_inside(
    tree: Tree, tenant_client: APIClient, smtp_account: SmtpAccount, smtp_server: SmtpSink, opened: OpenRecorder
) -> None:
    """The control: the confinement refuses what leaves, not everything."""
    answer = tenant_client.post("/commands/add-messages", {"messages": [
        message(id="plain", attachments=[_attachment("ok.txt")]),
        message(id="link", attachments=[_attachment(f"{tree.base}/link-in.txt")]),
    ]}, format="json").json()
    assert answer["queued"] == 2, answer
    services.send_due(account_pk=smtp_account.pk)
    received = smtp_server.wait_for(2)
    for mail in received:
        [part] = list(mail.message.iter_attachments())
        assert part.get_content() in (b"inside and fine", "inside and fine")
    assert any(p.endswith("ok.txt") for p in opened.under(tree.base))
    assert opened.under(tree.outside) == []


# --- stored-file links (/files/<token>) -----------------------------------------------


@pytest.fixture
def stored_link(tmp_path: Path) -> str:
    tenant = Tenant.objects.create(id="bigco", large_file_config={
        "enabled": True, "action": "rewrite", "max_size_mb": 0.001, "storage_url": f"file://{tmp_path}/store",
        "public_base_url": "https://proxy.example.com/"})
    [link] = apply_policy(tenant=tenant, attachments=[Item("report.pdf", b"%PDF-" + b"r" * 4096)]).links
    return "/" + link.url.removeprefix("https://proxy.example.com/")


def _tampered(good: str) -> dict[str, str]:
    token = good.removeprefix("/files/")
    payload, _, signature = token.rpartition(":")
    stored = StoredFile.objects.get()
    flipped = signature[:-1] + ("A" if signature[-1] != "A" else "B")
    return {
        "signature flipped": f"/files/{payload}:{flipped}",
        "signature removed": f"/files/{payload}",
        "signature only": f"/files/{signature}",
        "payload of another file": f"/files/{signing.dumps({'f': stored.pk + 1}, salt='x')}",
        "signed with another salt": f"/files/{signing.dumps({'f': stored.pk}, salt='mail-proxy.other')}",
        "signed for nothing": f"/files/{signing.dumps({}, salt=FILES_SALT)}",
        "a pk that is not a number": f"/files/{signing.dumps({'f': '../../etc/passwd'}, salt=FILES_SALT)}",
        "dot-dot": "/files/..",
        "encoded traversal": "/files/..%2f..%2fetc%2fpasswd",
        "traversal": "/files/../../etc/passwd",
        "NUL": f"/files/{token}%00",
        "empty": "/files/",
        "huge": "/files/" + "A" * 10000,
    }


def test_tampered_download_tokens_are_all_answered_404(stored_link: str) -> None:
    client = Client(raise_request_exception=False)
    good = client.get(stored_link)
    assert good.status_code == 200
    assert b"".join(good.streaming_content).startswith(b"%PDF-")  # type: ignore[attr-defined]
    for case, url in _tampered(stored_link).items():
        response = client.get(url)
        assert (response.status_code, response.json()) == (404, NOT_FOUND), f"{case}: {url}"


def test_expired_or_removed_file_is_answered_like_a_forged_token(stored_link: str) -> None:
    client = Client()
    StoredFile.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    expired = client.get(stored_link)
    StoredFile.objects.all().delete()
    removed = client.get(stored_link)
    assert (expired.status_code, expired.json()) == (removed.status_code, removed.json()) == (404, NOT_FOUND)


def test_a_stored_row_whose_key_leaves_its_store_is_not_served(stored_link: str, tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_bytes(SECRET)
    StoredFile.objects.update(key="../secret.txt")
    response = Client(raise_request_exception=False).get(stored_link)
    assert (response.status_code, response.json()) == (404, NOT_FOUND)


@pytest.mark.parametrize("filename", [
    "../../../escaped.pdf", "/tmp/escaped.pdf",  # noqa: S108 (a hostile name, never a path used)
    "..\\..\\escaped.pdf", "sub/../../escaped.pdf", "..", ".",
])
def test_a_hostile_file_name_cannot_place_an_upload_outside_its_store(tmp_path: Path, filename: str) -> None:
    store = tmp_path / "deep" / "store"
    tenant = Tenant.objects.create(id="bigco", large_file_config={
        "enabled": True, "action": "rewrite", "max_size_mb": 0.001, "storage_url": f"file://{store}",
        "public_base_url": "https://proxy.example.com/"})
    apply_policy(tenant=tenant, attachments=[Item(filename, b"%PDF-" + b"r" * 4096)])
    stored = StoredFile.objects.get()
    written = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert written == [store / stored.key]
    assert (store / stored.key).resolve().is_relative_to(store.resolve())
    assert make_token(stored)  # the link names the row, never the path
