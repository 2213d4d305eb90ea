"""Routes under ``/runs``: create, list, show, control, buffer, metrics, events, posterior,
reference.

Each route parses, makes one call below, and returns; errors are mapped in `errors.py`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path, Query, Request, Response

from falcon_lite.store import runs as store_runs
from services.api import queries
from services.api.deps import AuthDep, CtxDep, SessionDep
from services.api.schemas import (
    Accepted,
    BufferPublic,
    PosteriorPublic,
    ReferencePublic,
    RunCreate,
    RunPublic,
    RunsPublic,
)
from services.api.sse import event_stream

router = APIRouter(prefix="/runs", tags=["runs"])

RunId = Annotated[int, Path(ge=1, le=2**31 - 1, description="the run's id")]
SampleCount = Annotated[int, Query(ge=1, le=100_000, description="samples; n x dim is capped by "
                                                               "FALCON_LITE_POSTERIOR_MAX_VALUES")]


@router.post("", status_code=201, dependencies=[AuthDep], summary="Create a run (and start it)")
def create_run(
    ctx: CtxDep, body: Annotated[RunCreate, Body(description="no body means `{}`")] = RunCreate()
) -> RunPublic:
    run_id = queries.create_run(ctx, body.config(), start=body.start)
    with ctx.reading() as session:
        return queries.run_public(session, store_runs.get_run(session, run_id))


@router.get("", summary="List runs, newest first")
def list_runs(
    session: SessionDep,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> RunsPublic:
    found, total = store_runs.list_runs(session, offset=offset, limit=limit)
    return RunsPublic(data=queries.runs_public(session, found), count=total)


@router.get("/{run_id}", summary="One run: status, step, config, latest diagnostics")
def get_run(run_id: RunId, session: SessionDep) -> RunPublic:
    return queries.run_public(session, store_runs.get_run(session, run_id))


@router.post("/{run_id}/start", status_code=202, dependencies=[AuthDep], summary="Start a pending run")
def start_run(run_id: RunId, ctx: CtxDep) -> Accepted:
    return queries.control_action(ctx, run_id, "start")


@router.post("/{run_id}/stop", status_code=202, dependencies=[AuthDep], summary="Stop (idempotent)")
def stop_run(run_id: RunId, ctx: CtxDep) -> Accepted:
    return queries.control_action(ctx, run_id, "stop")


@router.post("/{run_id}/resume", status_code=202, dependencies=[AuthDep], summary="Resume (idempotent)")
def resume_run(run_id: RunId, ctx: CtxDep) -> Accepted:
    return queries.control_action(ctx, run_id, "resume")


@router.delete("/{run_id}", status_code=204, dependencies=[AuthDep],
               summary="Delete a run that is not running, with its samples")
def delete_run(run_id: RunId, ctx: CtxDep) -> Response:
    queries.delete_run(ctx, run_id)
    return Response(status_code=204)


@router.get("/{run_id}/buffer", summary="The buffer's composition by status and origin")
async def get_buffer(run_id: RunId, ctx: CtxDep) -> BufferPublic:
    return BufferPublic.model_validate(await ctx.read(queries.buffer_of, run_id))


@router.get("/{run_id}/metrics", summary="Diagnostics rows after a step")
async def get_metrics(
    run_id: RunId,
    ctx: CtxDep,
    since_step: Annotated[int, Query(ge=-1, le=2**31 - 1, description="rows with step > this")] = -1,
    names: Annotated[str | None, Query(max_length=1000, description="comma-separated metric names")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> list[dict[str, float | int | None]]:
    return await ctx.read(store_runs.metrics_page, run_id, since_step, queries.parse_names(names), limit)


@router.get("/{run_id}/events", summary="Server-Sent Events: `status` and `diagnostics`",
            response_description="text/event-stream")
def get_events(
    run_id: RunId,
    request: Request,
    ctx: CtxDep,
    session: SessionDep,
    last_event_id: Annotated[str | None, Query(max_length=100, pattern=r"^\d+:-?\d+$",
                                               description="resume after this id (the Last-Event-ID header wins)")] = None,
):
    store_runs.get_run(session, run_id)
    return event_stream(ctx, run_id, request.headers.get("last-event-id") or last_event_id)


@router.get("/{run_id}/posterior", summary="Samples from the run's newest checkpoint (409 before the first)")
def get_posterior(
    run_id: RunId,
    ctx: CtxDep,
    n: SampleCount = 1000,
) -> PosteriorPublic:
    step, names, samples = queries.posterior(ctx, run_id, n)
    return PosteriorPublic(run_id=run_id, step=step, n=samples.shape[0], dim=samples.shape[1],
                           parameters=names, samples=samples.tolist())


@router.get("/{run_id}/reference",
            summary="Samples from the reference posterior at the run's observation (404 without one)")
def get_reference(
    run_id: RunId,
    ctx: CtxDep,
    n: SampleCount = 1000,
) -> ReferencePublic:
    return queries.reference(ctx, run_id, n)
