"""What the routes call: one function per action, on top of the store and the run control.

Reads go to the store directly (no Ray needed to look at runs); actions that move a run go
to the run control. A stop on a run that is not live is answered without touching Ray,
which is what "stop is idempotent" means for a run that has already stopped.
"""

from __future__ import annotations

import numpy as np
from sqlalchemy import Connection, func, select
from sqlalchemy.orm import Session

from falcon_lite.config import RunConfig
from falcon_lite.core.policy import Origin, Status
from falcon_lite.core.problems import ProblemError
from falcon_lite.engine.problem import bind_problem, catalogue, check_config
from falcon_lite.plugins import PluginError
from falcon_lite.store import runs as store_runs
from falcon_lite.store.composition import compose
from falcon_lite.store.errors import ConflictError, NotFoundError
from falcon_lite.store.models import Metric, Run, StatusCount
from falcon_lite.store.status import ACTIVE, LIVE
from services.api.deps import AppContext
from services.api.errors import LimitError
from services.api.metrics import Snapshot
from services.api.schemas import Accepted, ReferencePublic, RunPublic


def parse_names(names: str | None) -> list[str] | None:
    """``"std_ratio,loss"`` -> ``["std_ratio", "loss"]``; empty or None -> all names."""
    if not names:
        return None
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    return wanted or None


def latest_diagnostics(session: Session, run_ids: list[int]) -> dict[int, dict]:
    """The newest metrics row of each run (one query)."""
    if not run_ids:
        return {}
    newest = (
        select(Metric.run_id, func.max(Metric.step).label("step"))
        .where(Metric.run_id.in_(run_ids))
        .group_by(Metric.run_id)
        .subquery()
    )
    rows = session.execute(
        select(Metric.run_id, Metric.step, Metric.values).join(
            newest, (Metric.run_id == newest.c.run_id) & (Metric.step == newest.c.step)
        )
    )
    return {run_id: {"step": step, **(values or {})} for run_id, step, values in rows}


def _public(run: Run, diagnostics: dict | None) -> RunPublic:
    return RunPublic(
        id=run.id, name=run.name, status=run.status, step=run.step or 0, config=run.config,
        diagnostics=diagnostics, reason=run.reason, outcome=run.outcome, created=run.created,
        updated=run.updated,
    )


def run_public(session: Session, run: Run) -> RunPublic:
    return _public(run, latest_diagnostics(session, [run.id]).get(run.id))


def runs_public(session: Session, found: list[Run]) -> list[RunPublic]:
    latest = latest_diagnostics(session, [r.id for r in found])
    return [_public(r, latest.get(r.id)) for r in found]


def create_run(ctx: AppContext, config: RunConfig, start: bool) -> int:
    """Create a run; start it through the run control unless ``start`` is false.

    A run that is only created needs no Ray: it is one row, written in one transaction. The
    config is checked against its problem and estimator first (`ConfigError`: a 422).
    """
    check_config(config)
    if start:
        return ctx.control().create(config, start=True)
    with ctx.sessions.begin() as session:
        return store_runs.create_run(session, config).id


def _status(ctx: AppContext, run_id: int) -> str:
    with ctx.reading() as session:
        return store_runs.get_run(session, run_id).status


def control_action(ctx: AppContext, run_id: int, action: str) -> Accepted:
    """start / stop / resume a run; all are idempotent and return once accepted."""
    status = _status(ctx, run_id)  # 404 before touching Ray
    if action == "stop" and status not in ACTIVE:
        return Accepted(id=run_id, status=status, detail=f"run {run_id} is {status}: nothing to stop")
    getattr(ctx.control(), action)(run_id)
    return Accepted(id=run_id, status=_status(ctx, run_id), detail=f"{action} accepted")


def delete_run(ctx: AppContext, run_id: int) -> None:
    """Delete a run that is not running (409 otherwise), with its samples.

    Through the run control when this process is connected to Ray; otherwise the run has
    no supervisor this process could know of, and the store deletes it directly.
    """
    status = _status(ctx, run_id)
    if status in ACTIVE:
        raise ConflictError(f"run {run_id} is {status}: stop it before deleting it")
    if ctx.connected():
        ctx.control().delete(run_id)  # also ends a supervisor this process may have left
        return
    with ctx.sessions.begin() as session:
        store_runs.delete_run(session, run_id)


def _check_cap(ctx: AppContext, n: int, dim: int) -> None:
    """`LimitError` (422 on ``n``) when n draws of dimension dim are over the configured cap."""
    cap = ctx.settings.posterior_max_values
    if n * dim > cap:
        raise LimitError(("query", "n"), f"n = {n} samples of dimension {dim} is {n * dim} numbers, "
                         f"over the limit of {cap} (FALCON_LITE_POSTERIOR_MAX_VALUES): "
                         f"ask for at most {cap // dim}")


def posterior(ctx: AppContext, run_id: int, n: int, seed: int = 0) -> tuple[int, list[str], np.ndarray]:
    """``(step, parameter names, draws)``: n draws, shape (n, dim), from the estimate in the
    run's newest checkpoint, made at that step. No Ray: the checkpoint is in the database.

    `ConflictError` (409) before the first checkpoint after a training step: the network
    is still the untrained one it started with. `LimitError` (422) when n x dim is over the configured cap.
    """
    import torch

    from falcon_lite.engine.loop import posterior_draws
    from falcon_lite.engine.state import restore

    with ctx.reading() as session:
        config = store_runs.get_run(session, run_id).config
        saved = store_runs.latest_checkpoint(session, run_id)
    if saved is None or saved[0] < 1:  # (a run stopped before its first step saves step 0)
        every = config.get("training", {}).get("checkpoint_every")
        raise ConflictError(
            f"run {run_id} has no checkpoint of a trained network yet, so there is no posterior "
            f"to sample: one is written every {every} training steps (training.checkpoint_every) "
            "and when the run stops"
        )
    step, blob = saved
    state = restore(RunConfig.model_validate(config), blob)
    _check_cap(ctx, n, state.simulator.dim)
    # the estimator's own sampler (a Gaussian's or a flow's draws alike), kept within the prior's support
    draws = posterior_draws(state, n, torch.Generator().manual_seed(seed))
    return step, state.simulator.problem.parameter_names, draws


def reference(ctx: AppContext, run_id: int, n: int, seed: int = 0) -> ReferencePublic:
    """n draws (n, dim) from the reference posterior of the run's problem at the run's
    observation: rows of the reference's own samples where it has some (kind ``samples``:
    without replacement while n allows), else draws from its exact Gaussian (kind
    ``gaussian``: independent per parameter, its mean and std).

    `NotFoundError` (404) when the problem has no reference there (or cannot be built in
    this process); `LimitError` (422) when n x dim is over the cap, as for `posterior`.
    """
    with ctx.reading() as session:
        config = RunConfig.model_validate(store_runs.get_run(session, run_id).config)
    try:
        bound = bind_problem(config)
    except (PluginError, ProblemError, TypeError, ValueError) as exc:
        raise NotFoundError(f"run {run_id}'s problem cannot be built here, so it has no reference "
                            f"posterior: {exc}") from None
    _check_cap(ctx, n, bound.dim)
    try:
        found = bound.reference()
    except Exception as exc:  # noqa: BLE001 - the problem's own code failed: no reference to show
        raise NotFoundError(f"problem {bound.name!r} could not compute its reference posterior at run {run_id}'s "
                            f"observation: {type(exc).__name__}: {exc}") from None
    if found is not None and not (np.isfinite(found.mean).all() and np.isfinite(found.std).all()):
        raise NotFoundError(f"problem {bound.name!r}'s reference posterior at run {run_id}'s observation is not finite")
    if found is None:
        raise NotFoundError(f"problem {bound.name!r} has no reference posterior at run {run_id}'s observation "
                            f"({bound.observation or 'the x_obs in its config'}): only the estimate can be shown")
    rng = np.random.default_rng(seed)
    if found.samples is not None:
        kind, draws = "samples", found.samples[rng.choice(len(found.samples), size=n, replace=n > len(found.samples))]
    else:
        kind, draws = "gaussian", found.mean + found.std * rng.standard_normal((n, bound.dim))
    return ReferencePublic(run_id=run_id, problem=bound.name, kind=kind, n=n, dim=bound.dim,
                           parameters=bound.problem.parameter_names, mean=found.mean.tolist(),
                           std=found.std.tolist(), samples=draws.tolist())


def buffer_of(connection: Connection, run_id: int) -> dict:
    """The body of ``GET /runs/{id}/buffer`` (DESIGN.md, REST contract) from one indexed statement.

    The counts are the ``status_counts`` rows the store keeps in the same transaction as
    every sample change, composed by the function the store's own `composition` uses.
    """
    purged, rejected, prior_fraction, rows = store_runs.buffer_counts(connection, run_id)
    comp = compose(purged, rejected, rows)
    return {
        "counts": comp.counts,
        "purged": comp.purged,
        "total": comp.total,
        "prior_share_trainable": comp.prior_share_trainable,
        "prior_fraction": prior_fraction,
    }


def buffer(ctx: AppContext, run_id: int) -> dict:
    """`buffer_of` on a connection of its own (for callers in a worker thread, e.g. SSE)."""
    with ctx.engine.connect() as connection:
        return buffer_of(connection, run_id)


def snapshot(ctx: AppContext) -> Snapshot:
    """Counts for Prometheus: runs by status, samples by status and origin, live steps."""
    snap = Snapshot()
    with ctx.reading() as session:
        for status, n in session.execute(select(Run.status, func.count()).group_by(Run.status)):
            snap.runs_by_status[status] = n
        counts = session.execute(
            select(StatusCount.status, StatusCount.origin, func.sum(StatusCount.n))
            .group_by(StatusCount.status, StatusCount.origin)
        )
        for status, origin, n in counts:
            snap.samples[(Status(status).name, Origin(origin).name.lower())] = int(n or 0)
        purged = session.execute(select(func.sum(Run.purged))).scalar()
        snap.samples[("PURGED", "all")] = int(purged or 0)
        for run_id, step in session.execute(select(Run.id, Run.step).where(Run.status.in_(LIVE))):
            snap.steps[run_id] = step or 0
    return snap


def problems() -> list[dict]:
    """The registered problems (`falcon_lite.engine.problem.catalogue`)."""
    return catalogue()
