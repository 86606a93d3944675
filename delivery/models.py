"""Records of the delivery app."""

from __future__ import annotations

from datetime import datetime

from django.db import models
from django.utils import timezone

from tenants.models import Tenant


class StoredFile(models.Model):
    """A large attachment uploaded to a tenant's store (SPEC §9), kept so cleanup can remove it.

    `storage_url` is the store as it was when the file went up, so a later change of the
    tenant's config never strands a file; `key` is the file's path inside that store.
    """

    # Kept when the tenant is deleted, so the cleanup still removes the file from its store.
    tenant = models.ForeignKey(Tenant, on_delete=models.SET_NULL, null=True, blank=True,
                               related_name="stored_files")
    storage_url = models.CharField(max_length=1000)
    key = models.CharField(max_length=1024)
    filename = models.CharField(max_length=255)
    size = models.PositiveBigIntegerField()
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["expires_at"], name="stored_file_expires_at")]

    def __str__(self) -> str:
        return f"{self.tenant_id}/{self.key}"

    def is_expired(self, now: datetime) -> bool:
        return self.expires_at <= now
