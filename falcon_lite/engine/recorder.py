"""A run's metrics, events, step and checkpoints, written in few transactions.

The driver hands every metrics row to a `Recorder`; it buffers them and writes them, with
the run's step (and a checkpoint when one is due), in one transaction. Changes of regime,
of the alarm and rollbacks become events on the way.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from typing import TYPE_CHECKING

import sqlalchemy as sa

from falcon_lite.core.regime import RegimeTracker
from falcon_lite.store import runs
from falcon_lite.store.db import session_factory

if TYPE_CHECKING:
    from falcon_lite.store.buffer import SampleStore


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
