"""Errors the core raises, each carrying the HTTP status and OpenAI-style error type to return."""

from __future__ import annotations

from typing import Any

__all__ = ["BadRequest", "ConfigError", "explain_validation", "Forbidden", "InferouteError",
           "ModelNotFound", "NoEndpointAvailable", "PayloadTooLarge", "TooManyRequests",
           "Unauthorized", "UpstreamError", "UpstreamTimeout"]


class InferouteError(Exception):
    """Base error: maps to an OpenAI-style JSON error body with an HTTP status."""

    status: int = 500
    error_type: str = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param
        self.headers = dict(headers or {})

    def to_dict(self) -> dict[str, Any]:
        """The OpenAI error envelope: {"error": {"message", "type", "param", "code"}}."""
        return {"error": {"message": self.message, "type": self.error_type,
                          "param": self.param, "code": self.code}}


class BadRequest(InferouteError):
    status = 400
    error_type = "invalid_request_error"


class Unauthorized(InferouteError):
    status = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(InferouteError):
    status = 403
    error_type = "permission_error"


class ModelNotFound(InferouteError):
    status = 404
    error_type = "invalid_request_error"
    code = "model_not_found"


class PayloadTooLarge(InferouteError):
    status = 413
    error_type = "invalid_request_error"
    code = "request_too_large"


class TooManyRequests(InferouteError):
    """Shed or rate limited; `retry_after` seconds goes into a Retry-After header."""

    status = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after
        if retry_after is not None:
            self.headers.setdefault("Retry-After", str(max(1, int(retry_after + 0.999))))


class NoEndpointAvailable(InferouteError):
    status = 503
    error_type = "service_unavailable"
    code = "no_endpoint_available"


class UpstreamError(InferouteError):
    status = 502
    error_type = "upstream_error"
    code = "bad_gateway"


class UpstreamTimeout(InferouteError):
    status = 504
    error_type = "upstream_error"
    code = "gateway_timeout"


class ConfigError(ValueError):
    """A configuration file or flag is invalid; the message says where and why."""


def explain_validation(exc: Any, what: str, source: str) -> str:
    """A pydantic ValidationError as the message every config loader raises: `invalid WHAT in
    SOURCE:` then one line per problem with its key path (`pools.0.endpoints: ...`)."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {loc}: {err['msg'].removeprefix('Value error, ')}")
    return f"invalid {what} in {source}:\n" + "\n".join(lines)
