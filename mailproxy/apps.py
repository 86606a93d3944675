from __future__ import annotations

import logging

from django.apps import AppConfig

logger = logging.getLogger(__name__)


class MailproxyConfig(AppConfig):
    name = "mailproxy"
    default = True

    def ready(self) -> None:
        from mailproxy import checks  # noqa: F401  (registers the checks)
        from mailproxy.env import describe_unknown, unknown_variables

        # Every process sets Django up (gunicorn, celery worker and beat, management
        # commands), so each one names the variables it ignores, once, at start-up.
        unknown = unknown_variables()
        if unknown:
            logger.warning(describe_unknown(unknown))
