"""The supervisor of a run (named, detached): owns the run's actors and drives its pipeline.

It keeps a bounded number of simulation batches in flight or queued
(`falcon_lite.engine.driver.batches_wanted`) and hands each to the trainer in the order they
finish (through the writer where the database has one). A batch is simulated in chunks
(`runtime.simulation_chunk`; one chunk when unset), each sent to the least busy simulator
(`falcon_lite.engine.chunks.ChunkBook` keeps the books); once all its chunks are back they are
joined in order and the batch goes on as one. Once it has written the run's final status it
kills its children and itself: a run leaves no process behind.
"""

from __future__ import annotations

import threading
import time

import ray

from falcon_lite.config import RunConfig
from falcon_lite.core.samples import Samples
from falcon_lite.engine import loop
from falcon_lite.engine.chunks import Batch, ChunkBook
from falcon_lite.engine.driver import batches_wanted
from falcon_lite.engine.problem import bind_problem
from falcon_lite.engine.verdict import judge
from falcon_lite.runtime.actors import ProposalSampler, Simulated, SimulatorActor, Writer
from falcon_lite.runtime.trainer import Trainer
from falcon_lite.store import runs
from falcon_lite.store.db import make_engine, session_factory
from falcon_lite.store.dialects import dialect_for
from falcon_lite.store.status import RunStatus


@ray.remote(num_cpus=0.01, max_restarts=0, max_concurrency=8)
class Supervisor:
    """One run's owner. `start` launches the pipeline in a thread; `stop` ends it gracefully."""

    def __init__(self, run_id: int, database_url: str):
        self.run_id = run_id
        self.database_url = database_url
        self.engine = make_engine(database_url)
        self.own_writer = dialect_for(self.engine).own_writer
        self.sessions = session_factory(self.engine)
        with self.sessions.begin() as session:
            self.config = RunConfig.model_validate(runs.get_run(session, run_id).config)
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.children: list = []
        self.trainer = None
        self.writer = None
        self.simulators: list = []
        self.chunk = self.config.runtime.simulation_chunk

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

    def simulator_calls(self) -> list[int]:
        """Calls each simulator actor has run so far (how the pool shares the chunks)."""
        return ray.get([simulator.calls_run.remote() for simulator in self.simulators])

    def _set_status(self, status: RunStatus, reason: str | None = None) -> None:
        with self.sessions.begin() as session:
            outcome = judge(session, self.run_id) if status.terminal else None
            runs.set_status(session, self.run_id, status, reason=reason, outcome=outcome)

    def _main(self) -> None:
        try:
            self._set_status(RunStatus.RUNNING)
            # a problem this node cannot load fails the run here, with the reason
            self.x_shape = bind_problem(self.config).x_shape
            status = self._pipeline()
            ray.get(self.trainer.checkpoint.remote())
            ray.get(self.trainer.close.remote())
            if self.writer is not None:
                ray.get(self.writer.close.remote())
            self._set_status(status)
        except Exception as exc:  # noqa: BLE001 - every failure is recorded on the run
            self._set_status(RunStatus.FAILED, reason=f"{type(exc).__name__}: {exc}")
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
        gpus = 1 if self.config.training.device == "cuda" else 0  # the trainer goes where a GPU is
        self.trainer = Trainer.options(num_gpus=gpus).remote(self.run_id, self.database_url)
        self.sampler = ProposalSampler.remote(cfg)
        self.simulators = [
            SimulatorActor.options(scheduling_strategy="SPREAD").remote(cfg, i)
            for i in range(self.config.runtime.simulators)
        ]
        # A database with writers of its own (PostgreSQL) gets a writer actor, so that its work
        # runs beside training instead of inside it; otherwise the trainer is the one writer.
        self.writer = Writer.remote(self.run_id, self.database_url, cfg) if self.own_writer else None
        self.children = [self.trainer, self.sampler, *self.simulators, *([self.writer] if self.writer else [])]

    def _pipeline(self) -> RunStatus:
        """Keep simulation batches in flight and hand each to the trainer as it finishes
        (through the writer, where there is one), while the trainer trains in its own thread.
        Bounded: batches simulating, being written and queued at the trainer never exceed
        `batches_wanted`."""
        self._spawn()
        total = self.config.training.steps
        trained, next_batch, steer = self._trainer_progress()
        done = self.trainer.run.remote(total)
        book = ChunkBook(len(self.simulators), loop.chunk_count(self.config.buffer.simulations_per_step, self.chunk))
        writing: dict = {}  # append ref -> the simulated batch it stores
        queued = 0
        room = None  # the trainer's answer once it takes a queued batch
        while True:
            if self.stopping.is_set():
                ray.get(self.trainer.halt.remote())
                ray.get(done)
                return RunStatus.STOPPED
            wanted = batches_wanted(self.config, trained)
            while len(book) + len(writing) + queued < wanted:
                self._launch(book, next_batch, steer)
                next_batch += 1
            if room is None and queued and len(book) + len(writing) + queued >= wanted:
                room = self.trainer.room.remote(queued)
            waits = [done, *book.outstanding(), *writing, *([room] if room else [])]
            ready, _ = ray.wait(waits, num_returns=1, timeout=1.0)
            try:
                if not ready:
                    continue
                ref = ready[0]
                if ref == done:
                    ray.get(done)
                    return RunStatus.COMPLETED
                if ref == room:
                    trained, steer, queued = ray.get(room)
                    room = None
                elif ref in writing:
                    simulated = writing.pop(ref)
                    try:
                        ray.get(ref)
                    except ray.exceptions.RayActorError:
                        continue  # the writer died with it: rolled back, not stored; it restarts
                    trained, steer, queued = ray.get(self.trainer.submit.remote(simulated, ref))
                else:  # a chunk is back: hand on the batches now whole, in launch order
                    for batch in self._collect(book):
                        simulated = self._assembled(batch)
                        if self.writer is None:
                            trained, steer, queued = ray.get(self.trainer.submit.remote(simulated))
                        else:
                            writing[self.writer.append.remote(simulated, batch.fraction)] = simulated
            except ray.exceptions.RayActorError:
                # The trainer died and restarted from its last checkpoint (its mirror re-read
                # from the database holds every batch written): drop the batches simulating
                # or queued (none of them stored) and go on from what it reports.
                # Batch numbers only go up: a batch still being written may be newer than
                # what the restarted trainer found stored, and must not be drawn twice.
                book.clear()
                queued, room = 0, None
                trained, restart_batch, steer = self._trainer_progress()
                next_batch = max(next_batch, restart_batch)
                done = self.trainer.run.remote(total)

    def _launch(self, book: ChunkBook, number: int, steer: tuple) -> None:
        """Propose batch `number` (one sampler call) and send each of its chunks to the least
        busy simulator (each takes its rows from the proposal)."""
        proposed = self.sampler.propose.remote(number, steer)
        batch = book.open(proposed, steer[1])
        for k in range(book.per_batch):
            i = book.pick()
            book.sent(batch, k, self.simulators[i].simulate.remote(proposed, k), i)

    def _collect(self, book: ChunkBook) -> list[Batch]:
        """Take in every chunk that is back; the batches now whole, in launch order."""
        outstanding = book.outstanding()
        finished, _ = ray.wait(outstanding, num_returns=len(outstanding), timeout=0)
        for ref in finished:
            try:
                book.back(ref, ray.get(ref))
            except ray.exceptions.RayError:  # the call itself failed (not the simulator: see actors)
                book.back(ref, None, failed=True)
        return book.whole()

    def _assembled(self, batch: Batch) -> Simulated:
        """A whole batch: its chunks' rows in order, and the nodes that simulated them. A chunk
        whose call failed becomes non-finite rows (rejected and counted), the rest are kept."""
        if batch.failed:
            proposed = ray.get(batch.proposed)
            for k in batch.failed:
                batch.parts[k] = (loop.unsimulated(loop.chunk_rows(proposed, self.chunk, k), self.x_shape), "")
        return Samples.concat([rows for rows, _ in batch.parts]), tuple(node for _, node in batch.parts)

    def _trainer_progress(self, timeout: float = 120.0):
        deadline = time.monotonic() + timeout
        while True:
            try:
                return ray.get(self.trainer.progress.remote())
            except ray.exceptions.RayActorError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
