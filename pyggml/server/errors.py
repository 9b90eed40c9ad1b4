"""Every error the app answers, as an OpenAI error body: its own APIErrors, pydantic's validation errors (the
field as param), Starlette's HTTP errors (404, 405, 413) and anything unexpected (500)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from .protocol import APIError

UNION_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def add_error_handlers(app: FastAPI) -> None:
    """Every error as an OpenAI error body."""
    @app.exception_handler(APIError)
    async def api_error(_: Request, e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), e.status, e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        return JSONResponse(validation_error(e.errors()).body(), 400)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, e: HTTPException) -> JSONResponse:
        body = APIError(e.status_code, str(e.detail), code=str(e.status_code)).body()
        return JSONResponse(body, e.status_code, e.headers)

    @app.exception_handler(Exception)
    async def server_error(_: Request, e: Exception) -> JSONResponse:
        return JSONResponse(APIError(500, f"{type(e).__name__}: {e}", kind="server_error").body(), 500)


def validation_error(errors: Sequence[Mapping]) -> APIError:
    """The first of pydantic's errors as OpenAI words one, param naming the top-level field."""
    error = errors[0]
    where = error["loc"][1:] if error["loc"][:1] == ("body",) else error["loc"]
    if error["type"] == "json_invalid":
        return APIError(400, f"the request body is not valid JSON: {error['ctx'].get('error', '')}")
    if not where or not isinstance(where[0], str):
        return APIError(400, "the request body must be a JSON object, sent as Content-Type: application/json")
    path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in where if not is_tag(part))[1:]
    message = error["msg"].removeprefix("Value error, ")
    return APIError(400, f"invalid '{path}': {message}", where[0], "invalid_value")


def is_tag(part: str | int) -> bool:
    """Whether a part of an error's location names a member of a union ('str', 'list[int]') rather than a field."""
    return isinstance(part, str) and (part in UNION_TAGS or "[" in part or "-" in part)
