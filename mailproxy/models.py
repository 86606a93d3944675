"""The instance's own rows: the SQL metrics store and the beat heartbeat (embedded instance).

With Redis configured both live in Redis instead (see mailproxy/metrics.py); these tables
then stay empty.
"""

from __future__ import annotations

from django.db import models


class MetricSample(models.Model):
    """One stored counter of the fleet's metrics: a counter series, a histogram bucket or sum.

    `name` is the stored sample ("gmp_sent_total", "gmp_smtp_seconds:bucket"), `labels` the
    canonical JSON of its labels. Workers only ever add to `value` (one upsert per sample).
    """

    name = models.CharField(max_length=100)
    labels = models.TextField(default="{}")
    value = models.FloatField(default=0.0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["name", "labels"], name="metric_sample_unique")]

    def __str__(self) -> str:
        return f"{self.name}{self.labels} = {self.value}"


class Heartbeat(models.Model):
    """When a periodic part of the fleet last showed it is alive ("beat")."""

    name = models.CharField(primary_key=True, max_length=50)
    at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.name}@{self.at.isoformat()}"
