"""A run's cadence, written once for the inline runtime and the Ray trainer.

`Driver` takes simulated batches in (store them unless they are stored already, follow
them in the mirror, check them held out), takes optimizer steps, records diagnostics, and
checkpoints and purges on schedule. `Driver.run` interlocks batches and steps as
``runtime.steps_per_batch`` says: 1 takes exactly one optimizer step per batch (the seed's
lock-step), k up to k steps per batch (exactly k inline, where the next batch is simulated
when asked), None trains continuously on the buffer and takes in whatever has arrived
between two steps (the inline runtime runs that lock-step: nothing arrives between steps). Where the
batches come from is the caller's: the inline runtime simulates them when asked, the Ray
trainer takes them from its inbox.

`BatchWriter` is the cadence of a process that only stores batches (a writer beside the
trainer), and `batches_wanted` how many batches a pipeline keeps going ahead of training.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from falcon_lite.core.samples import Delta, Samples
from falcon_lite.engine import loop

if TYPE_CHECKING:
    from falcon_lite.config import RunConfig
    from falcon_lite.engine.recorder import Recorder
    from falcon_lite.engine.state import RunState
    from falcon_lite.store.buffer import SampleStore
    from falcon_lite.store.mirror import Mirror

PURGE_EVERY = 50  # steps (or batches, for a writer) between two purges of what no reader holds

Arrival = tuple[Samples, Delta | None]  # a simulated batch, and its delta if it is stored already
Take = Callable[[bool], Arrival | None]  # take(wait): the next arrived batch, or None


class Driver:
    """One run's cadence around its state, store, mirror and recorder (see the module doc)."""

    def __init__(self, state: RunState, store: SampleStore, mirror: Mirror, recorder: Recorder, *,
                 lock_step: bool = False, aligned: bool = False, purges: bool = True) -> None:
        """`lock_step`: one batch per step whatever the config says (the inline runtime's continuous);
        `aligned`: with k steps per batch, batches come at the steps that are multiples of k, a
        resumed run's too (the inline runtime's, so that a resume takes its batches where a
        straight run does); `purges`: this driver's store is the run's writer, so it purges too."""
        self.state, self.store, self.mirror, self.recorder = state, store, mirror, recorder
        self.steps_per_batch = 1 if lock_step else state.config.runtime.steps_per_batch
        self.aligned, self.purges = aligned, purges
        self.checks: dict | None = None  # held-out checks of the newest batch, for the next metrics row

    def ingest(self, batch: Samples, delta: Delta | None = None) -> None:
        """Take a simulated batch in: store it (unless `delta` says it is stored), follow it in
        the mirror and the run's counters, and check it held out before it is trained on."""
        if delta is None:
            delta = self.store.append(batch)
        loop.follow(self.state, self.mirror, batch, delta)
        self.checks = loop.held_out(self.state, batch) or self.checks

    def train_one(self, annotate: Callable[[dict], None] | None = None, passed: bool = False) -> dict | None:
        """One optimizer step (none where the early stop `passed` over it); its metrics row
        (`annotate`d) is recorded when diagnostics are due, a checkpoint written when one is, and
        the buffer purged every PURGE_EVERY steps."""
        state = self.state
        step = state.step
        row = loop.train_and_diagnose(state, self.store, self.mirror, step, self.checks, passed)
        if row is not None:
            if annotate is not None:
                annotate(row)
            self.checks = None
            self.recorder.add(row, state.step)
        if state.step % state.config.training.checkpoint_every == 0:
            self.checkpoint()
        if self.purges and step % PURGE_EVERY == 0:
            self.store.purge()
        return row

    def checkpoint(self) -> int:
        """Write the metrics so far, the step and the state: what a resume starts from."""
        self.recorder.flush(self.state.step, self.state.to_bytes())
        return self.state.step

    def run(self, total: int, take: Take, halted: Callable[[], bool] = lambda: False, *,
            annotate: Callable[[dict], None] | None = None,
            after_step: Callable[[int, dict | None], None] | None = None) -> int:
        """Train until step `total` or `halted()`, taking batches in from `take(wait)` as
        ``steps_per_batch`` says (see the module doc); returns the step reached.

        ``take(True)`` may wait a moment for a batch; None means none came (yet).
        `after_step(step, row)` runs after each optimizer step.
        """
        state = self.state
        limit = self.steps_per_batch
        fill = max(1, state.config.buffer.min_training)
        credit = (-state.step) % limit if self.aligned and limit is not None else 0
        while state.step < total and not halted():
            if limit is None:  # continuous: take what has arrived; wait only while the pool is too small
                self._drain(take, wait=self.mirror.trainable_size < fill)
                if self.mirror.trainable_size < fill:
                    continue
            elif credit == 0:
                arrived = take(True)
                if arrived is None:
                    continue
                self.ingest(*arrived)
                credit = limit
            step = state.step
            # the early stop (training.early_stop) may pass over the later of a batch's k steps
            row = self.train_one(annotate, limit is not None and loop.passes_over(state, limit - credit, limit))
            credit = max(credit - 1, 0)
            if after_step is not None:
                after_step(step, row)
        return state.step

    def _drain(self, take: Take, wait: bool) -> None:
        arrived = take(wait)
        while arrived is not None:
            self.ingest(*arrived)
            arrived = take(False)


class BatchWriter:
    """Stores simulated batches for a run, each under the quota it was drawn with, and purges
    every PURGE_EVERY batches (a writer process beside the trainer)."""

    def __init__(self, store: SampleStore, config: RunConfig) -> None:
        self.store, self.config = store, config
        self.appends = 0

    def append(self, batch: Samples, fraction: float) -> Delta:
        if self.store.sizes.prior_fraction != fraction:
            self.store.sizes = loop.sizes_for(self.config, fraction)
        delta = self.store.append(batch)
        self.appends += 1
        if self.appends % PURGE_EVERY == 0:
            self.store.purge()
        return delta


def batches_wanted(config: RunConfig, trained: int) -> int:
    """Batches a pipeline keeps simulating, being stored or queued ahead of training: the
    in-flight window, but no more than the remaining steps need."""
    window = config.runtime.in_flight
    limit = config.runtime.steps_per_batch
    return window if limit is None else min(window, -(-(config.training.steps - trained) // limit))
