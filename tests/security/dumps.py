"""Everything a secret could have been written to, as text to search: the database, the broker."""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path

import redis
from django.conf import settings
from django.db import connection


def database_text() -> str:
    """Every row of every table, as text (PostgreSQL: each row cast to text; SQLite: a full dump)."""
    if connection.vendor == "sqlite":
        connection.ensure_connection()
        return "\n".join(connection.connection.iterdump())
    parts = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names(cursor):
            cursor.execute(f"SELECT CAST(t AS text) FROM {connection.ops.quote_name(table)} AS t")  # noqa: S608
            parts.extend(f"{table}: {row[0]}" for row in cursor.fetchall())
    return "\n".join(parts)


def broker_text() -> str:
    """Every message waiting in the Celery broker: the Redis database's keys and values, or the
    filesystem transport's folders."""
    broker = settings.CELERY_BROKER_URL
    if broker.startswith("filesystem"):
        options = settings.CELERY_BROKER_TRANSPORT_OPTIONS
        folders = {options["data_folder_in"], options["data_folder_out"], options["processed_folder"]}
        return "\n".join(_with_bodies(path.read_bytes().decode("utf-8", "replace")) for folder in folders
                          for path in sorted(Path(folder).glob("*")) if path.is_file())
    client = redis.Redis.from_url(broker)
    parts = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        if kind == "string":
            values = [client.get(key) or b""]
        elif kind == "list":
            values = client.lrange(key, 0, -1)
        elif kind == "hash":
            values = [item for pair in client.hgetall(key).items() for item in pair]
        elif kind == "set":
            values = list(client.smembers(key))
        elif kind == "zset":
            values = [member for member, _ in client.zrange(key, 0, -1, withscores=True)]
        else:
            values = []
        parts.append(key.decode("utf-8", "replace") + ": " + " ".join(
            _with_bodies(value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value))
            for value in values))
    return "\n".join(parts)


def _with_bodies(text: str) -> str:
    """The text, plus the decoded body of a kombu message in it (kombu sends bodies in base64)."""
    try:
        envelope = json.loads(text)
    except ValueError:
        return text
    if isinstance(envelope, list) and envelope and isinstance(envelope[0], str):
        envelope = _loads(envelope[0])  # the `unacked` hash keeps [message, exchange, routing key]
    if not isinstance(envelope, dict) or not isinstance(envelope.get("body"), str):
        return text
    try:
        body = base64.b64decode(envelope["body"]).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return text
    return f"{text}\n{body}"


def _loads(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return None
