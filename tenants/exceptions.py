"""Domain errors. The API's exception handler turns each into its HTTP status."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    status_code = 400

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class NotFoundError(DomainError):
    """Missing, or belonging to another tenant: both answer the same, so nothing leaks."""

    status_code = 404

    def __init__(self, message: str = "not found", *, details: Any = None) -> None:
        super().__init__(message, details=details)


class ConflictError(DomainError):
    status_code = 409


class ForbiddenError(DomainError):
    status_code = 403


class PayloadTooLargeError(DomainError):
    status_code = 413
