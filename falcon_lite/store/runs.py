"""Runs, metrics, events and checkpoints: plain functions over a caller-owned `Session`.

None of these functions commits: the caller owns the transaction (open sessions with
`falcon_lite.store.db.session_factory`). They raise `NotFoundError` for an unknown run
and `ConflictError` for an action the run's status forbids.

Run lifecycle: `falcon_lite.store.status` (`set_status` enforces it; the current status again
is a no-op). Every status change records an event ``"status"`` with the run's step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from numbers import Real
from typing import Any

from sqlalchemy import Connection, Integer, bindparam, delete, func, insert, select
from sqlalchemy.orm import Session

from falcon_lite.config import RunConfig
from falcon_lite.core.policy import Origin, Status
from falcon_lite.store.errors import ConflictError, NotFoundError
from falcon_lite.store.models import Checkpoint, Event, Metric, Reader, Run, Sample, StatusCount, utcnow
from falcon_lite.store.status import DELETABLE, RUN_STATUSES, TRANSITIONS, RunStatus



DEFAULT_KEEP_CHECKPOINTS = 3


def create_run(session: Session, config: RunConfig) -> Run:
    """Insert a pending run for `config` (with its zeroed buffer counts) and return it."""
    if not isinstance(config, RunConfig):
        raise TypeError(f"config must be a RunConfig, got {type(config).__name__}")
    run = Run(
        name=config.name,
        status=RunStatus.PENDING.value,
        step=0,
        config=config.model_dump(mode="json"),
        next_seq=0,
        version=0,
        appended=0,
        rejected=0,
        purged=0,
    )
    session.add(run)
    session.flush()
    session.execute(
        insert(StatusCount),
        [{"run_id": run.id, "status": int(s), "origin": int(o), "n": 0} for s in Status for o in Origin],
    )
    return run


def get_run(session: Session, run_id: int, *, for_update: bool = False) -> Run:
    """The run `run_id`; `NotFoundError` if there is none."""
    stmt = select(Run).where(Run.id == run_id)
    if for_update:
        stmt = stmt.with_for_update()
    run = session.execute(stmt).scalar_one_or_none()
    if run is None:
        raise NotFoundError(f"run {run_id} not found")
    return run


def list_runs(session: Session, offset: int = 0, limit: int = 50) -> tuple[list[Run], int]:
    """A page of runs, newest first, and the total number of runs."""
    if offset < 0 or limit < 0:
        raise ValueError(f"offset and limit must be non-negative, got offset={offset}, limit={limit}")
    total = session.execute(select(func.count()).select_from(Run)).scalar_one()
    runs = session.execute(select(Run).order_by(Run.id.desc()).offset(offset).limit(limit)).scalars()
    return list(runs), int(total)


def set_status(session: Session, run_id: int, status: RunStatus | str, reason: str | None = None,
               outcome: str | None = None) -> Run:
    """Move the run to `status` (see the lifecycle above); `ConflictError` if not allowed. A run
    that ends records its verdict, `outcome`; one that runs again has none until it ends."""
    try:
        status = RunStatus(status)
    except ValueError:
        raise ValueError(f"unknown run status {status!r}; expected one of {', '.join(RUN_STATUSES)}") from None
    run = get_run(session, run_id, for_update=True)
    if run.status == status:
        return run
    if status not in TRANSITIONS[run.status]:
        raise ConflictError(f"run {run_id} is {run.status}: it cannot become {status}")
    previous = run.status
    run.status = status.value
    run.reason = reason
    run.outcome = outcome if status.terminal else None
    run.updated = utcnow()
    add_event(session, run_id, "status", {"status": status.value, "previous": previous, "reason": reason,
                                          "step": run.step, **({"outcome": outcome} if outcome is not None else {})})
    session.flush()
    return run


def set_step(session: Session, run_id: int, step: int) -> None:
    """Record the run's current training step."""
    if step < 0:
        raise ValueError(f"step must be non-negative, got {step}")
    run = get_run(session, run_id)
    run.step = int(step)
    run.updated = utcnow()
    session.flush()


def delete_run(session: Session, run_id: int) -> None:
    """Delete a run that is not running, with its samples, metrics, events and checkpoints."""
    run = get_run(session, run_id, for_update=True)
    if run.status not in DELETABLE:
        raise ConflictError(f"run {run_id} is {run.status}: stop it before deleting it")
    for model in (Sample, StatusCount, Reader, Metric, Event, Checkpoint):
        session.execute(delete(model).where(model.run_id == run_id))
    session.execute(delete(Run).where(Run.id == run_id))
    session.expunge(run)


def _clean_value(step: int, name: str, value: Any) -> float | None:
    if type(value) is float:  # nearly every value: skip the (slow) ABC check
        return value if math.isfinite(value) else None
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"metric {name!r} at step {step} must be a number, got {value!r}")
    value = float(value)
    return value if math.isfinite(value) else None


def add_metrics(session: Session, run_id: int, rows: Iterable[dict[str, Any]]) -> int:
    """Record metric rows ``{"step": n, NAME: float, ...}``; return how many were written.

    Non-finite values (NaN, +-inf) are stored as null (JSON has no NaN). A step recorded
    again (a resumed run re-doing steps) replaces its earlier values.
    """
    get_run(session, run_id)
    cleaned: dict[int, dict[str, float | None]] = {}
    for row in rows:
        if "step" not in row:
            raise ValueError(f"metric row without a 'step': {row!r}")
        step = row["step"]
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"metric step must be a non-negative integer, got {step!r}")
        cleaned[step] = {k: _clean_value(step, k, v) for k, v in row.items() if k != "step"}
    if not cleaned:
        return 0
    session.execute(delete(Metric).where(Metric.run_id == run_id, Metric.step.in_(list(cleaned))))
    session.execute(
        insert(Metric), [{"run_id": run_id, "step": s, "values": v} for s, v in cleaned.items()]
    )
    return len(cleaned)


def metrics_since(
    session: Session,
    run_id: int,
    since_step: int | None = None,
    names: Iterable[str] | None = None,
    limit: int = 10_000,
) -> list[dict[str, Any]]:
    """Metric rows with ``step > since_step`` (all if None), oldest first, at most `limit`.

    With `names`, each row holds only those metrics (and "step").
    """
    get_run(session, run_id)
    stmt = select(Metric.step, Metric.values).where(Metric.run_id == run_id)
    if since_step is not None:
        stmt = stmt.where(Metric.step > since_step)
    stmt = stmt.order_by(Metric.step).limit(limit)
    wanted = None if names is None else set(names)
    out = []
    for step, values in session.execute(stmt):
        if wanted is not None:
            values = {k: v for k, v in values.items() if k in wanted}
        out.append({"step": step, **values})
    return out


def run_summary(session: Session, run_id: int, mean_of: str) -> tuple[dict[str, Any] | None, float | None]:
    """The run's newest metrics row (None without one) and the mean of metric `mean_of` over all
    its rows (None where no row has it), both computed by the database."""
    get_run(session, run_id)
    newest = session.execute(
        select(Metric.step, Metric.values).where(Metric.run_id == run_id).order_by(Metric.step.desc()).limit(1)
    ).first()
    mean = session.execute(
        select(func.avg(Metric.values[mean_of].as_float())).where(Metric.run_id == run_id)
    ).scalar()
    return (None if newest is None else {"step": newest[0], **newest[1]}), (None if mean is None else float(mean))


# The polled reads are built once: building and cache-keying a select() costs more than
# running it on SQLite.
_BUFFER_COUNTS = (
    select(Run.purged, Run.rejected, Run.config[("buffer", "prior_fraction")],
           StatusCount.status, StatusCount.origin, StatusCount.n)
    .select_from(Run)
    .outerjoin(StatusCount, StatusCount.run_id == Run.id)
    .where(Run.id == bindparam("run_id"))
)
_METRICS_PAGE = (
    select(Metric.step, Metric.values)
    .where(Metric.run_id == bindparam("run_id"), Metric.step > bindparam("since_step"))
    .order_by(Metric.step)
    .limit(bindparam("limit", type_=Integer))
)
_RUN_EXISTS = select(Run.id).where(Run.id == bindparam("run_id"))


def buffer_counts(connection: Connection | Session, run_id: int) -> tuple[int, int, Any, list[tuple[int, int, int]]]:
    """``(purged, rejected, prior_fraction, [(status, origin, n), ...])`` of a run, read-only.

    ``prior_fraction`` is the config's value as stored (a number, or a policy's name).

    One statement (the run's row joined to its maintained ``status_counts``: two primary
    key lookups, one snapshot, no scan of ``samples``); `NotFoundError` for an unknown run.
    """
    rows = connection.execute(_BUFFER_COUNTS, {"run_id": run_id}).all()
    if not rows:
        raise NotFoundError(f"run {run_id} not found")
    purged, rejected, prior_fraction = rows[0][:3]
    counts = [(int(s), int(o), int(n)) for *_, s, o, n in rows if s is not None]
    return int(purged or 0), int(rejected or 0), prior_fraction, counts


def metrics_page(
    connection: Connection | Session,
    run_id: int,
    since_step: int = -1,
    names: Iterable[str] | None = None,
    limit: int = 1000,
) -> list[dict[str, Any]]:
    """`metrics_since` for pollers: rows with ``step > since_step``, oldest first, at most `limit`.

    A range scan of the ``(run_id, step)`` primary key; the run's existence is checked
    only when no row comes back (a row implies its run), so a page costs one statement.
    """
    found = connection.execute(_METRICS_PAGE, {"run_id": run_id, "since_step": since_step, "limit": limit}).all()
    if not found and connection.execute(_RUN_EXISTS, {"run_id": run_id}).first() is None:
        raise NotFoundError(f"run {run_id} not found")
    wanted = None if names is None else set(names)
    return [{"step": step, **(values if wanted is None else {k: v for k, v in values.items() if k in wanted})}
            for step, values in found]


def _json_safe(value: Any) -> Any:
    """JSON has no NaN or infinity (PostgreSQL refuses them): non-finite floats become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def add_event(session: Session, run_id: int, kind: str, data: dict[str, Any] | None = None) -> Event:
    """Record an event for the run (ids increase, so readers resume with `events_since`).

    Non-finite numbers in `data` are stored as null.
    """
    if not kind:
        raise ValueError("event kind must be a non-empty string")
    event = Event(run_id=run_id, kind=kind, data=_json_safe(dict(data or {})), created=utcnow())
    session.add(event)
    session.flush()
    return event


def events_since(session: Session, run_id: int, after_id: int = 0, limit: int = 1000) -> list[Event]:
    """The run's events with ``id > after_id``, oldest first."""
    get_run(session, run_id)
    stmt = (
        select(Event).where(Event.run_id == run_id, Event.id > after_id).order_by(Event.id).limit(limit)
    )
    return list(session.execute(stmt).scalars())


def events_tail(session: Session, run_id: int, limit: int, skip_kinds: Iterable[str] = ()) -> tuple[list[Event], int]:
    """The run's newest `limit` events not of `skip_kinds`, oldest first, and the newest
    event id of any kind (0 if none): where a reader that starts from this tail goes on."""
    get_run(session, run_id)
    skip = list(skip_kinds)
    stmt = select(Event).where(Event.run_id == run_id)
    if skip:
        stmt = stmt.where(Event.kind.not_in(skip))
    tail = list(session.execute(stmt.order_by(Event.id.desc()).limit(limit)).scalars())
    newest = session.execute(select(func.max(Event.id)).where(Event.run_id == run_id)).scalar()
    return tail[::-1], int(newest or 0)


def save_checkpoint(
    session: Session, run_id: int, step: int, blob: bytes, keep: int = DEFAULT_KEEP_CHECKPOINTS
) -> None:
    """Store the estimator state at `step` (replacing one at the same step); keep the newest `keep`."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise TypeError(f"checkpoint blob must be bytes, got {type(blob).__name__}")
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    get_run(session, run_id)
    session.execute(delete(Checkpoint).where(Checkpoint.run_id == run_id, Checkpoint.step == step))
    session.add(Checkpoint(run_id=run_id, step=int(step), blob=bytes(blob), created=utcnow()))
    session.flush()
    steps = session.execute(
        select(Checkpoint.step).where(Checkpoint.run_id == run_id).order_by(Checkpoint.step.desc())
    ).scalars().all()
    if len(steps) > keep:
        session.execute(
            delete(Checkpoint).where(Checkpoint.run_id == run_id, Checkpoint.step.in_(steps[keep:]))
        )


def latest_checkpoint(session: Session, run_id: int) -> tuple[int, bytes] | None:
    """``(step, blob)`` of the newest checkpoint, or None."""
    get_run(session, run_id)
    row = session.execute(
        select(Checkpoint.step, Checkpoint.blob)
        .where(Checkpoint.run_id == run_id)
        .order_by(Checkpoint.step.desc())
        .limit(1)
    ).one_or_none()
    return None if row is None else (int(row[0]), bytes(row[1]))


def last_sample_step(session: Session, run_id: int, window: int = 4096) -> int | None:
    """The newest step among the run's most recently stored samples (bounded: no table scan)."""
    recent = (
        select(Sample.step).where(Sample.run_id == run_id).order_by(Sample.seq.desc()).limit(window).subquery()
    )
    return session.execute(select(func.max(recent.c.step))).scalar()
