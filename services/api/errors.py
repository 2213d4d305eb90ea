"""Errors as HTTP, in one place.

Domain errors raised below the service layer become status codes here and nowhere else:

- ``NotFoundError`` -> 404, ``ConflictError`` -> 409,
- ``SchemaError``, an unreachable database, and Ray unreachable or lost (``RayUnavailable``,
  with the reason) -> 503,
- request validation -> 422 with pydantic's ``loc``/``msg``/``type`` list (FastAPI's own shape);
  a body sent with another ``Content-Type`` than JSON -> 415 saying to send JSON,
- ``LimitError`` (a request over a configured cap) -> 422 in the same list shape, naming
  the field and the setting; ``ConfigError`` (a run config that does not fit its problem or
  estimator) -> 422 naming the field,
- anything unexpected -> 500 ``{"detail": ..., "request_id": ...}``, traceback only in the log.

Two small ASGI middlewares live here too: one gives every request an id (header
``X-Request-ID``) and turns unexpected exceptions into that 500; one enforces the body size
limit (413) before a route ever parses the body.
"""

from __future__ import annotations

import json
import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError, InterfaceError

from falcon_lite.engine.problem import ConfigError
from falcon_lite.runtime.host import RayUnavailable
from falcon_lite.store.errors import ConflictError, NotFoundError, SchemaError

log = logging.getLogger("falcon_lite.api")


class UnavailableError(RuntimeError):
    """A backing service (database, Ray) cannot be reached; answered as 503."""


class LimitError(ValueError):
    """A request asks for more than a configured cap allows; answered as 422 naming `loc`."""

    def __init__(self, loc: tuple[str, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _detail(exc: BaseException, fallback: str) -> str:
    text = str(exc).strip()
    return text or fallback


def install_error_handlers(app: FastAPI) -> None:
    """Map domain errors to HTTP responses (the only place that does so)."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        content_type = request.headers.get("content-type")
        if content_type and not _is_json(content_type) and any(e["loc"][:1] == ("body",) for e in exc.errors()):
            detail = (f"the request body must be JSON, sent with 'Content-Type: application/json' "
                      f"(this request's Content-Type is {content_type!r})")
            return JSONResponse({"detail": detail}, status_code=415)
        return await request_validation_exception_handler(request, exc)

    @app.exception_handler(LimitError)
    async def _limit(request: Request, exc: LimitError) -> JSONResponse:
        error = {"loc": list(exc.loc), "msg": str(exc), "type": "limit_exceeded"}
        return JSONResponse({"detail": [error]}, status_code=422)

    @app.exception_handler(ConfigError)
    async def _config(request: Request, exc: ConfigError) -> JSONResponse:
        """A config that does not fit its problem or estimator: a 422 like pydantic's, naming the field."""
        error = {"loc": ["body", *exc.loc], "msg": str(exc), "type": "value_error"}
        return JSONResponse({"detail": [error]}, status_code=422)

    @app.exception_handler(NotFoundError)
    async def _not_found(request: Request, exc: NotFoundError) -> JSONResponse:
        return JSONResponse({"detail": _detail(exc, "not found")}, status_code=404)

    @app.exception_handler(ConflictError)
    async def _conflict(request: Request, exc: ConflictError) -> JSONResponse:
        return JSONResponse({"detail": _detail(exc, "conflict")}, status_code=409)

    @app.exception_handler(SchemaError)
    async def _schema(request: Request, exc: SchemaError) -> JSONResponse:
        detail = f"database schema is not ready: {_detail(exc, 'run `falcon-lite migrate`')}"
        return JSONResponse({"detail": detail}, status_code=503)

    @app.exception_handler(RayUnavailable)
    async def _ray(request: Request, exc: RayUnavailable) -> JSONResponse:
        return JSONResponse({"detail": f"run control unavailable: {_detail(exc, 'Ray is lost')}"},
                            status_code=503)

    @app.exception_handler(UnavailableError)
    async def _unavailable(request: Request, exc: UnavailableError) -> JSONResponse:
        return JSONResponse({"detail": _detail(exc, "service unavailable")}, status_code=503)

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def _database(request: Request, exc: Exception) -> JSONResponse:
        rid = request.scope.get("state", {}).get("request_id")
        log.warning("database unavailable (request %s): %s", rid, exc)
        return JSONResponse(
            {"detail": "database unavailable; try again later", "request_id": rid}, status_code=503
        )


class RequestIdMiddleware:
    """Give each request an id; answer unexpected exceptions with a 500 that carries it."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        started = False

        async def send_with_id(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error in %s %s (request %s)", scope["method"], scope["path"], rid)
            if started:
                raise
            body = json.dumps({"detail": "internal server error", "request_id": rid}).encode()
            await send_with_id(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """Refuse request bodies larger than ``max_bytes`` with 413, declared or streamed."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _refuse(self, send, size: str) -> None:
        body = json.dumps(
            {"detail": f"request body too large: {size} bytes, the limit is {self.max_bytes} "
                       "(FALCON_LITE_MAX_BODY_BYTES)"}
        ).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send, declared.decode())
            return
        # Read the body up to the limit, then replay it: bodies here are small JSON.
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(send, f"more than {self.max_bytes}")
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
