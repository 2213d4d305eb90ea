"""Routes under ``/stress``: launch a stress matrix, read its status, report and plots, cancel it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import FileResponse

from services.api.deps import AuthDep, CtxDep
from services.api.schemas import StressCreate, StressPublic

router = APIRouter(prefix="/stress", tags=["stress"])

JobId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="the stress job's id")]
PlotName = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.-]+\.png$", max_length=200)]


def _public(request: Request, job: dict) -> StressPublic:
    plots = [str(request.url_for("get_stress_plot", job_id=job["id"], name=n).path) for n in job["plots"]]
    return StressPublic.model_validate({**job, "plots": plots})


@router.post("", status_code=202, dependencies=[AuthDep], summary="Run a stress matrix in the background")
def create_stress(body: StressCreate, request: Request, ctx: CtxDep) -> StressPublic:
    job_id = ctx.jobs.submit(body.model_dump(mode="json"))
    return _public(request, ctx.jobs.status(job_id))


@router.get("/{job_id}", summary="A stress job: status, results.json, report.md and plot URLs")
def get_stress(job_id: JobId, request: Request, ctx: CtxDep) -> StressPublic:
    return _public(request, ctx.jobs.status(job_id))


@router.delete("/{job_id}", dependencies=[AuthDep],
               summary="Cancel a stress job: end its worker, keep the runs that finished (a no-op once ended)")
def cancel_stress(job_id: JobId, request: Request, ctx: CtxDep) -> StressPublic:
    return _public(request, ctx.jobs.cancel(job_id))


@router.get("/{job_id}/plots/{name}", summary="One PNG plot of a finished stress job",
            response_class=FileResponse)
def get_stress_plot(job_id: JobId, name: PlotName, ctx: CtxDep) -> FileResponse:
    return FileResponse(ctx.jobs.plot_path(job_id, name), media_type="image/png")
