"""Client library of mail-proxy: the REST API client, report signature checks, a Django email backend.

Only the standard library and `requests` are needed; the Django backend lives in
`mailproxy_client.django` and is imported only by projects that use it.
"""

from __future__ import annotations

from .client import (
    VERSION,
    AddResult,
    DeleteResult,
    MailProxyClient,
    MessagePage,
    RunNowResult,
    SuspensionResult,
)
from .errors import (
    AuthenticationError,
    Conflict,
    MailProxyError,
    MessageRejected,
    MessagesRejected,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    Rejection,
    ServerError,
    TransportError,
    ValidationError,
)
from .signature import InvalidSignature, check_report_signature, verify_report_signature

__version__ = VERSION

__all__ = [
    "AddResult",
    "AuthenticationError",
    "Conflict",
    "DeleteResult",
    "InvalidSignature",
    "MailProxyClient",
    "MailProxyError",
    "MessagePage",
    "MessageRejected",
    "MessagesRejected",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "Rejection",
    "RunNowResult",
    "ServerError",
    "SuspensionResult",
    "TransportError",
    "ValidationError",
    "__version__",
    "check_report_signature",
    "verify_report_signature",
]
