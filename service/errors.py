"""The service's exceptions.

Two families:
- `ApiError`: every client-visible failure, rendered in the OpenAI error shape
  `{"error": {"message", "type", "param", "code"}}`. The official clients map the status to their
  exception classes (400 BadRequestError, 401 AuthenticationError, 404 NotFoundError, 429
  RateLimitError, …) and show `message`; `param` names the offending field.
- `StartupError` (edge_embed/core/errors.py, with the bundle's and the runtime's own): what
  stops the process before it serves (a bad bundle, a missing provider, an unreadable keys
  file): one line on stderr naming the file and field, exit code 2.
"""

from __future__ import annotations

from typing import Any

from edge_embed.core.errors import StartupError


# ---- start-up --------------------------------------------------------------------------------
class TracingUnavailable(StartupError):
    """--otlp-endpoint was given, but the OpenTelemetry packages are not installed."""

    def __init__(self, missing: str) -> None:
        super().__init__(
            f"--otlp-endpoint (EDGE_EMBED_OTLP_ENDPOINT) needs OpenTelemetry, which is not "
            f"installed ({missing}): pip install 'edge-embed[otel]', or start without the flag")


class ApiKeyError(StartupError, ValueError):
    """An API key that cannot be used (empty, too short, with whitespace); the message names
    where it was given, never the key."""


class KeysFileError(ApiKeyError):
    """The API keys file cannot be read or has a malformed line."""


# ---- per request -----------------------------------------------------------------------------


class ApiError(Exception):
    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"message": self.message, "type": self.type,
                                 "param": self.param, "code": self.code}
        error.update(self.extra)
        return {"error": error}


class InvalidRequest(ApiError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class Unauthorized(ApiError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class NotFound(ApiError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class MethodNotAllowed(ApiError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class RequestTimeout(ApiError):
    status = 408
    type = "timeout_error"
    code = "request_timeout"


class PayloadTooLarge(ApiError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class UnsupportedMediaType(ApiError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class ClientGone(ApiError):
    """The client closed its connection; nobody reads this answer (logged as 499)."""

    status = 499
    type = "client_closed_request"
    code = "client_closed_request"


class Overloaded(ApiError):
    status = 429
    type = "rate_limit_error"
    code = "server_overloaded"


class InternalError(ApiError):
    status = 500
    type = "server_error"
    code = "internal_error"


class Unavailable(ApiError):
    status = 503
    type = "server_error"
    code = "service_unavailable"
