"""The FastAPI app factory: ``create_app(settings=None) -> FastAPI``.

``uvicorn services.api.app:app`` works too: the module-level ``app`` is built on first
access from the process settings. The database must already be migrated (``falcon-lite
serve`` migrates first); the app checks the schema at start-up and refuses to run on a
wrong one. Before it answers, it makes the status of live runs true (`ServedRunControl.startup`:
with `RAY_ADDRESS` that joins the cluster; the embedded local Ray starts on the first call
that moves a run).
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from falcon_lite import __version__
from falcon_lite.settings import Settings, get_settings
from falcon_lite.store.db import check_schema, make_engine, session_factory
from services.api import queries
from services.api.deps import AppContext, AuthMiddleware
from services.api.errors import BodyLimitMiddleware, RequestIdMiddleware, install_error_handlers
from services.api.metrics import ApiMetrics
from services.api.routes import problems, runs, stress, system
from services.api.stress_jobs import StressJobs, StressLimits

POOL_SIZE = 20
MAX_OVERFLOW = 25

DESCRIPTION = """Run, watch and stress-test buffered sequential neural posterior estimation.

Mutating calls need `Authorization: Bearer <token>` when the server sets `FALCON_LITE_API_TOKEN`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app for `settings` (default: the process settings from the environment)."""
    settings = settings or get_settings()
    # Enough pooled connections for the threadpool (40 threads) and the reads the event loop
    # makes itself on SQLite (`AppContext.read`), so that those never wait for a connection:
    # opening one per request (the default pool overflows at 15) costs a connect and its
    # PRAGMAs each time on SQLite.
    engine = make_engine(settings.db_url, pool_size=POOL_SIZE, max_overflow=MAX_OVERFLOW)
    ctx = AppContext(settings=settings, engine=engine, sessions=session_factory(engine))
    ctx.jobs = StressJobs(settings.data_dir / "stress", StressLimits.from_settings(settings))
    ctx.metrics = ApiMetrics(lambda: queries.snapshot(ctx))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        check_schema(engine)
        await run_in_threadpool(ctx.startup)
        logging.getLogger("falcon_lite.api").info("serving %s", engine.url.render_as_string())
        try:
            yield
        finally:
            ctx.close()

    app = FastAPI(title="falcon-lite", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.ctx = ctx
    install_error_handlers(app)
    app.include_router(problems.router)
    app.include_router(runs.router)
    app.include_router(stress.router)
    app.include_router(system.router)
    app.mount("/static", StaticFiles(directory=system.STATIC), name="static")
    # Outermost first when the request comes in: id + 500s, timing, auth, body limit.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(AuthMiddleware, token=settings.api_token)
    app.add_middleware(lambda inner: ctx.metrics.middleware(inner))
    app.add_middleware(RequestIdMiddleware)
    return app


def __getattr__(name: str):
    if name == "app":
        global app
        app = create_app()
        return app
    raise AttributeError(name)
