"""Settings of mail-proxy, read from the environment (see .env.example).

With nothing set this is the embedded instance: an SQLite file in GMP_DATA_DIR, and the
secret key, encryption key and admin token generated once into that folder. Production
sets DATABASE_URL, REDIS_URL, GMP_API_TOKEN and MAIL_PROXY_ENCRYPTION_KEY.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Any

import dj_database_url

from mailproxy.env import ConfigError, env_bool, env_float, env_int, env_int_list, env_list, env_secret, env_str
from mailproxy.rates import parse_rate
from tenants.crypto import generate_key

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DEBUG", False)

DATA_DIR = Path(env_str("GMP_DATA_DIR", str(BASE_DIR / "var"))).expanduser()
DB_PATH = Path(env_str("GMP_DB_PATH", str(DATA_DIR / "mail_service.db"))).expanduser()
DATABASE_URL = env_str("DATABASE_URL", "")
# Set at all, REDIS_URL moves the embedded instance's broker and limiter to Redis.
REDIS_CONFIGURED = env_str("REDIS_URL", "") != ""
# Embedded: the single-process default on SQLite, which may generate its own secrets.
EMBEDDED = DATABASE_URL == "" or DATABASE_URL.startswith("sqlite")


def _instance_secret(filename: str, make: object) -> str:
    """Read a secret kept in the data folder, creating it (mode 0600) on first use."""
    path = DATA_DIR / filename
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    value = make() if callable(make) else str(make)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(value + "\n")
    return value


SECRET_KEY = env_secret("DJANGO_SECRET_KEY") or (
    _instance_secret("secret_key", lambda: secrets.token_urlsafe(50)) if EMBEDDED else ""
)
MAIL_PROXY_ENCRYPTION_KEY = env_secret("MAIL_PROXY_ENCRYPTION_KEY") or (
    _instance_secret("encryption.key", generate_key) if EMBEDDED else ""
)
MAIL_PROXY_ENCRYPTION_OLD_KEYS = env_list("MAIL_PROXY_ENCRYPTION_OLD_KEYS")
GMP_API_TOKEN = env_secret("GMP_API_TOKEN") or (
    _instance_secret("api_token", lambda: secrets.token_urlsafe(32)) if EMBEDDED else ""
)

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["*"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "tenants",
    "queueing",
    "delivery",
    "bounces",
    "pec",
    "mailproxy",
    "django_prometheus",
]

MIDDLEWARE = [
    # First and last: django-prometheus times the whole request, the other middlewares included.
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "mailproxy.middleware.RequestSizeLimitMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # The admin's and the API docs' static files, served by every web process: nothing else to run.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "mailproxy.urls"
WSGI_APPLICATION = "mailproxy.wsgi.application"
APPEND_SLASH = False

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Read whichever database: documented once, it must not warn as unknown on SQLite.
GMP_DB_CONN_MAX_AGE = env_int("GMP_DB_CONN_MAX_AGE", 60, minimum=0)
DATABASES: dict[str, Any]
if EMBEDDED:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(DB_PATH) if not DATABASE_URL else dj_database_url.parse(DATABASE_URL)["NAME"],
            "OPTIONS": {
                # WAL lets the web process read while a worker writes; IMMEDIATE takes the
                # write lock at BEGIN so two writers queue instead of failing mid-transaction.
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
            },
        }
    }
    DB_PATH.parent.mkdir(parents=True, exist_ok=True)
else:
    DATABASES = {
        "default": dj_database_url.parse(
            DATABASE_URL,
            conn_max_age=GMP_DB_CONN_MAX_AGE,
            conn_health_checks=True,
        )
    }

# django-prometheus's wrappers of the same backends count queries, errors and connections.
DATABASES["default"]["ENGINE"] = DATABASES["default"]["ENGINE"].replace("django.db.backends.",
                                                                        "django_prometheus.db.backends.")

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# Outside the data folder: a volume kept across upgrades must not serve old assets.
STATIC_ROOT = Path(env_str("GMP_STATIC_ROOT", str(BASE_DIR / "var" / "static"))).expanduser()
# Straight from the installed apps when not collected (`make run`, instance folders).
WHITENOISE_USE_FINDERS = True
with contextlib.suppress(OSError):  # a read-only tree: then it was collected at build time
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)

# Requests: Django refuses bodies above this too; the middleware answers 413 up front.
GMP_MAX_REQUEST_MB = env_int("GMP_MAX_REQUEST_MB", 50, minimum=1)
DATA_UPLOAD_MAX_MEMORY_SIZE = GMP_MAX_REQUEST_MB * 1024 * 1024
GMP_MAX_BATCH = env_int("GMP_MAX_BATCH", 1000, minimum=1)
GMP_REPORT_RETENTION_SECONDS = env_int("GMP_REPORT_RETENTION_SECONDS", 7 * 24 * 3600, minimum=0)
GMP_MESSAGE_ID_DOMAIN = env_str("GMP_MESSAGE_ID_DOMAIN", "")
GMP_API_KEY_TOUCH_SECONDS = env_int("GMP_API_KEY_TOUCH_SECONDS", 60, minimum=0)
# /metrics without a token (for a scraper on a private network); otherwise the admin token.
GMP_METRICS_PUBLIC = env_bool("GMP_METRICS_PUBLIC", False)
# Requests per API token (429 with Retry-After above): "100/s", "6000/min", or "off".
GMP_API_RATE = env_str("GMP_API_RATE", "100/s")
parse_rate(GMP_API_RATE)  # a bad value stops the start-up, naming the variable

# --- Delivery ---------------------------------------------------------------------------
REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
# Token buckets: Redis across a fleet, SQL for the embedded instance.
GMP_RATE_LIMITER = env_str("GMP_RATE_LIMITER", "sql" if EMBEDDED and not REDIS_CONFIGURED else "redis")
if GMP_RATE_LIMITER not in ("redis", "sql"):
    raise ConfigError(f"GMP_RATE_LIMITER must be 'redis' or 'sql', got {GMP_RATE_LIMITER!r}")
GMP_SEND_INTERVAL_SECONDS = env_float("GMP_SEND_INTERVAL_SECONDS", 1.0, minimum=0.1)
GMP_RETRY_DELAYS = env_int_list("GMP_RETRY_DELAYS", [60, 300, 900, 3600, 7200])
GMP_MAX_RETRIES = env_int("GMP_MAX_RETRIES", 5, minimum=0)
GMP_MAX_QUEUE_LIFETIME = env_int("GMP_MAX_QUEUE_LIFETIME", 5 * 24 * 3600, minimum=60)
# A send task works on one account for at most this long, then hands over (fairness).
GMP_BATCH_SECONDS = env_int("GMP_BATCH_SECONDS", 60, minimum=1)
# A rung account gets no second send task for this long unless the first one started.
GMP_RING_SECONDS = env_int("GMP_RING_SECONDS", 20, minimum=1)
# Unreachable server: first probe after the minimum, doubling up to the maximum.
GMP_BACKOFF_MIN_SECONDS = env_int("GMP_BACKOFF_MIN_SECONDS", 5, minimum=1)
GMP_BACKOFF_MAX_SECONDS = env_int("GMP_BACKOFF_MAX_SECONDS", 300, minimum=1)
# Credentials refused: how long before trying them again (a fix of the account retries at once).
GMP_AUTH_RETRY_SECONDS = env_int("GMP_AUTH_RETRY_SECONDS", 900, minimum=1)

# --- Delivery reports (the sync protocol) -----------------------------------------------
GMP_CLIENT_SYNC_URL = env_str("GMP_CLIENT_SYNC_URL", "")
GMP_REPORT_BATCH = env_int("GMP_REPORT_BATCH", 500, minimum=1)
GMP_REPORT_TIMEOUT = env_float("GMP_REPORT_TIMEOUT", 30.0, minimum=0.1)
GMP_SYNC_INTERVAL = env_int("GMP_SYNC_INTERVAL", 300, minimum=1)
GMP_SYNC_MIN_INTERVAL = env_float("GMP_SYNC_MIN_INTERVAL", 2.0, minimum=0.0)
GMP_REPORT_BACKOFF_MIN_SECONDS = env_int("GMP_REPORT_BACKOFF_MIN_SECONDS", 5, minimum=1)
GMP_REPORT_BACKOFF_MAX_SECONDS = env_int("GMP_REPORT_BACKOFF_MAX_SECONDS", 600, minimum=1)
GMP_REPORT_GIVE_UP_SECONDS = env_int("GMP_REPORT_GIVE_UP_SECONDS", 72 * 3600, minimum=60)
GMP_CLEANUP_INTERVAL_SECONDS = env_int("GMP_CLEANUP_INTERVAL_SECONDS", 3600, minimum=10)
# Outbound HTTP (report callbacks, attachment fetches) reaches only public addresses,
# except these host names or networks (e.g. "10.0.0.0/8,crm.internal").
GMP_ALLOWED_HOSTS = env_list("GMP_ALLOWED_HOSTS")
GMP_FETCH_TIMEOUT = env_float("GMP_FETCH_TIMEOUT", 30.0, minimum=0.1)

# --- Bounces and suppression ----------------------------------------------------------------
GMP_SUPPRESSION_DAYS = env_int("GMP_SUPPRESSION_DAYS", 90, minimum=0)  # 0: suppressions never expire
# An instance-wide bounce mailbox, for tenants without one of their own.
GMP_BOUNCE_IMAP_HOST = env_str("GMP_BOUNCE_IMAP_HOST", "")
GMP_BOUNCE_IMAP_PORT = env_int("GMP_BOUNCE_IMAP_PORT", 993, minimum=1)
GMP_BOUNCE_IMAP_USER = env_str("GMP_BOUNCE_IMAP_USER", "")
GMP_BOUNCE_IMAP_PASSWORD = env_secret("GMP_BOUNCE_IMAP_PASSWORD")
GMP_BOUNCE_IMAP_FOLDER = env_str("GMP_BOUNCE_IMAP_FOLDER", "INBOX")
GMP_BOUNCE_IMAP_SECURITY = env_str("GMP_BOUNCE_IMAP_SECURITY", "ssl")
if GMP_BOUNCE_IMAP_SECURITY not in ("ssl", "starttls", "none"):
    raise ConfigError(f"GMP_BOUNCE_IMAP_SECURITY must be ssl, starttls or none, got {GMP_BOUNCE_IMAP_SECURITY!r}")
GMP_BOUNCE_PROCESSED_FOLDER = env_str("GMP_BOUNCE_PROCESSED_FOLDER", "")
GMP_BOUNCE_POLL_INTERVAL = env_int("GMP_BOUNCE_POLL_INTERVAL", 60, minimum=1)
# PEC: no acceptance within this long → pec_timeout; no delivery receipt → pec_timeout per recipient.
GMP_PEC_ACCEPTANCE_TIMEOUT = env_int("GMP_PEC_ACCEPTANCE_TIMEOUT", 30 * 60, minimum=1)
GMP_PEC_DELIVERY_TIMEOUT = env_int("GMP_PEC_DELIVERY_TIMEOUT", 24 * 3600, minimum=1)

# --- Attachments ----------------------------------------------------------------------------
# Folders `filesystem` attachments may be read from (nothing outside them, no symlinks out).
GMP_ATTACHMENT_BASE_DIRS = env_list("GMP_ATTACHMENT_BASE_DIRS")
GMP_MAX_ATTACHMENT_MB = env_int("GMP_MAX_ATTACHMENT_MB", 25, minimum=1)
GMP_MAX_CONCURRENT_FETCHES = env_int("GMP_MAX_CONCURRENT_FETCHES", 4, minimum=1)
GMP_CACHE_MEMORY_MB = env_int("GMP_CACHE_MEMORY_MB", 64, minimum=0)
GMP_CACHE_DIR = env_str("GMP_CACHE_DIR", str(DATA_DIR / "attachment-cache"))
GMP_CACHE_DISK_MB = env_int("GMP_CACHE_DISK_MB", 1024, minimum=0)
GMP_CACHE_TTL = env_int("GMP_CACHE_TTL", 3600, minimum=0)

_explicit_broker = env_str("CELERY_BROKER_URL", "")
if _explicit_broker:
    CELERY_BROKER_URL = _explicit_broker
elif EMBEDDED and not REDIS_CONFIGURED:
    # The embedded instance needs no server: kombu's filesystem transport in the data folder.
    CELERY_BROKER_URL = "filesystem://"
else:
    CELERY_BROKER_URL = REDIS_URL
if CELERY_BROKER_URL.startswith("filesystem"):
    _broker_dir = DATA_DIR / "broker"
    for _folder in ("queue", "processed", "control"):
        (_broker_dir / _folder).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, Any] = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),  # kombu's default is the working directory
        "store_processed": False,
    }
else:
    # `priority`: a free worker always takes from the first non-empty queue, in the order
    # of CELERY_TASK_QUEUES (immediate, high, medium, low, ...).
    CELERY_BROKER_TRANSPORT_OPTIONS = {"queue_order_strategy": "priority", "visibility_timeout": 600}
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Above the longest batch (GMP_BATCH_SECONDS) plus one SMTP transaction at the largest timeout.
CELERY_TASK_SOFT_TIME_LIMIT = GMP_BATCH_SECONDS + 660
CELERY_TASK_TIME_LIMIT = GMP_BATCH_SECONDS + 720
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_CONNECTION_TIMEOUT = 3
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["tenants.auth.ApiTokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["tenants.permissions.IsTenantOrAdmin"],
    "DEFAULT_THROTTLE_CLASSES": ["tenants.throttling.TokenRateThrottle"],
    "DEFAULT_PARSER_CLASSES": ["mailproxy.parsers.SafeJSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "mailproxy.exceptions.api_exception_handler",
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "mail-proxy API",
    "DESCRIPTION": "Hand outgoing email to the proxy; it stores, sends, retries and reports back.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {"SecurityEnum": "tenants.models.Security"},
    # The refusals of every operation, with their {ok, error, details} body (mailproxy/schema.py).
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "mailproxy.schema.add_error_responses"],
    # The Swagger UI is served from the package (no CDN): the instance may have no internet.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
}

# GMP_LOG_JSON=true: one JSON object per line (ts, level, logger, message and the `extra` fields).
GMP_LOG_JSON = env_bool("GMP_LOG_JSON", False)
GMP_LOG_LEVEL = env_str("GMP_LOG_LEVEL", "INFO").upper()
if GMP_LOG_LEVEL not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
    raise ConfigError(f"GMP_LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {GMP_LOG_LEVEL!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
                   "json": {"()": "mailproxy.logs.JsonFormatter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json" if GMP_LOG_JSON else "plain"}},
    "root": {"handlers": ["console"], "level": GMP_LOG_LEVEL},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
