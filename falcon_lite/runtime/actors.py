"""The small Ray actors of one run; each hands its work to engine code in a line or two.

- ProposalSampler: draws a step's parameters (prior share by quota, the rest from the
  tempered posterior it is given, or from the truncated prior of the weights it is given by
  reference: `proposal.method = "truncated"`; it then loads torch and keeps a copy of the
  estimator). Draws depend on (seed, step, steer) only, so a restarted sampler carries on exactly.
- SimulatorActor: runs the registered simulator on one step's parameters, or on one chunk of
  them (`runtime.simulation_chunk`). A simulator that raises or returns non-finite values
  yields non-finite rows, which the store counts as rejected and never stores: the run goes on.
- Writer (where the database has writers of its own, PostgreSQL): stores the simulated
  batches beside the trainer, so that the database's work runs beside training.

The trainer (`runtime.trainer`) and the supervisor (`runtime.supervisor`) have modules of
their own. Only the trainer (and a sampler of truncated proposals) imports torch: the others
start in a fraction of the time and memory (the engine's modules load it when a training
function runs).

Every actor asks for a sliver of a CPU (0.01), not zero: a zero request fits on any node,
including a zero-CPU Ray node that only hosts a driver (the API container joins the cluster
as one), where a run would die with the API process. A 2-CPU node still holds ~200 actors.
"""

from __future__ import annotations

import sys
import time

import ray

from falcon_lite.config import RunConfig
from falcon_lite.core.samples import Delta, Samples
from falcon_lite.engine import loop, regions
from falcon_lite.engine.driver import BatchWriter
from falcon_lite.engine.problem import bind_problem
from falcon_lite.store.buffer import SampleStore
from falcon_lite.store.db import make_engine

SimulatedChunk = tuple[Samples, str]  # a simulated chunk of a batch and the Ray node that simulated it
Simulated = tuple[Samples, tuple[str, ...]]  # a simulated batch and the nodes of its chunks ("": a failed call)


def one_thread() -> None:
    """One torch thread per actor (two compete for one core here)."""
    import torch

    torch.set_num_threads(1)


@ray.remote(num_cpus=0.01, max_restarts=-1, max_task_retries=-1)
class ProposalSampler:
    def __init__(self, config: dict):
        self.config = RunConfig.model_validate(config)
        self.problem = bind_problem(self.config)
        self.prior = self.problem.prior
        self.regions = None  # a truncated proposal's regions (engine/regions.py), made on demand

    def propose(self, step: int, steer: tuple) -> Samples:
        """`steer`: the trainer's (posterior, weights version or None, prior fraction) for this batch."""
        source, fraction = steer
        if isinstance(source, regions.Weights):  # a new version is fetched and loaded once
            if self.regions is None:
                one_thread()
                self.regions = regions.RegionCache(self.config, self.problem)
            source = self.regions.region(source, load=ray.get)
        return loop.propose_from(self.config, self.prior, step, source, fraction)


@ray.remote(num_cpus=0.01, max_restarts=-1, max_task_retries=-1)
class SimulatorActor:
    def __init__(self, config: dict, index: int):
        self.config = RunConfig.model_validate(config)
        self.simulator = bind_problem(self.config)
        self.fail_every = self.config.runtime.simulator_fail_every
        self.delay_s = (self.config.runtime.simulator_delay_ms or 0.0) / 1000
        self.chunk = self.config.runtime.simulation_chunk
        self.calls = 0
        self.index = index

    def simulate(self, proposed: Samples, k: int = 0) -> SimulatedChunk:
        """Chunk `k` of the proposed batch (the whole batch unless `runtime.simulation_chunk`)."""
        self.calls += 1
        if "torch" in sys.modules:  # a registered simulator may have loaded it (microseconds)
            one_thread()
        node = ray.get_runtime_context().get_node_id()
        try:
            if self.fail_every and self.calls % self.fail_every == 0:
                raise RuntimeError(f"injected failure on call {self.calls}")
            if self.delay_s:  # a slow simulator (bench knob): milliseconds per row
                time.sleep(self.delay_s * len(loop.chunk_rows(proposed, self.chunk, k)))
            return loop.simulate_chunk(self.simulator, proposed, self.config.training.seed, self.chunk, k), node
        except Exception:  # the chunk is rejected and counted; the run goes on
            return loop.unsimulated(loop.chunk_rows(proposed, self.chunk, k), self.simulator.x_shape), node


    def calls_run(self) -> int:
        return self.calls


@ray.remote(num_cpus=0.01, max_restarts=-1, max_task_retries=0)
class Writer:
    """Calls run one at a time, in the order they were sent; a restarted writer holds nothing
    to recover (an append that died with it was rolled back and is simply not stored)."""

    def __init__(self, run_id: int, database_url: str, config: dict):
        config = RunConfig.model_validate(config)
        problem = bind_problem(config)
        self.engine = make_engine(database_url)
        sizes = loop.sizes_for(config, config.buffer.initial_fraction)
        store = SampleStore(self.engine, run_id, sizes, problem.dim, x_shape=problem.x_shape)
        self.writer = BatchWriter(store, config)

    def append(self, simulated: Simulated, fraction: float) -> Delta:
        """Store one batch under the quota `fraction` it was drawn with."""
        return self.writer.append(simulated[0], fraction)

    def close(self) -> None:
        """Purge what no reader holds any more (called after the trainer closed its mirror)."""
        self.writer.store.purge()
        self.engine.dispose()
