"""PEC receipts, kept as legal evidence with their raw message."""

from __future__ import annotations

from django.db import models

from queueing.models import Message
from tenants.models import SmtpAccount, Tenant


class PecReceiptRecord(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="pec_receipts")
    message = models.ForeignKey(Message, on_delete=models.SET_NULL, null=True, blank=True,
                                related_name="pec_receipts")
    account = models.ForeignKey(SmtpAccount, on_delete=models.SET_NULL, null=True, blank=True)
    receipt_type = models.CharField(max_length=40)
    event_type = models.CharField(max_length=20)
    recipient = models.CharField(max_length=320, blank=True)
    pec_ts = models.DateTimeField(null=True, blank=True)  # the provider's certified time
    error = models.TextField(blank=True)
    identificativo = models.CharField(max_length=500, blank=True)
    dedupe_key = models.CharField(max_length=64, unique=True)
    raw = models.BinaryField()
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.receipt_type} {self.recipient}"
