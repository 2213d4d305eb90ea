"""The trainer actor of a run: the engine's driver in a thread of its own, fed by an inbox.

The trainer is the only holder of the model and of the buffer's mirror (and, on SQLite, the
only writer of samples). It trains in a thread (`run`) while simulated batches queue in its
inbox (`submit`); the driver (`falcon_lite.engine.driver`) decides how batches and steps
interlock, and records diagnostics and checkpoints. What this module adds is Ray's: the
inbox, the threads, what the other threads may read (`progress`), and a restart that
re-runs __init__ and so rebuilds the trainer from the last checkpoint in the database.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import queue
import threading
import time

import ray

from falcon_lite.core.samples import Delta
from falcon_lite.engine import loop, regions
from falcon_lite.engine.driver import Arrival, Driver
from falcon_lite.engine.recorder import Recorder
from falcon_lite.engine.resume import load_state
from falcon_lite.runtime.actors import Simulated, one_thread
from falcon_lite.store.buffer import SampleStore
from falcon_lite.store.db import make_engine
from falcon_lite.store.dialects import dialect_for

Progress = tuple[int, int, tuple]  # steps trained, the next batch to simulate, (loop.Steer | None, prior fraction)


@ray.remote(num_cpus=0.01, max_restarts=-1, max_task_retries=0, max_concurrency=4)
class Trainer:
    """Only the training thread touches the model, the store and the mirror; the other
    methods read what it publishes."""

    def __init__(self, run_id: int, database_url: str):
        one_thread()
        self.engine = make_engine(database_url)
        state = load_state(self.engine, run_id)
        store = SampleStore(self.engine, run_id, loop.sizes_of(state), state.simulator.dim,
                            x_shape=state.simulator.x_shape)
        # One reader name per run: a restarted trainer replaces its dead predecessor's
        # registration instead of holding back purges until it times out.
        mirror = store.mirror(f"trainer-{run_id}")
        mirror.sync()
        # Where the database has a writer beside the trainer (runtime.actors.Writer), it purges.
        purges = not dialect_for(self.engine).own_writer
        self.driver = Driver(state, store, mirror, Recorder(self.engine, run_id), purges=purges)
        self.continuous = state.config.runtime.steps_per_batch is None
        self.nodes: collections.Counter[str] = collections.Counter()
        self.inbox: queue.Queue = queue.Queue()
        self.taken = threading.Condition()  # notified whenever the training thread takes a batch
        self.halting = threading.Event()
        self.fresh = False  # a batch was taken since the steer was last published
        self.waited = 0.0  # seconds the training thread waited for a batch since the last metrics row
        self.since = time.perf_counter()  # when that interval began
        self.steer = None
        self.shipped: regions.Weights | None = None  # the newest weights version put into the object store
        self.published = self._snapshot(steer=True)

    def progress(self) -> Progress:
        """Steps trained, the next batch to simulate, and how to steer it: (the posterior to
        propose from, the prior fraction in force)."""
        return self.published

    def submit(self, simulated: Simulated, written: Delta | None = None) -> tuple[int, tuple, int]:
        """Queue a simulated batch for the training thread, with the writer's delta if it is
        stored already; returns (steps trained, how to steer the next batch, batches queued)."""
        self.inbox.put((simulated, written))
        step, _, steer = self.published
        return step, steer, self.inbox.qsize()

    def room(self, queued: int, timeout: float = 1.0) -> tuple[int, tuple, int]:
        """Wait until fewer than `queued` batches wait in the inbox (or `timeout`); returns
        what `submit` returns. Lets the supervisor refill the pipeline as soon as it can."""
        with self.taken:
            self.taken.wait_for(lambda: self.inbox.qsize() < queued, timeout=timeout)
        step, _, steer = self.published
        return step, steer, self.inbox.qsize()

    def halt(self) -> bool:
        self.halting.set()
        return True

    def run(self, total: int) -> int:
        """Train until step `total` or `halt()`; returns the step reached. Batches still in
        the inbox at the end were never stored: nothing is lost by dropping them."""
        self.waited, self.since = 0.0, time.perf_counter()
        return self.driver.run(total, self._take, self.halting.is_set, annotate=self._wait_share,
                               after_step=self._publish)

    def _take(self, wait: bool) -> Arrival | None:
        """The next batch from the inbox; waits a moment for one if `wait`."""
        started = time.perf_counter()
        try:
            (batch, nodes), written = self.inbox.get(timeout=0.1) if wait else self.inbox.get_nowait()
        except queue.Empty:
            return None
        finally:
            if wait:
                self.waited += time.perf_counter() - started
        with self.taken:
            self.taken.notify_all()
        self.nodes.update(node for node in nodes if node)
        self.fresh = True
        return batch, written

    def _wait_share(self, row: dict) -> None:
        """How much of the time since the previous row training sat waiting for a simulated
        batch: 0 while simulation keeps up."""
        now = time.perf_counter()
        row["wait_share"] = min(1.0, self.waited / (now - self.since))
        self.waited, self.since = 0.0, now

    def _publish(self, step: int, row: dict | None) -> None:
        # Lock-step and paced training steer the next batches from the newest weights (the
        # supervisor proposes more whenever the trainer takes a batch, which may be after any
        # step); continuous training from those of the moment a batch arrives, or of the
        # newest diagnostics (which computed the posterior at x_obs anyway).
        self.published = self._snapshot(steer=not self.continuous or self.fresh or row is not None)
        self.fresh = False

    def _snapshot(self, steer: bool) -> Progress:
        """What the other threads read; the steer (a forward pass at x_obs unless diagnostics
        just made one) is recomputed when asked, the step count always."""
        state = self.driver.state
        if steer or self.steer is None:
            source = loop.steer_for(state, state.step)
            if isinstance(source, regions.Weights):  # a truncated proposal: by reference, once per version
                source = self._weights(source)
            self.steer = (source, state.prior_fraction)
        return state.step, state.next_proposal, self.steer

    def _weights(self, weights: regions.Weights) -> regions.Weights:
        """A truncated proposal's weights version, put into the object store once per version."""
        if self.shipped is None or self.shipped.version != weights.version:
            self.shipped = dataclasses.replace(weights, state=ray.put(weights.state))
        return self.shipped

    def pid(self) -> int:
        return os.getpid()

    def checkpoint(self) -> int:
        return self.driver.checkpoint()

    def simulations_by_node(self) -> dict[str, int]:
        """Simulator calls per Ray node: batches, or their chunks where `runtime.simulation_chunk` is set."""
        return dict(self.nodes)

    def close(self) -> None:
        self.driver.mirror.close()
        self.engine.dispose()
