from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from delivery.largefiles import MB, apply_policy, cleanup_expired, remove_tenant_files
from delivery.models import StoredFile
from tenants.models import Tenant
from tests.delivery.largefiles.items import Item
from tests.factories import TenantFactory

pytestmark = pytest.mark.django_db

BIG = Item("big.bin", b"z" * (MB + 1))


def _rewrite_tenant(store: Path, ttl: int) -> Tenant:
    return TenantFactory(large_file_config={"enabled": True, "action": "rewrite", "max_size_mb": 1,
                                            "file_ttl_days": ttl, "storage_url": f"file://{store}",
                                            "public_base_url": "http://testserver"})


def test_cleanup_removes_expired_files_and_rows_and_keeps_the_others(tmp_path: Path) -> None:
    short, long = _rewrite_tenant(tmp_path, 1), _rewrite_tenant(tmp_path, 30)
    for _ in range(2):
        apply_policy(tenant=short, attachments=[BIG])
    apply_policy(tenant=long, attachments=[BIG])
    expired = list(StoredFile.objects.filter(tenant=short))
    kept = StoredFile.objects.get(tenant=long)

    assert cleanup_expired(now=timezone.now() + timedelta(days=2)) == 2

    assert list(StoredFile.objects.all()) == [kept]
    assert (tmp_path / kept.key).is_file()
    assert not any((tmp_path / stored.key).exists() for stored in expired)


def test_cleanup_before_expiry_removes_nothing(tmp_path: Path) -> None:
    apply_policy(tenant=_rewrite_tenant(tmp_path, 1), attachments=[BIG])
    assert cleanup_expired() == 0
    assert StoredFile.objects.count() == 1


def test_cleanup_twice_counts_once_and_tolerates_a_file_already_gone(tmp_path: Path) -> None:
    apply_policy(tenant=_rewrite_tenant(tmp_path, 1), attachments=[BIG])
    (tmp_path / StoredFile.objects.get().key).unlink()
    later = timezone.now() + timedelta(days=2)
    assert cleanup_expired(now=later) == 1
    assert cleanup_expired(now=later) == 0
    assert not StoredFile.objects.exists()


def test_a_store_that_cannot_delete_keeps_its_row_for_the_next_run(tmp_path: Path) -> None:
    tenant = TenantFactory()
    StoredFile.objects.create(tenant=tenant, storage_url="nope://bucket/p", key="k", filename="k", size=1,
                              expires_at=timezone.now() - timedelta(days=1))
    assert cleanup_expired() == 0
    assert StoredFile.objects.count() == 1


def test_cleanup_works_through_many_batches(tmp_path: Path) -> None:
    tenant = TenantFactory()
    past = timezone.now() - timedelta(seconds=1)
    StoredFile.objects.bulk_create([
        StoredFile(tenant=tenant, storage_url=f"file://{tmp_path}", key=f"{tenant.id}/{n}/f", filename="f", size=1,
                   expires_at=past)
        for n in range(1203)
    ])
    assert cleanup_expired() == 1203
    assert not StoredFile.objects.exists()


def test_remove_tenant_files_removes_only_that_tenants_files(tmp_path: Path) -> None:
    mine, theirs = _rewrite_tenant(tmp_path, 30), _rewrite_tenant(tmp_path, 30)
    apply_policy(tenant=mine, attachments=[BIG])
    apply_policy(tenant=theirs, attachments=[BIG])
    gone = StoredFile.objects.get(tenant=mine)
    assert remove_tenant_files(tenant=mine) == 1
    assert not (tmp_path / gone.key).exists()
    assert StoredFile.objects.get().tenant_id == theirs.pk
