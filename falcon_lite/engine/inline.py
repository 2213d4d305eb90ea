"""The inline runtime: one run's loop in the calling process, deterministic for a seed.

Used by `falcon-lite run`, by the stress harness (one process per run) and by tests.
Every simulated sample goes through the SampleStore; the trainer reads only its mirror.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import TYPE_CHECKING

import sqlalchemy as sa

from falcon_lite.config import RunConfig
from falcon_lite.core.regime import RegimeTracker
from falcon_lite.engine.loop import held_out, ingest, propose, simulate, sizes_of, train_and_diagnose
from falcon_lite.store import runs
from falcon_lite.store.db import session_factory
from falcon_lite.store.samples import SampleStore

if TYPE_CHECKING:
    from falcon_lite.engine.state import RunState

PURGE_EVERY = 50
# On SQLite the inline runtime commits its appends in groups (SampleStore's group commit):
# a group commits at the first append after it is GROUP_COMMIT_S old, or sooner at a metrics
# flush, checkpoint, purge or mirror heartbeat, and no metrics row or checkpoint ever refers
# to an uncommitted sample. A crash loses the simulations of at most that time plus a step,
# which a resume simulates again (the streams are a function of seed and step). On
# PostgreSQL each append commits alone: there the savepoints' round trips cost more than
# the commits they save (the inline row of bench/ray_loop.py's config: 14-15 ms per step
# alone, 17-21 grouped).
GROUP_COMMIT_S = 0.1
FLUSH_EVERY_S = 1.0  # metrics reach the database (and a live watcher) at least this often
HEARTBEAT_S = 1.0  # the run's mirror records the version it holds at least this often


class Recorder:
    """Buffers metric rows and writes them, with the run's step, in one transaction.

    A flush happens at checkpoints, when `max_seconds` have passed since the last one (how
    stale a live watcher's view may get) or at `max_rows` rows, whichever comes first; the
    first row is written at once, so that a watcher sees at once that training began. A
    flush runs inside `store.settled()`, if a store is given: its held group is committed
    first, so what the flush records refers only to durable samples.
    """

    def __init__(self, engine: sa.Engine, run_id: int, max_rows: int = 1000, max_seconds: float = 1.0,
                 store: SampleStore | None = None):
        self.sessions = session_factory(engine)
        self.run_id = run_id
        self.store = store
        self.rows: list[dict] = []
        self.max_rows, self.max_seconds = max_rows, max_seconds
        self.last_flush = -math.inf  # the first row goes out at once
        self.regime = RegimeTracker()
        self.alarm: float | None = None
        self.rollbacks: float | None = None

    def add(self, row: dict, step: int) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.max_rows or time.monotonic() - self.last_flush > self.max_seconds:
            self.flush(step)

    def flush(self, step: int, checkpoint: bytes | None = None) -> None:
        with self.store.settled() if self.store is not None else nullcontext():
            self._write(step, checkpoint)

    def _write(self, step: int, checkpoint: bytes | None) -> None:
        rows, self.rows = self.rows, []
        with self.sessions.begin() as session:
            if rows:
                runs.add_metrics(session, self.run_id, rows)
                self._regime_events(session, rows)
                runs.add_event(session, self.run_id, "diagnostics", rows[-1])
            runs.set_step(session, self.run_id, step)
            if checkpoint is not None:
                runs.save_checkpoint(session, self.run_id, step, checkpoint)
        self.last_flush = time.monotonic()

    def _regime_events(self, session, rows: list[dict]) -> None:
        """Events when the run changes regime (by the truth, with hysteresis: core/regime.py),
        the alarm flips (without it), or the adaptive policy rolls back."""
        for row in rows:
            rollbacks = row.get("rollbacks")
            if rollbacks is not None:
                if self.rollbacks is not None and rollbacks > self.rollbacks:
                    runs.add_event(session, self.run_id, "rollback",
                                   {"step": row["step"], "rollbacks": int(rollbacks), "lr": row.get("lr")})
                self.rollbacks = rollbacks
            alarm = row.get("alarm")
            if alarm is not None and alarm != self.alarm:
                if alarm or self.alarm is not None:
                    state = "raised" if alarm else "cleared"
                    runs.add_event(session, self.run_id, "alarm",
                                   {"step": row["step"], "alarm": state, "alarm_ema": row.get("alarm_ema")})
                self.alarm = alarm
            if row.get("constant_regime") is not None and (name := self.regime.update(row["constant_regime"])):
                runs.add_event(session, self.run_id, "regime",
                               {"step": row["step"], "regime": name, "constant_share": self.regime.share})


def load_state(engine: sa.Engine, run_id: int) -> RunState:
    """The run's state from its newest checkpoint, or a fresh one.

    After a crash the buffer may hold batches simulated after the checkpoint: training
    re-does its steps from the checkpoint, while simulation goes on after the newest stored
    batch, so that no batch is ever stored twice.
    """
    from falcon_lite.engine.state import new_state, restore

    with session_factory(engine).begin() as session:
        config = RunConfig.model_validate(runs.get_run(session, run_id).config)
        saved = runs.latest_checkpoint(session, run_id)
        last_stored = runs.last_sample_step(session, run_id)
    state = restore(config, saved[1]) if saved else new_state(config)
    if last_stored is not None:
        state.next_proposal = max(state.next_proposal, last_stored + 1)
    return state


def run_inline(
    engine: sa.Engine,
    run_id: int,
    *,
    should_stop: Callable[[], bool] = lambda: False,
    on_step: Callable[[int, dict | None], None] | None = None,
) -> RunState:
    """Run (or resume) `run_id` to its last step or until `should_stop()`; returns the final state.

    The run ends `completed`, `stopped` (checkpointed, resumable) or `failed` (with the reason).
    """
    state = load_state(engine, run_id)
    cfg = state.config
    sessions = session_factory(engine)
    with sessions.begin() as session:
        runs.set_status(session, run_id, "running")
    grouped = GROUP_COMMIT_S if engine.dialect.name == "sqlite" else 0.0
    store = SampleStore(engine, run_id, sizes_of(state), state.simulator.dim, cfg.estimator.dtype,
                        group_commit_s=grouped)
    mirror = store.mirror(f"inline-{run_id}", heartbeat_s=HEARTBEAT_S)
    recorder = Recorder(engine, run_id, max_seconds=FLUSH_EVERY_S, store=store)
    try:
        mirror.sync()
        status = "completed"
        for step in range(state.step, cfg.training.steps):
            if should_stop():
                status = "stopped"
                break
            row = step_once(state, store, mirror, step)
            if row is not None:
                recorder.add(row, state.step)
            if state.step % cfg.training.checkpoint_every == 0:
                recorder.flush(state.step, state.to_bytes())
            if step % PURGE_EVERY == 0:
                store.purge()
            if on_step is not None:
                on_step(step, row)
        recorder.flush(state.step, state.to_bytes())
        with sessions.begin() as session:
            runs.set_status(session, run_id, status)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        try:
            store.commit()  # what was stored stays (a change that failed was undone alone)
        except Exception as lost:
            reason += f" (and the simulations since the last commit were lost: {type(lost).__name__}: {lost})"
        with sessions.begin() as session:
            runs.set_status(session, run_id, "failed", reason=reason)
        raise
    finally:
        mirror.close()
    return state


def step_once(state: RunState, store: SampleStore, mirror, step: int) -> dict | None:
    """propose -> simulate -> store -> train -> diagnose, for one step; returns its metrics row."""
    proposed = propose(state, state.next_proposal)
    x = simulate(state.simulator, proposed, state.seed)
    ingest(state, store, mirror, proposed, x)
    return train_and_diagnose(state, store, mirror, step, held_out(state, proposed, x))
