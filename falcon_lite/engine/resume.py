"""A run's state from the database: its newest checkpoint, or a fresh start.

Importing this does not import torch (`load_state` does, when called).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import sqlalchemy as sa

from falcon_lite.config import RunConfig
from falcon_lite.store import runs
from falcon_lite.store.db import session_factory

if TYPE_CHECKING:
    from falcon_lite.engine.state import RunState


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
