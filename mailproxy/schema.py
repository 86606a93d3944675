"""What the OpenAPI document says beyond each view's success answer: envelopes and refusals.

Every answer is an envelope. A success is {"ok": true, …} (`envelope` names its shape);
a refusal is {"ok": false, "error": text, "details": …} (mailproxy.exceptions.error_body),
documented once as the `ErrorResponse` component. `add_error_responses`, a drf-spectacular
postprocessing hook, gives every operation the refusals its shape implies (a token, path
parameters, a body); a view names the ones only its service knows with `refusal`.
"""

from __future__ import annotations

import copy
from typing import Any

from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.utils import OpenApiResponse, inline_serializer
from rest_framework import serializers

from tenants.permissions import IsAdmin

ERROR_COMPONENT = "ErrorResponse"
ERROR_REF = {"$ref": f"#/components/schemas/{ERROR_COMPONENT}"}
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Every refusal of the API, whatever its status code.",
    "properties": {
        "ok": {"type": "boolean", "enum": [False]},
        "error": {"type": "string", "description": "what went wrong, in one line"},
        "details": {
            "nullable": True,
            "description": "null, or what the refusal is about: for invalid input, the text per field "
                           '(e.g. {"messages[3].to": "…"})',
        },
    },
    "required": ["ok", "error", "details"],
}
REASONS = {
    400: "Invalid input: the body, a field or a query parameter; `details` names each field.",
    401: "The X-API-Token header is missing, or the token is unknown, expired or revoked.",
    403: "This endpoint needs the admin token.",
    404: "Not found, or not this tenant's (both answer the same, so nothing leaks).",
    413: "The request body is over GMP_MAX_REQUEST_MB.",
    415: "The body is not JSON (Content-Type).",
    429: "Over GMP_API_RATE requests for this token; retry after Retry-After seconds.",
}
RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds to wait"}}
TENANT_FIELD = "tenant_id"  # a tenant named in the query or the body is looked up: 404 when missing


def envelope(name: str, **fields: serializers.Field) -> serializers.Serializer:
    """The shape of a success answer, {"ok": true, **fields}, documented as the component `name`."""
    return inline_serializer(name, {"ok": serializers.BooleanField(), **fields})


def refusal(description: str) -> OpenApiResponse:
    """A refusal a view documents itself (a service's ConflictError, say); its body is ErrorResponse."""
    return OpenApiResponse(description=description)


def add_error_responses(result: dict[str, Any], generator: SchemaGenerator, **kwargs: Any) -> dict[str, Any]:
    """POSTPROCESSING_HOOKS entry: every operation's refusals, each with the ErrorResponse body."""
    # drf-spectacular's endpoints are (path, path_regex, method, callback); DRF's own lack the regex.
    view_classes = {(endpoint[0], endpoint[-2].lower()): getattr(endpoint[-1], "cls", None)
                    for endpoint in generator.endpoints or []}
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas[ERROR_COMPONENT] = copy.deepcopy(ERROR_SCHEMA)
    for path, operations in result.get("paths", {}).items():
        for method, operation in operations.items():
            view_class = view_classes.get((path, method))
            responses = operation.setdefault("responses", {})
            for status in _refusals(operation, view_class, schemas):
                responses.setdefault(str(status), {"description": REASONS[status]})
            for status, response in responses.items():
                if status.isdigit() and int(status) >= 400 and "content" not in response:
                    response["content"] = {"application/json": {"schema": dict(ERROR_REF)}}
                    if status == "429":
                        response.setdefault("headers", copy.deepcopy(RETRY_AFTER))
            operation["responses"] = dict(sorted(responses.items(), key=lambda item: _order(item[0])))
    return result


def _refusals(operation: dict[str, Any], view_class: type | None, schemas: dict[str, Any]) -> list[int]:
    parameters = operation.get("parameters", [])
    query = {parameter["name"] for parameter in parameters if parameter.get("in") == "query"}
    has_path = any(parameter.get("in") == "path" for parameter in parameters)
    body = _json_body(operation, schemas)
    has_body = "requestBody" in operation
    statuses = []
    if has_body or query:
        statuses.append(400)
    authenticated = any(requirement for requirement in operation.get("security", []))
    if authenticated:
        statuses.append(401)
        if view_class is not None and _admin_only(view_class):
            statuses.append(403)
    if has_path or TENANT_FIELD in query or TENANT_FIELD in body.get("properties", {}):
        statuses.append(404)
    if has_body:
        # RequestSizeLimitMiddleware refuses any request over the limit; JSONParser anything but JSON.
        statuses += [413, 415]
    if authenticated and (view_class is None or getattr(view_class, "throttle_classes", None)):
        statuses.append(429)
    return statuses


def _admin_only(view_class: type) -> bool:
    return any(isinstance(permission, type) and issubclass(permission, IsAdmin)
               for permission in getattr(view_class, "permission_classes", []))


def _json_body(operation: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    """The request body's schema, its component reference followed; {} without one."""
    content = operation.get("requestBody", {}).get("content", {})
    schema: dict[str, Any] = content.get("application/json", {}).get("schema", {})
    reference = schema.get("$ref", "")
    if reference.startswith("#/components/schemas/"):
        return dict(schemas.get(reference.rsplit("/", 1)[1], {}))
    return schema


def _order(status: str) -> tuple[int, str]:
    return (int(status), "") if status.isdigit() else (1000, status)
