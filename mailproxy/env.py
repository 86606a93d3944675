"""Typed readers for configuration from the environment.

Every knob of the product is read here or through these helpers, so a bad value fails
at start-up with the variable named instead of somewhere deep in a request.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path

# Our own prefixes: a variable with one of them that nothing reads is most likely a typo.
PREFIXES = ("GMP_", "MAIL_PROXY_")
# Every variable a reader below was asked for, set or not: the names the product knows.
READ: set[str] = set()
# Read directly by the `mail-proxy` console script (mailproxy/cli.py), not by the settings.
READ_BY_CLI = frozenset({"GMP_HOME", "MAIL_PROXY_TRACEBACK"})


class ConfigError(ValueError):
    """A configuration variable holds a value the product cannot use."""


def _raw(name: str) -> str | None:
    READ.add(name)
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def env_str(name: str, default: str = "") -> str:
    value = _raw(name)
    return default if value is None else value


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    value = _raw(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {number}")
    return number


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    value = _raw(name)
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {number}")
    return number


def env_bool(name: str, default: bool) -> bool:
    """Read true/false only: a typo such as 'ture' must not silently mean False."""
    value = _raw(name)
    if value is None:
        return default
    lowered = value.lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    raise ConfigError(f"{name} must be 'true' or 'false', got {value!r}")


def env_list(name: str, default: list[str] | None = None) -> list[str]:
    value = _raw(name)
    if value is None:
        return list(default or [])
    return [item.strip() for item in value.split(",") if item.strip()]


def env_int_list(name: str, default: list[int]) -> list[int]:
    items = env_list(name)
    if not items:
        return list(default)
    try:
        return [int(item) for item in items]
    except ValueError:
        raise ConfigError(f"{name} must be comma-separated whole numbers, got {os.environ[name]!r}") from None


def env_secret(name: str, default: str = "") -> str:
    """Read NAME, or the content of the file named by NAME_FILE (Docker/Kubernetes secrets)."""
    READ.add(f"{name}_FILE")  # known even when NAME is set and the file is never opened
    value = _raw(name)
    if value is not None:
        return value
    path = _raw(f"{name}_FILE")
    if path is None:
        return default
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{name}_FILE points to {path!r}, which cannot be read: {exc.strerror}") from None


def unknown_variables(environ: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """Our prefixed variables in the environment that nothing reads, each with a likely intended name.

    Only names are looked at, never values (they may be secrets). Empty until the settings
    were loaded through these readers: before that every name would look unknown.
    """
    if not READ:
        return {}
    environ = os.environ if environ is None else environ
    known = READ | READ_BY_CLI
    candidates = sorted(name for name in known if name.startswith(PREFIXES))
    unknown: dict[str, str | None] = {}
    for name in sorted(environ):
        if not name.startswith(PREFIXES) or name in known:
            continue
        close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.8)
        unknown[name] = close[0] if close else None
    return unknown


def describe_unknown(unknown: Mapping[str, str | None]) -> str:
    """One line naming the unknown variables and the suggestions, e.g. for a start-up warning."""
    parts = [f"{name} (did you mean {guess}?)" if guess else name for name, guess in unknown.items()]
    return "environment variables not read by mail-proxy, so without effect: " + ", ".join(parts)
