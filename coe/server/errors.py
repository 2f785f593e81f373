"""Every error leaves the server in the shape of the API that was called, so SDKs raise their usual
exceptions: OpenAI's ``{"error": {message, type, param, code}}``, or for /v1/messages Anthropic's
``{"type": "error", "error": {type, message}}``; and no handler ever puts a stack trace in a response."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("coe.server")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class APIError(Exception):
    """Raised by handlers; turned into an OpenAI error response with this status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "api_error")
        self.headers = headers or {}


def error_body(
    message: str, type: str = "api_error", param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# Anthropic's error types by status (its docs: "HTTP errors").
_ANTHROPIC = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    529: "overloaded_error",
}
ANTHROPIC_ROOT = "/v1/messages"


def anthropic_path(path: str) -> bool:
    """/v1/messages and everything under it (count_tokens, and the 404 of a route CoE lacks)."""
    return path == ANTHROPIC_ROOT or path.startswith(ANTHROPIC_ROOT + "/")


def anthropic_body(message: str, status: int) -> dict[str, Any]:
    return {"type": "error", "error": {"type": _ANTHROPIC.get(status, "api_error"), "message": message}}


def error_response(exc: APIError, path: str = "") -> JSONResponse:
    """``path``: the route called, which decides the shape (Anthropic's under /v1/messages)."""
    if anthropic_path(path):
        message = (
            f"{exc.param}: {exc.message}"
            if exc.param and not exc.message.startswith(exc.param)
            else exc.message
        )
        body = anthropic_body(message, exc.status)
    else:
        body = error_body(exc.message, exc.type, exc.param, exc.code)
    return JSONResponse(body, status_code=exc.status, headers=dict(exc.headers or {}))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc, request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404:
            message = (
                "no such route; see /v1/models, /v1/chat/completions, /v1/responses, /v1/messages, "
                "/v1/completions and /v1/embeddings"
            )
            if anthropic_path(request.url.path):
                message = "no such route; CoE serves POST /v1/messages and POST /v1/messages/count_tokens"
        err = APIError(exc.status_code, message, code=str(exc.status_code), headers=exc.headers)
        return error_response(err, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        err = APIError(400, str(first.get("msg", "invalid request")), param=param)
        return error_response(err, request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The details go to the server log only; the client learns that it was our fault.
        log.error("unhandled error: %s", type(exc).__name__, exc_info=exc)
        return error_response(APIError(500, "internal server error", code="internal_error"), request.url.path)
