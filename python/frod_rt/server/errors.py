"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

| status | type | when |
|---|---|---|
| 400 | invalid_request_error | bad JSON, schema or value, unknown field, bad adapter file |
| 401 | authentication_error | missing or wrong API key |
| 403 | permission_error | run-time adapter loading disabled, path outside the allowed root |
| 404 | not_found_error | unknown model / adapter, unknown route |
| 405 | invalid_request_error | method not allowed on the route (``Allow`` header) |
| 408 | invalid_request_error | request body too slow |
| 409 | conflict_error | adapter name already loaded |
| 413 | invalid_request_error | request body too large |
| 429 | rate_limit_error | the waiting queue is full (``--max-queue``) |
| 500 | server_error | unexpected failure (the server keeps running) |
| 503 | service_unavailable | engine failed mid-request, request aborted, shutting down |
"""
from __future__ import annotations

from fastapi.responses import JSONResponse

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 405: "invalid_request_error", 408: "invalid_request_error",
          409: "conflict_error", 413: "invalid_request_error", 422: "invalid_request_error",
          429: "rate_limit_error", 500: "server_error", 503: "service_unavailable"}


class APIError(Exception):
    """An error answered to the client as ``status`` with OpenAI's error body."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, type_: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.headers = dict(headers or {})
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type_ or _TYPES.get(status, "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"Retry-After": "1"} if self.status in (429, 503) else {}
        headers.update(self.headers)
        return JSONResponse(self.body(), status_code=self.status, headers=headers or None)


def error_body(status: int, message: str, param=None, code=None) -> dict:
    return APIError(status, message, param, code).body()


def unknown_model(model) -> APIError:
    """404 for a ``model`` that names neither the base nor an adapter (the message does not
    list the adapters: ``GET /v1/models`` does, to whoever may call it)."""
    return APIError(404, f"model {model!r} not found (GET /v1/models lists the served "
                    "models)", param="model", code="model_not_found")
