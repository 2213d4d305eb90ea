"""Dependencies of the routes, as typed aliases (``CtxDep``, ``SessionDep``, ``AuthDep``).

The app's long-lived objects live in ``AppContext`` on ``app.state.ctx``: settings, the
database engine and two session factories, the run control (its Ray lives in other
processes, started on the first call that moves a run) and the stress jobs. ``SessionDep`` is a read session (plain BEGIN:
on SQLite in WAL mode it never waits for the trainer's writes); every write goes through
``ctx.sessions.begin()`` in one transaction that commits or rolls back as a whole.
``await ctx.read(fn, ...)`` runs the polled reads (buffer, metrics, health) on a pooled
connection without a session. Dependencies are ``async def``: FastAPI runs a plain ``def``
dependency in the threadpool, a thread switch per request for nothing.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from falcon_lite.settings import Settings
from falcon_lite.store.dialects import dialect_for

T = TypeVar("T")


@dataclass
class AppContext:
    """Everything one app instance holds for its lifetime."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker  # writes: on SQLite, BEGIN IMMEDIATE takes the write lock up front
    readers: sessionmaker = None  # reads: plain BEGIN, so readers never wait for the trainer (WAL)
    jobs: Any = None  # services.api.stress_jobs.StressJobs
    metrics: Any = None  # services.api.metrics.ApiMetrics
    _control: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.readers is None:
            self.readers = sessionmaker(bind=self.engine, expire_on_commit=False)
        self.inline_reads = dialect_for(self.engine).inline_reads

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A read session (plain BEGIN: on SQLite in WAL mode it never waits for writers).

        Closed, not rolled back, at the end, so objects read stay readable afterwards.
        """
        with self.readers() as session:
            yield session

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(connection, *args)`` on a pooled connection, for the polled reads.

        `fn` must be a short read: one or two statements on indexes. On SQLite it runs on
        the event loop itself: such a query is an in-process call of well under a
        millisecond that, in WAL mode, does not wait for writers (the pool is sized so that
        it never waits for a connection either), while a trip through the threadpool costs
        more than the query: a thread switch each way, and worker threads that contend
        with the event loop for the interpreter lock at every statement. On a database
        behind a network (PostgreSQL) it runs in the threadpool.
        """
        if self.inline_reads:
            with self.engine.connect() as connection:
                return fn(connection, *args)
        return await run_in_threadpool(self._read_sync, fn, *args)

    def _read_sync(self, fn: Callable[..., T], *args: Any) -> T:
        with self.engine.connect() as connection:
            return fn(connection, *args)

    def control(self):
        """The run control: `RunControl`'s calls made through the server's Ray host, whose
        Ray runs outside this process and starts on the first call that needs it
        (`falcon_lite/runtime/host.py`); `RayUnavailable` (503) while Ray is lost."""
        with self._lock:
            if self._control is None:
                from falcon_lite.runtime.served import ServedRunControl

                self._control = ServedRunControl(self.settings, self.engine, self.sessions,
                                                 self.settings.db_url)
            return self._control

    def startup(self) -> None:
        """Make live runs' status true before the first request (see `ServedRunControl`)."""
        self.control().startup()

    def connected(self) -> bool:
        """Whether the run control has a Ray connected (by an earlier call)."""
        return self._control is not None and self._control.connected()

    def close(self) -> None:
        with self._lock:
            if self._control is not None:
                self._control.close()
                self._control = None
        if self.jobs is not None:
            self.jobs.close()
        self.engine.dispose()


async def get_ctx(request: Request) -> AppContext:
    return request.app.state.ctx


CtxDep = Annotated[AppContext, Depends(get_ctx)]


def get_session(ctx: CtxDep) -> Iterator[Session]:
    """A read session for the request (routes that write open their own transaction)."""
    with ctx.reading() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session, scope="function")]


_bearer = HTTPBearer(auto_error=False, description="FALCON_LITE_API_TOKEN, when the server sets one")
MISSING_TOKEN = ("missing bearer token: this server requires 'Authorization: Bearer <token>' "
                 "on mutating calls (FALCON_LITE_API_TOKEN)")
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def token_problem(expected: str | None, authorization: str | None) -> str | None:
    """Why an ``Authorization`` header does not admit a mutating call, or None if it does."""
    if not expected:
        return None
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return MISSING_TOKEN
    if not secrets.compare_digest(token.strip().encode(), expected.encode()):
        return "invalid bearer token"
    return None


async def require_token(
    ctx: CtxDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """When the server has a token, a mutating call must carry it as a bearer token.

    `AuthMiddleware` enforces this before a body is read; the dependency says so in the
    OpenAPI document (and checks again, for an app mounted without the middleware).
    """
    header = f"Bearer {credentials.credentials}" if credentials else None
    problem = token_problem(ctx.settings.api_token, header)
    if problem:
        raise HTTPException(401, problem, headers={"WWW-Authenticate": "Bearer"})


AuthDep = Depends(require_token)


class AuthMiddleware:
    """Refuse a mutating call (any method but GET/HEAD/OPTIONS) without the server's bearer
    token with 401 before its body is read, so that an unauthenticated client learns that
    it must authenticate, not what is wrong with its body."""

    def __init__(self, app, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and self.token and scope["method"] not in READ_METHODS:
            headers = dict(scope.get("headers") or [])
            authorization = headers.get(b"authorization", b"").decode("latin-1")
            problem = token_problem(self.token, authorization)
            if problem:
                body = json.dumps({"detail": problem}).encode()
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode()),
                                        (b"www-authenticate", b"Bearer")]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
