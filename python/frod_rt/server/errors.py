"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

| status | type | when |
|---|---|---|
| 400 | invalid_request_error | bad parameter value, bad adapter file, unsupported option |
| 404 | not_found_error | unknown model / adapter, unknown route |
| 409 | conflict_error | adapter name already loaded |
| 422 | invalid_request_error | body is not valid JSON or fails the request schema |
| 429 | rate_limit_error | the waiting queue is full (``--max-queue``) |
| 500 | server_error | unexpected failure (the server keeps running) |
| 503 | service_unavailable | engine failed mid-request, request aborted, shutting down |
"""
from __future__ import annotations

from fastapi.responses import JSONResponse

_TYPES = {400: "invalid_request_error", 404: "not_found_error", 409: "conflict_error",
          422: "invalid_request_error", 429: "rate_limit_error", 500: "server_error",
          503: "service_unavailable"}


class APIError(Exception):
    """An error answered to the client as ``status`` with OpenAI's error body."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, type_: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type_ or _TYPES.get(status, "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"Retry-After": "1"} if self.status in (429, 503) else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def error_body(status: int, message: str, param=None, code=None) -> dict:
    return APIError(status, message, param, code).body()
