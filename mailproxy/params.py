"""Reading query parameters with errors that name the parameter."""

from __future__ import annotations

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
        return float(value)
    except ValueError:
        raise ValidationError({name: "must be a number (unix seconds)"}) from None
