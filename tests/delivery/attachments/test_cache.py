"""The attachment cache: one fetch per document across calls, threads, cache instances and processes."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings

from delivery.attachments import AttachmentError, cache_key, fetch_attachments
from delivery.attachments.cache import AttachmentCache, DiskCache, MemoryCache
from delivery.attachments.fetchers import FETCHERS
from tenants.models import Tenant
from tests.factories import TenantFactory
from tests.file_server import FileServer

pytestmark = pytest.mark.django_db

KB = 1024


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def fetch_url(url: str, tenant: Tenant, filename: str = "doc.pdf", **extra: Any) -> bytes:
    [attachment] = fetch_attachments([{"filename": filename, "storage_path": url, **extra}], tenant=tenant)
    return attachment.content


def entries(folder: Path) -> list[str]:
    return sorted(name for name in os.listdir(folder) if len(name) == 64)


def test_the_same_url_in_50_messages_is_fetched_once(files: FileServer, tenant: Tenant) -> None:
    url = files.route("/shared.pdf", b"shared")
    assert {fetch_url(url, tenant) for _ in range(50)} == {b"shared"}
    assert files.count("/shared.pdf") == 1


def test_concurrent_callers_share_one_fetch(files: FileServer, tenant: Tenant) -> None:
    url = files.route("/shared.pdf", b"shared", delay=0.15)
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(fetch_url(url, tenant))) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [b"shared"] * 10
    assert files.count("/shared.pdf") == 1


def test_concurrent_callers_share_a_failure_too(files: FileServer, tenant: Tenant) -> None:
    url = files.route("/gone.pdf", status=404, delay=0.1)
    with pytest.raises(AttachmentError) as caught:
        fetch_attachments([{"filename": f"{n}.pdf", "storage_path": url} for n in range(4)], tenant=tenant)
    assert str(caught.value) == "attachment '0.pdf': HTTP 404"
    assert files.count("/gone.pdf") == 1


def test_failures_are_not_cached(files: FileServer, tenant: Tenant) -> None:
    url = files.route("/later.pdf", status=503)
    with pytest.raises(AttachmentError):
        fetch_url(url, tenant)
    files.route("/later.pdf", b"now")
    assert fetch_url(url, tenant) == b"now"
    assert files.count("/later.pdf") == 2


def test_a_known_md5_is_the_key_whatever_the_url(files: FileServer, tenant: Tenant) -> None:
    md5 = hashlib.md5(b"same", usedforsecurity=False).hexdigest()
    first = files.route("/first.pdf", b"same")
    second = files.route("/second.pdf", b"same")
    assert fetch_url(first, tenant, f"a_{{MD5:{md5}}}.pdf") == b"same"
    assert fetch_url(second, tenant, "b.pdf", content_md5=md5) == b"same"
    assert (files.count("/first.pdf"), files.count("/second.pdf")) == (1, 0)


def test_endpoint_documents_are_cached_per_storage_path(files: FileServer) -> None:
    tenant = TenantFactory(client_base_url=files.url)
    files.route("/mail-proxy/attachments", b"doc")
    for storage_path in ("doc_id=1", "doc_id=1", "doc_id=2", "doc_id=1"):
        fetch_url(storage_path, tenant)
    assert files.count("/mail-proxy/attachments") == 2


def test_tenants_do_not_share_entries(files: FileServer, tenant: Tenant, other_tenant: Tenant) -> None:
    url = files.route("/doc.pdf", b"doc")
    fetch_url(url, tenant)
    fetch_url(url, other_tenant)
    fetch_url(url, tenant)
    assert files.count("/doc.pdf") == 2


def test_base64_and_filesystem_items_are_not_cached(tmp_path: Path, cache_dir: Path, tenant: Tenant) -> None:
    (tmp_path / "a.txt").write_bytes(b"first")
    with override_settings(GMP_ATTACHMENT_BASE_DIRS=[str(tmp_path)]):
        assert fetch_url(str(tmp_path / "a.txt"), tenant) == b"first"
        (tmp_path / "a.txt").write_bytes(b"second")
        assert fetch_url(str(tmp_path / "a.txt"), tenant) == b"second"
    assert fetch_url("base64:YQ==", tenant) == b"a"
    assert not cache_dir.exists() or entries(cache_dir) == []


def test_keys(tenant: Tenant) -> None:
    assert cache_key(mode="http_url", storage_path="https://x/a", md5=None, tenant=tenant) == "url:acme:https://x/a"
    assert cache_key(mode="endpoint", storage_path="id=1", md5=None, tenant=tenant) == "endpoint:acme:id=1"
    assert cache_key(mode="endpoint", storage_path="id=1", md5="ab" * 16, tenant=tenant) == f"md5:acme:{'ab' * 16}"
    assert cache_key(mode="base64", storage_path="base64:YQ==", md5="ab" * 16, tenant=tenant) is None
    assert cache_key(mode="filesystem", storage_path="/a", md5=None, tenant=tenant) is None


# Memory tier


def test_memory_evicts_the_least_recently_used_by_size() -> None:
    memory = MemoryCache(max_bytes=1000)
    forever = time.time() + 3600
    memory.put("a", b"a" * 400, expires_at=forever)
    memory.put("b", b"b" * 400, expires_at=forever)
    assert memory.get("a") == b"a" * 400  # now b is the least recently used
    memory.put("c", b"c" * 400, expires_at=forever)
    memory.put("huge", b"h" * 1001, expires_at=forever)
    assert ("a" in memory, "b" in memory, "c" in memory, "huge" in memory) == (True, False, True, False)
    assert memory.size == 800


@override_settings(GMP_CACHE_MEMORY_MB=1, GMP_CACHE_DISK_MB=0)
def test_memory_cache_bounded_by_size_fetches_evicted_entries_again(files: FileServer, tenant: Tenant) -> None:
    urls = [files.route(f"/{n}.bin", bytes([n]) * 400 * KB) for n in range(3)]
    for url in urls:
        fetch_url(url, tenant)
    fetch_url(urls[2], tenant)
    fetch_url(urls[0], tenant)
    assert [files.count(f"/{n}.bin") for n in range(3)] == [2, 1, 1]


# Disk tier


def test_disk_cache_survives_a_new_cache_instance(files: FileServer, tenant: Tenant, cache_dir: Path) -> None:
    url = files.route("/doc.pdf", b"on disk")
    fetch_url(url, tenant)
    key = f"url:acme:{url}"
    assert entries(cache_dir) == [hashlib.sha256(key.encode()).hexdigest()]
    assert AttachmentCache.from_settings().get(key) == b"on disk"
    with override_settings(GMP_CACHE_MEMORY_MB=0):  # a new process: nothing in memory
        assert fetch_url(url, tenant) == b"on disk"
    assert files.count("/doc.pdf") == 1


def test_disk_entries_older_than_the_ttl_are_fetched_again(files: FileServer, tenant: Tenant,
                                                           cache_dir: Path) -> None:
    url = files.route("/doc.pdf", b"doc")
    fetch_url(url, tenant)
    [name] = entries(cache_dir)
    old = time.time() - settings.GMP_CACHE_TTL - 1
    os.utime(cache_dir / name, (old, old))
    with override_settings(GMP_CACHE_MEMORY_MB=0):
        fetch_url(url, tenant)
    assert files.count("/doc.pdf") == 2
    assert os.stat(cache_dir / name).st_mtime > old


def test_ttl_expiry_in_memory_and_on_disk(files: FileServer, tenant: Tenant, cache_dir: Path) -> None:
    url = files.route("/doc.pdf", b"doc")
    item = {"filename": "doc.pdf", "storage_path": url}
    clock = Clock()

    def new_cache() -> AttachmentCache:
        return AttachmentCache(memory_bytes=KB * KB, directory=cache_dir, disk_bytes=KB * KB, ttl=60, clock=clock)

    def fetch() -> bytes:
        return FETCHERS["http_url"].fetch(item, tenant)

    cache = new_cache()
    cache.get_or_fetch("url:doc", fetch)
    clock.now += 59
    cache.get_or_fetch("url:doc", fetch)
    new_cache().get_or_fetch("url:doc", fetch)
    assert files.count("/doc.pdf") == 1
    clock.now += 2
    cache.get_or_fetch("url:doc", fetch)  # memory and disk both expired
    assert files.count("/doc.pdf") == 2
    clock.now += 61
    new_cache().get_or_fetch("url:doc", fetch)
    assert files.count("/doc.pdf") == 3


@override_settings(GMP_CACHE_TTL=0)
def test_zero_ttl_turns_caching_off(files: FileServer, tenant: Tenant, cache_dir: Path) -> None:
    url = files.route("/doc.pdf", b"doc")
    fetch_url(url, tenant)
    fetch_url(url, tenant)
    assert files.count("/doc.pdf") == 2
    assert not cache_dir.exists()


def test_disk_evicts_the_oldest_entries_by_size(tmp_path: Path) -> None:
    clock = Clock()
    disk = DiskCache(directory=tmp_path, max_bytes=1000, ttl=3600, clock=clock)
    for key in ("a", "b", "c"):
        disk.put(key, key.encode() * 400)
        clock.now += 1
    disk.put("huge", b"h" * 1001)
    assert [disk.get(key) is not None for key in ("a", "b", "c", "huge")] == [False, True, True, False]
    assert sum(os.path.getsize(tmp_path / name) for name in entries(tmp_path)) == 800
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".tmp-")]


def test_disk_sweeps_stale_temp_and_lock_files(tmp_path: Path) -> None:
    clock = Clock()
    disk = DiskCache(directory=tmp_path, max_bytes=1000, ttl=60, clock=clock)
    with disk.locked("a", wait=1):
        disk.put("a", b"a")
    (tmp_path / ".tmp-crashed").write_bytes(b"partial")
    old = clock.now - 7200
    for name in os.listdir(tmp_path):
        os.utime(tmp_path / name, (old, old))
    disk.put("b", b"b")
    assert sorted(os.listdir(tmp_path)) == [hashlib.sha256(b"b").hexdigest()]


def test_a_lock_held_too_long_elsewhere_is_not_waited_for(files: FileServer, tenant: Tenant, cache_dir: Path) -> None:
    url = files.route("/doc.pdf", b"doc")
    item = {"filename": "doc.pdf", "storage_path": url}
    cache = AttachmentCache(memory_bytes=KB, directory=cache_dir, disk_bytes=KB, ttl=60, lock_wait=0.1)
    assert cache.disk is not None
    with cache.disk.locked("url:doc", wait=0):  # another process, stuck in its fetch
        content = cache.get_or_fetch("url:doc", lambda: FETCHERS["http_url"].fetch(item, tenant))
    assert content == b"doc"
    assert files.count("/doc.pdf") == 1


def test_two_processes_fetch_a_shared_url_once(files: FileServer, cache_dir: Path) -> None:
    content = b"shared document " * 1000
    url = files.route("/shared.pdf", content, delay=0.3)
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "GMP_CACHE_DIR": str(cache_dir)}
    workers = [subprocess.Popen([sys.executable, "-m", "tests.delivery.attachments.worker_process", url, "acme"],
                                cwd=settings.BASE_DIR, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        for worker in workers:
            assert worker.stdout is not None
            assert worker.stdout.readline().strip() == "ready", worker.communicate(timeout=5)[1]
        for worker in workers:  # both start fetching at the same time
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        outcomes = [worker.communicate(timeout=20) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    expected = hashlib.md5(content, usedforsecurity=False).hexdigest()
    assert [out.strip() for out, _ in outcomes] == [expected, expected], [err for _, err in outcomes]
    assert files.count("/shared.pdf") == 1
