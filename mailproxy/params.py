"""Reading query parameters with errors that name the parameter."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from rest_framework.exceptions import ValidationError
from rest_framework.request import Request


def query_bool(request: Request, name: str, default: bool = False) -> bool:
    value = request.query_params.get(name)
    if value is None or value == "":
        return default
    lowered = value.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ValidationError({name: "must be true or false"})


def query_int(request: Request, name: str, default: int | None, *, minimum: int = 0,
              maximum: int | None = None) -> int | None:
    value = request.query_params.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ValidationError({name: "must be a whole number"}) from None
    if number < minimum or (maximum is not None and number > maximum):
        bounds = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise ValidationError({name: f"must be {bounds}"})
    return number


def query_float(request: Request, name: str) -> float | None:
    value = request.query_params.get(name)
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        raise ValidationError({name: "must be a number (unix seconds)"}) from None
    if not math.isfinite(number):
        raise ValidationError({name: "must be a finite number (unix seconds)"})
    return number


def query_time(request: Request, name: str) -> datetime | None:
    """A unix-seconds query parameter as an aware datetime; out-of-range years are a 400."""
    seconds = query_float(request, name)
    if seconds is None:
        return None
    try:
        return datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):
        raise ValidationError({name: f"{value_text(seconds)} is out of range"}) from None


def value_text(number: float) -> str:
    return f"{number:.0f}" if abs(number) < 1e18 else f"{number:.3g}"
