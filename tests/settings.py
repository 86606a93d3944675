"""Settings for the test suite: the product's settings with fixed test secrets.

DATABASE_URL picks the database as in production (PostgreSQL in CI, SQLite when unset).
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("MAIL_PROXY_ENCRYPTION_KEY", "dGVzdC1rZXktMDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY=")
os.environ.setdefault("GMP_API_TOKEN", "test-admin-token-0123456789abcdefghijklmnop")
os.environ.setdefault("DJANGO_SECRET_KEY", "test-only-django-key-that-is-long-enough-for-the-checks")
os.environ.setdefault("GMP_DATA_DIR", tempfile.mkdtemp(prefix="mail-proxy-test-"))
if os.environ.get("DATABASE_URL", "").startswith("postgres"):
    # The server run uses Redis (broker and limiter), on a database of its own so the suite
    # never mixes its tasks and buckets with a development instance's. The SQLite run keeps
    # the embedded defaults: filesystem broker, SQL limiter.
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/13")

from mailproxy.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# The suite calls the API far faster than any client should; tests/tenants/test_throttling.py sets a rate.
GMP_API_RATE = "off"
# Tenant callback servers of the tests listen on loopback.
GMP_ALLOWED_HOSTS = ["127.0.0.1"]
LOGGING["loggers"]["mail.log"] = {"level": "WARNING"}  # noqa: F405 (aiosmtpd logs every command)
