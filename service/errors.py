"""One exception family for every client-visible failure, rendered in the OpenAI error shape.

`{"error": {"message", "type", "param", "code"}}`: the official clients map the status to their
exception classes (400 BadRequestError, 401 AuthenticationError, 404 NotFoundError, 429
RateLimitError, …) and show `message`; `param` names the offending field.
"""

from __future__ import annotations

from typing import Any


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


class Forbidden(ApiError):
    status = 403
    type = "invalid_request_error"
    code = "model_not_allowed"


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
