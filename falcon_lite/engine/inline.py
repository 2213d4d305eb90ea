"""The inline runtime: one run's loop in the calling process, deterministic for a seed.

Used by `falcon-lite run`, by the stress harness (one process per run) and by tests. It
simulates each batch when the driver asks for one: one batch per ``runtime.steps_per_batch``
= k optimizer steps (k = 1, the default, is the seed's lock-step; continuous training, null,
has nothing arriving between two steps inline and runs lock-step); every simulated sample
goes through the SampleStore, and the trainer reads only its mirror.

Where the database can group its commits (`dialect_for(engine).group_commit_s`, SQLite), a
group commits at the first append after it is that old, or sooner at a metrics flush,
checkpoint, purge or mirror heartbeat, and no metrics row or checkpoint ever refers to an
uncommitted sample. A crash loses the simulations of at most that time plus a step, which
a resume simulates again (the streams are a function of seed and step).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import sqlalchemy as sa

from falcon_lite.engine import loop
from falcon_lite.engine.driver import Driver
from falcon_lite.engine.recorder import Recorder
from falcon_lite.engine.resume import load_state
from falcon_lite.engine.verdict import judge
from falcon_lite.store import runs
from falcon_lite.store.buffer import SampleStore
from falcon_lite.store.db import session_factory
from falcon_lite.store.dialects import dialect_for
from falcon_lite.store.status import RunStatus

if TYPE_CHECKING:
    from falcon_lite.config import RunConfig
    from falcon_lite.engine.state import RunState

GROUP_COMMIT_S: float | None = None  # where the database groups commits: this age instead of its own
FLUSH_EVERY_S = 1.0  # metrics reach the database (and a live watcher) at least this often
HEARTBEAT_S = 1.0  # the run's mirror records the version it holds at least this often


@contextmanager
def scratch_run(config: RunConfig, prefix: str = "flr-run-") -> Iterator[tuple[sa.Engine, int]]:
    """(engine, run id) of a run of `config` created in a new SQLite file (migrated) in a
    temporary folder, for a process that runs one config inline and keeps only what it reads
    back (a stress job, a bench); the engine is disposed and the folder removed on the way out."""
    from falcon_lite.store.db import make_engine, migrate

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        url = f"sqlite:///{tmp}/run.db"
        migrate(url)
        engine = make_engine(url)
        try:
            with session_factory(engine).begin() as session:
                run_id = runs.create_run(session, config).id
            yield engine, run_id
        finally:
            engine.dispose()


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
    sessions = session_factory(engine)
    try:
        state = load_state(engine, run_id)
    except Exception as exc:  # a state that cannot be built (a device, a problem): the run fails, saying why
        with sessions.begin() as session:
            runs.set_status(session, run_id, RunStatus.FAILED, reason=f"{type(exc).__name__}: {exc}")
        raise
    cfg = state.config
    with sessions.begin() as session:
        runs.set_status(session, run_id, RunStatus.RUNNING)
    grouped = dialect_for(engine).group_commit_s
    if grouped and GROUP_COMMIT_S is not None:
        grouped = GROUP_COMMIT_S
    store = SampleStore(engine, run_id, loop.sizes_of(state), state.simulator.dim,
                        x_shape=state.simulator.x_shape, group_commit_s=grouped)
    mirror = store.mirror(f"inline-{run_id}", heartbeat_s=HEARTBEAT_S)
    driver = Driver(state, store, mirror, Recorder(engine, run_id, max_seconds=FLUSH_EVERY_S, store=store),
                    lock_step=cfg.runtime.steps_per_batch is None, aligned=True)

    def simulated(wait: bool):
        # the batch of the step about to be trained (or a later one, where a crash left that stored)
        proposed = loop.propose(state, max(state.step, state.next_proposal))
        return loop.simulate(state.simulator, proposed, state.seed, cfg.runtime.simulation_chunk), None

    try:
        mirror.sync()
        driver.run(cfg.training.steps, simulated, should_stop, after_step=on_step)
        status = RunStatus.COMPLETED if state.step >= cfg.training.steps else RunStatus.STOPPED
        driver.checkpoint()
        with sessions.begin() as session:
            runs.set_status(session, run_id, status, outcome=judge(session, run_id))
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        try:
            store.commit()  # what was stored stays (a change that failed was undone alone)
        except Exception as lost:
            reason += f" (and the simulations since the last commit were lost: {type(lost).__name__}: {lost})"
        with sessions.begin() as session:
            runs.set_status(session, run_id, RunStatus.FAILED, reason=reason, outcome=judge(session, run_id))
        raise
    finally:
        mirror.close()
    return state
