"""The Ray actors of one run; each hands its work to engine code in a few lines.

- ProposalSampler: draws a step's parameters (prior share by quota, the rest from the
  tempered posterior it is given). Stateless apart from the config: draws depend on
  (seed, step) only, so a restarted sampler carries on exactly.
- SimulatorActor: runs the registered simulator on one step's parameters. A simulator that
  raises or returns non-finite values yields non-finite rows, which the store counts as
  rejected and never stores: the run goes on.
- Trainer: the only holder of the model and of the buffer's mirror, and the only writer
  of samples; trains in a thread of its own while arriving batches queue in its inbox
  (lock-step, k steps per batch, or continuously: `runtime.steps_per_batch`), records
  diagnostics and checkpoints. A restarted trainer re-runs __init__ and so rebuilds itself
  from the last checkpoint in the database.
- Supervisor (named, detached): owns the others and drives the pipeline with a bounded
  number of simulation batches in flight or queued, handing them to the trainer in the
  order they finish. Once it has written the run's final status it kills its children and
  itself: a run leaves no process behind.

Only the trainer imports torch: the others start in a fraction of the time and memory (the
engine's modules load it when a training function runs).

Every actor asks for a sliver of a CPU (0.01), not zero: a zero request fits on any node,
including a zero-CPU Ray node that only hosts a driver (the API container joins the cluster
as one), where a run would die with the API process. A 2-CPU node still holds ~200 actors.
"""

from __future__ import annotations

import collections
import os
import queue
import sys
import threading
import time

import numpy as np
import ray

from falcon_lite.config import RunConfig
from falcon_lite.engine import loop
from falcon_lite.engine.inline import PURGE_EVERY, Recorder, load_state
from falcon_lite.store import runs
from falcon_lite.store.db import make_engine, session_factory
from falcon_lite.store.samples import SampleStore


def _one_thread() -> None:
    """One torch thread per actor (two compete for one core here)."""
    import torch

    torch.set_num_threads(1)


@ray.remote(num_cpus=0.01, max_restarts=-1, max_task_retries=-1)
class ProposalSampler:
    def __init__(self, config: dict):
        from falcon_lite.core.priors import make_prior
        from falcon_lite.core.simulators import make_simulator

        self.config = RunConfig.model_validate(config)
        self.prior = make_prior(self.config.prior, make_simulator(self.config.simulator).dim)

    def propose(self, step: int, steer: tuple) -> loop.Proposed:
        """`steer`: the trainer's (posterior or None, prior fraction) for this batch."""
        posterior, fraction = steer
        return loop.propose_from(self.config, self.prior, step, posterior, fraction)


@ray.remote(num_cpus=0.01, max_restarts=-1, max_task_retries=-1)
class SimulatorActor:
    def __init__(self, config: dict, index: int):
        from falcon_lite.core.simulators import make_simulator

        self.config = RunConfig.model_validate(config)
        self.simulator = make_simulator(self.config.simulator)
        self.fail_every = self.config.runtime.simulator_fail_every
        self.calls = 0
        self.index = index

    def simulate(self, proposed: loop.Proposed) -> tuple[np.ndarray, str]:
        self.calls += 1
        if "torch" in sys.modules:  # a registered simulator may have loaded it (microseconds)
            _one_thread()
        node = ray.get_runtime_context().get_node_id()
        try:
            if self.fail_every and self.calls % self.fail_every == 0:
                raise RuntimeError(f"injected failure on call {self.calls}")
            return loop.simulate(self.simulator, proposed, self.config.training.seed), node
        except Exception:  # the batch is rejected and counted; the run goes on
            return np.full_like(proposed.theta, np.nan), node


@ray.remote(num_cpus=0.01, max_restarts=-1, max_task_retries=0)
class Writer:
    """Appends simulated batches to the store (PostgreSQL runs), so that the database's
    work runs beside training instead of inside the trainer's loop. Calls run one at a time,
    in the order they were sent; a restarted writer holds nothing to recover (an append that
    died with it was rolled back and is simply not stored)."""

    def __init__(self, run_id: int, database_url: str, config: dict):
        self.config = RunConfig.model_validate(config)
        self.engine = make_engine(database_url)
        fraction = self.config.buffer.initial_fraction
        self.store = SampleStore(self.engine, run_id, loop.sizes_for(self.config, fraction),
                                 self.config.dim, self.config.estimator.dtype)
        self.appends = 0

    def append(self, proposed: loop.Proposed, simulated: tuple[np.ndarray, str], fraction: float):
        """Store one batch under the quota `fraction` it was drawn with; returns the AppendResult."""
        if self.store.sizes.prior_fraction != fraction:
            self.store.sizes = loop.sizes_for(self.config, fraction)
        result = loop.write(self.store, proposed, simulated[0])
        self.appends += 1
        if self.appends % PURGE_EVERY == 0:
            self.store.purge()
        return result

    def close(self) -> None:
        """Purge what no reader holds any more (called after the trainer closed its mirror)."""
        self.store.purge()
        self.engine.dispose()


@ray.remote(num_cpus=0.01, max_restarts=-1, max_task_retries=0, max_concurrency=4)
class Trainer:
    """Trains in a thread of its own (`run`) while batches arrive in its inbox (`submit`).

    `runtime.steps_per_batch` sets how training and arrivals interlock: 1 takes exactly one
    optimizer step per batch (the inline runtime's lock-step, the seed's semantics), k up
    to k steps per batch, None trains continuously on the buffer and ingests whatever has
    arrived between two steps. Only the training thread touches the model, the store and
    the mirror; the other methods read what it publishes.
    """

    def __init__(self, run_id: int, database_url: str):
        _one_thread()
        self.run_id = run_id
        self.engine = make_engine(database_url)
        self.state = load_state(self.engine, run_id)
        self.store = SampleStore(
            self.engine, run_id, loop.sizes_of(self.state), self.state.simulator.dim, self.state.config.estimator.dtype
        )
        # One reader name per run: a restarted trainer replaces its dead predecessor's
        # registration instead of holding back purges until it times out.
        self.mirror = self.store.mirror(f"trainer-{run_id}")
        self.mirror.sync()
        self.recorder = Recorder(self.engine, run_id)
        self.nodes: collections.Counter[str] = collections.Counter()
        self.inbox: queue.Queue = queue.Queue()
        self.taken = threading.Condition()  # notified whenever the training thread takes a batch
        self.halting = threading.Event()
        self.checks: dict | None = None  # held-out checks of the newest batch, for the next row
        self.batches = 0
        self.fresh = False  # a batch was ingested since the steer was last published
        self.waited = 0.0  # seconds the training thread waited for a batch since the last metrics row
        self.since = time.perf_counter()  # when that interval began
        self.steer = None
        self.published = self._snapshot(steer=True)

    def _snapshot(self, steer: bool) -> tuple[int, int, tuple]:
        """What the other threads read: steps trained, the next batch, and how to steer it.
        The steer (a forward pass at x_obs unless diagnostics just made one) is recomputed
        when asked; the step count always."""
        state = self.state
        if steer or self.steer is None:
            self.steer = (loop.posterior_for(state, state.step), state.prior_fraction)
        return state.step, state.next_proposal, self.steer

    def progress(self) -> tuple[int, int, tuple]:
        """Steps trained, the next batch to simulate, and how to steer it: (the posterior to
        propose from, the prior fraction in force)."""
        return self.published

    def submit(self, proposed: loop.Proposed, simulated: tuple[np.ndarray, str], written=None) -> tuple[int, tuple, int]:
        """Queue a simulated batch for the training thread, with the Writer's AppendResult if
        it is stored already; returns (steps trained, how to steer the next batch, batches
        queued at the trainer)."""
        self.inbox.put((proposed, simulated, written))
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
        state = self.state
        limit = state.config.runtime.steps_per_batch
        fill = max(1, state.config.buffer.min_training)
        credit = 0
        self.waited, self.since = 0.0, time.perf_counter()
        while state.step < total and not self.halting.is_set():
            if limit is None:
                # Continuous: take what has arrived; wait only while the pool is too small.
                self._ingest(wait=self.mirror.trainable_size < fill, drain=True)
                if self.mirror.trainable_size < fill:
                    continue
            elif credit == 0:
                if not self._ingest(wait=True, drain=False):
                    continue
                credit = limit
            self._train_one()
            credit = max(credit - 1, 0)
        return state.step

    def _ingest(self, wait: bool, drain: bool) -> int:
        """Store the next batch (all waiting ones if `drain`); waits a moment for one if `wait`."""
        got = 0
        while True:
            blocking = wait and not got
            started = time.perf_counter()
            try:
                proposed, (x, node), written = self.inbox.get(timeout=0.1) if blocking else self.inbox.get_nowait()
            except queue.Empty:
                return got
            finally:
                if blocking:
                    self.waited += time.perf_counter() - started
            with self.taken:
                self.taken.notify_all()
            self.nodes[node] += 1
            if written is None:  # store it here (SQLite: the trainer is the one writer)
                loop.ingest(self.state, self.store, self.mirror, proposed, x)
            else:
                loop.follow(self.state, self.mirror, proposed, x, written)
            self.checks = loop.held_out(self.state, proposed, x) or self.checks
            self.batches += 1
            self.fresh = True
            if written is None and self.batches % PURGE_EVERY == 0:
                self.store.purge()
            got += 1
            if not drain:
                return got

    def _train_one(self) -> None:
        state = self.state
        row = loop.train_and_diagnose(state, self.store, self.mirror, state.step, self.checks)
        if row is not None:
            # How much of the time since the previous row training sat waiting for a simulated
            # batch: 0 while simulation keeps up.
            now = time.perf_counter()
            row["wait_share"] = min(1.0, self.waited / (now - self.since))
            self.waited, self.since = 0.0, now
            self.checks = None
            self.recorder.add(row, state.step)
        if state.step % state.config.training.checkpoint_every == 0:
            self.checkpoint()
        # Lock-step and paced training steer the next batches from the newest weights (the
        # supervisor proposes more whenever the trainer takes a batch, which may be after any
        # step); continuous training from those of the moment a batch arrives, or of the
        # newest diagnostics (which computed the posterior at x_obs anyway).
        continuous = state.config.runtime.steps_per_batch is None
        self.published = self._snapshot(steer=not continuous or self.fresh or row is not None)
        self.fresh = False

    def pid(self) -> int:
        return os.getpid()

    def checkpoint(self) -> int:
        self.recorder.flush(self.state.step, self.state.to_bytes())
        return self.state.step

    def simulations_by_node(self) -> dict[str, int]:
        return dict(self.nodes)

    def close(self) -> None:
        self.mirror.close()
        self.engine.dispose()


def _first_finished(launched: dict):
    """The earliest launched of the refs in `launched` that are done (ray.wait does not
    promise to list finished refs in the order they were given)."""
    finished, _ = ray.wait(list(launched), num_returns=len(launched), timeout=0)
    finished = set(finished)
    return next(ref for ref in launched if ref in finished)


@ray.remote(num_cpus=0.01, max_restarts=0, max_concurrency=8)
class Supervisor:
    """One run's owner. `start` launches the pipeline in a thread; `stop` ends it gracefully."""

    def __init__(self, run_id: int, database_url: str):
        self.run_id = run_id
        self.database_url = database_url
        self.engine = make_engine(database_url)
        self.sessions = session_factory(self.engine)
        with self.sessions.begin() as session:
            self.config = RunConfig.model_validate(runs.get_run(session, run_id).config)
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.children: list = []
        self.trainer = None
        self.writer = None

    def start(self) -> bool:
        if self.thread is None:
            self.thread = threading.Thread(target=self._main, name=f"run-{self.run_id}", daemon=True)
            self.thread.start()
        return True

    def stop(self) -> bool:
        self.stopping.set()
        return True

    def alive(self) -> bool:
        """Whether the pipeline is still going (a finished supervisor ends itself moments later)."""
        return self.thread is not None and self.thread.is_alive()

    def trainer_pid(self) -> int:
        return ray.get(self.trainer.pid.remote())

    def placement(self) -> dict[str, int]:
        return ray.get(self.trainer.simulations_by_node.remote()) if self.trainer else {}

    def _set_status(self, status: str, reason: str | None = None) -> None:
        with self.sessions.begin() as session:
            runs.set_status(session, self.run_id, status, reason=reason)

    def _main(self) -> None:
        try:
            self._set_status("running")
            status = self._pipeline()
            ray.get(self.trainer.checkpoint.remote())
            ray.get(self.trainer.close.remote())
            if self.writer is not None:
                ray.get(self.writer.close.remote())
            self._set_status(status)
        except Exception as exc:  # noqa: BLE001 - every failure is recorded on the run
            self._set_status("failed", reason=f"{type(exc).__name__}: {exc}")
        finally:
            try:
                for child in self.children:
                    ray.kill(child)
                self.engine.dispose()
            finally:
                # The run's status is written: a detached actor would otherwise outlive its run
                # (a process per run ever started, until the cluster ends).
                ray.kill(ray.get_runtime_context().current_actor, no_restart=True)

    def _spawn(self) -> None:
        cfg = self.config.model_dump(mode="json")
        self.trainer = Trainer.remote(self.run_id, self.database_url)
        self.sampler = ProposalSampler.remote(cfg)
        self.simulators = [
            SimulatorActor.options(scheduling_strategy="SPREAD").remote(cfg, i)
            for i in range(self.config.runtime.simulators)
        ]
        # SQLite: the trainer is the one writer of samples. PostgreSQL: a writer of its own,
        # so that the database's work runs beside training instead of inside it.
        postgres = self.engine.dialect.name == "postgresql"
        self.writer = Writer.remote(self.run_id, self.database_url, cfg) if postgres else None
        self.children = [self.trainer, self.sampler, *self.simulators, *([self.writer] if postgres else [])]

    def _pipeline(self) -> str:
        """Keep simulation batches in flight and hand each to the trainer as it finishes
        (through the writer on PostgreSQL), while the trainer trains in its own thread.
        Bounded: batches simulating, being written and queued at the trainer never exceed
        `in_flight`, nor what the remaining steps need."""
        self._spawn()
        total = self.config.training.steps
        window = self.config.runtime.in_flight
        limit = self.config.runtime.steps_per_batch
        trained, next_batch, steer = self._trainer_progress()
        done = self.trainer.run.remote(total)
        simulating: dict = {}  # simulate ref -> (proposed ref, the prior fraction it was drawn with)
        writing: dict = {}  # append ref -> (proposed ref, simulate ref)
        queued = turn = 0
        room = None  # the trainer's answer once it takes a queued batch
        while True:
            if self.stopping.is_set():
                ray.get(self.trainer.halt.remote())
                ray.get(done)
                return "stopped"
            wanted = window if limit is None else min(window, -(-(total - trained) // limit))
            while len(simulating) + len(writing) + queued < wanted:
                proposed = self.sampler.propose.remote(next_batch, steer)
                simulator = self.simulators[turn % len(self.simulators)]
                turn += 1
                simulating[simulator.simulate.remote(proposed)] = (proposed, steer[1])
                next_batch += 1
            if room is None and queued and len(simulating) + len(writing) + queued >= wanted:
                room = self.trainer.room.remote(queued)
            waits = [done, *simulating, *writing, *([room] if room else [])]
            ready, _ = ray.wait(waits, num_returns=1, timeout=1.0)
            try:
                if not ready:
                    continue
                ref = ready[0]
                if ref == done:
                    ray.get(done)
                    return "completed"
                if ref == room:
                    trained, steer, queued = ray.get(room)
                    room = None
                elif ref in simulating:
                    ref = _first_finished(simulating)  # in launch order when several are done
                    proposed, fraction = simulating.pop(ref)
                    if self.writer is None:
                        trained, steer, queued = ray.get(self.trainer.submit.remote(proposed, ref))
                    else:
                        writing[self.writer.append.remote(proposed, ref, fraction)] = (proposed, ref)
                else:
                    proposed, simulated = writing.pop(ref)
                    try:
                        ray.get(ref)
                    except ray.exceptions.RayActorError:
                        continue  # the writer died with it: rolled back, not stored; it restarts
                    trained, steer, queued = ray.get(self.trainer.submit.remote(proposed, simulated, ref))
            except ray.exceptions.RayActorError:
                # The trainer died and restarted from its last checkpoint (its mirror re-read
                # from the database holds every batch written): drop the batches simulating
                # or queued (none of them stored) and go on from what it reports.
                # Batch numbers only go up: a batch still being written may be newer than
                # what the restarted trainer found stored, and must not be drawn twice.
                simulating.clear()
                queued, room = 0, None
                trained, restart_batch, steer = self._trainer_progress()
                next_batch = max(next_batch, restart_batch)
                done = self.trainer.run.remote(total)

    def _trainer_progress(self, timeout: float = 120.0):
        deadline = time.monotonic() + timeout
        while True:
            try:
                return ray.get(self.trainer.progress.remote())
            except ray.exceptions.RayActorError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
