"""Errors in OpenAI's JSON form: ``{"error": {"message", "type", "param", "code"}}``.

Every failure the server can name maps to one ``APIError``; the handlers below turn FastAPI's
validation errors, unknown routes and anything unexpected into the same shape, so a client always
gets JSON it can parse and the server stays up.
"""

from __future__ import annotations

import json
import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from phase3_scheduling import EngineDeadError
from phase3_scheduling import RequestValidationError as EngineRequestError

logger = logging.getLogger(__name__)

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          405: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error",
          429: "rate_limit_error", 499: "invalid_request_error", 500: "server_error",
          503: "service_unavailable"}


class APIError(Exception):
    """A request the server refuses, with the HTTP status and OpenAI's error fields."""

    def __init__(self, message: str, status: int = 400, param: str | None = None,
                 code: str | None = None, type_: str | None = None):
        super().__init__(message)
        self.message, self.status, self.param, self.code = message, status, param, code
        self.type = type_ or _TYPES.get(status, "invalid_request_error")


class ServerShuttingDown(APIError):
    """Delivered into every open request when the server stops: 503, retry elsewhere."""

    def __init__(self, message: str = "the server is shutting down"):
        super().__init__(message, 503, code="server_shutting_down")


def internal_error(error: BaseException, where: str) -> APIError:
    """A generic 500 for an unexpected exception: logged in full with an id the client sees,
    never its type or message (they may hold internals)."""
    reference = uuid.uuid4().hex[:12]
    logger.error("internal error %s on %s", reference, where, exc_info=error)
    try:
        error.lightvllm_logged = True  # type: ignore[attr-defined]  # the ASGI shield skips it
    except AttributeError:
        pass
    return APIError(f"internal server error (reference {reference}); the server log has the "
                    f"details", 500, code="internal_error")


def error_body(message: str, status: int, param: str | None = None, code: str | None = None,
               type_: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_ or _TYPES.get(status, "server_error"),
                      "param": param, "code": code}}


def error_response(error: APIError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    body = error_body(error.message, error.status, error.param, error.code, error.type)
    return JSONResponse(body, status_code=error.status, headers=headers)


def sse_error(message: str, status: int, code: str | None = None) -> bytes:
    """An error as one server-sent event (what a stream ends with when it cannot finish)."""
    return f"data: {json.dumps(error_body(message, status, None, code))}\n\n".encode()


def _validation_error(exc: RequestValidationError) -> APIError:
    errors = exc.errors()
    if not errors:
        return APIError("invalid request", 400)
    first = errors[0]
    if first.get("type") == "json_invalid":
        reason = first.get("ctx", {}).get("error", first.get("msg"))
        return APIError(f"malformed JSON body: {reason}", 400, code="invalid_json")
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = loc[0] if loc else None  # the top-level field (deeper parts name union branches)
    value = first.get("input")
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    where = f"{'.'.join(loc)}: " if loc else ""
    return APIError(f"{where}{first.get('msg', 'invalid value')} (got {shown})", 400, param=param,
                    code="invalid_value")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(_validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = {404: f"no route {request.method} {request.url.path}",
                   405: f"method {request.method} is not allowed on {request.url.path}"}
        return error_response(APIError(message.get(exc.status_code, str(exc.detail)),
                                       exc.status_code, code=str(exc.status_code)))

    @app.exception_handler(EngineRequestError)
    async def _refused(request: Request, exc: EngineRequestError) -> JSONResponse:
        return error_response(APIError(exc.message, 400, param=exc.param, code="invalid_value"))

    @app.exception_handler(EngineDeadError)
    async def _dead(request: Request, exc: EngineDeadError) -> JSONResponse:
        return error_response(APIError("the engine stopped after an error; the server needs a "
                                       "restart", 503, code="engine_dead"))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return error_response(internal_error(exc, f"{request.method} {request.url.path}"))
