"""System checks of the configuration: environment variables that nothing reads."""

from __future__ import annotations

from typing import Any

from django.core.checks import Warning, register

from mailproxy.env import describe_unknown, unknown_variables


@register()
def check_unknown_variables(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    """A GMP_*/MAIL_PROXY_* variable nothing reads is a typo or a leftover: its value has no effect."""
    unknown = unknown_variables()
    if not unknown:
        return []
    return [Warning(describe_unknown(unknown), hint="see .env.example for the variables and their meaning",
                    id="mailproxy.W001")]
