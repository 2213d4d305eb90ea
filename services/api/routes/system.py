"""Health, Prometheus metrics and the dashboard page."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Response
from fastapi.responses import FileResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from falcon_lite import __version__
from services.api.deps import CtxDep
from services.api.schemas import Health

router = APIRouter(tags=["system"])
STATIC = Path(__file__).resolve().parents[1] / "static"


def _ping(connection) -> None:
    connection.execute(text("SELECT 1"))


@router.get("/health", summary="Liveness and database reachability")
async def health(ctx: CtxDep) -> Health:
    await ctx.read(_ping)
    return Health(status="ok", database=ctx.engine.dialect.name, version=__version__)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def metrics(ctx: CtxDep) -> Response:
    return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/", include_in_schema=False)
def dashboard() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")
