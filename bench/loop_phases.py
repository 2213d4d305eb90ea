"""Where the inline runtime's step goes: each phase of the driver's lock-step timed apart.

The same two configs as bench/loop.py, on SQLite, with the inline runtime's store (group
commit), recorder, checkpoints and purges. Milliseconds of wall time per step, per phase,
summed over the run's steps after its first 10 % (the figures behind the table in
docs/benchmarks.md; bench/loop.py gives the ratios against the bare loop and insert).

    .venv/bin/python bench/loop_phases.py [--steps 1000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch

from falcon_lite.config import RunConfig, with_overrides
from falcon_lite.engine import loop
from falcon_lite.engine.driver import PURGE_EVERY
from falcon_lite.engine.recorder import Recorder
from falcon_lite.engine.resume import load_state
from falcon_lite.store import runs
from falcon_lite.store.buffer import SampleStore
from falcon_lite.store.db import make_engine, migrate, session_factory
from falcon_lite.store.dialects import dialect_for

from loop import CONFIGS  # bench/loop.py's two configs

PHASES = ("propose", "simulate", "store.append", "mirror.apply", "held_out", "train",
          "diagnose", "recorder", "checkpoint", "purge")


def phases(url: str, config: RunConfig) -> tuple[dict[str, float], float]:
    """(ms per step of each phase, ms per step in all) over the steps after the first 10 %."""
    engine = make_engine(url)
    with session_factory(engine).begin() as s:
        run_id = runs.create_run(s, config).id
    state = load_state(engine, run_id)
    store = SampleStore(engine, run_id, loop.sizes_of(state), state.simulator.dim,
                        group_commit_s=dialect_for(engine).group_commit_s)
    mirror = store.mirror("phases")
    recorder = Recorder(engine, run_id, store=store)
    spent = dict.fromkeys(PHASES, 0.0)
    skip = config.training.steps // 10
    clock = time.perf_counter
    for step in range(config.training.steps):
        if step == skip:
            spent = dict.fromkeys(PHASES, 0.0)
            started = clock()
        t0 = clock()
        proposed = loop.propose(state, state.next_proposal)
        t1 = clock()
        batch = loop.simulate(state.simulator, proposed, state.seed)
        t2 = clock()
        delta = store.append(batch)
        t3 = clock()
        loop.follow(state, mirror, batch, delta)
        t4 = clock()
        checks = loop.held_out(state, batch)
        t5 = clock()
        stats = loop.train(state, mirror, step)
        state.step = step + 1
        t6 = clock()
        row = loop.diagnose(state, step, stats, mirror)
        row.update(checks)
        t7 = clock()
        recorder.add(row, state.step)
        t8 = clock()
        if state.step % config.training.checkpoint_every == 0:
            recorder.flush(state.step, state.to_bytes())
        t9 = clock()
        if step % PURGE_EVERY == 0:
            store.purge()
        t10 = clock()
        for name, (a, b) in zip(PHASES, zip((t0, t1, t2, t3, t4, t5, t6, t7, t8, t9),
                                            (t1, t2, t3, t4, t5, t6, t7, t8, t9, t10))):
            spent[name] += b - a
    total = clock() - started
    recorder.flush(state.step)
    mirror.close()
    engine.dispose()
    n = config.training.steps - skip
    return {k: 1e3 * v / n for k, v in spent.items()}, 1e3 * total / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {}
    with tempfile.TemporaryDirectory(prefix="flr-bench-") as tmp:
        for i, (name, overrides) in enumerate(CONFIGS.items()):
            url = f"sqlite:///{tmp}/phases-{i}.db"
            migrate(url)
            config = with_overrides(RunConfig(), {**overrides, "training.steps": args.steps,
                                                  "training.warmup_steps": args.steps // 3})
            results[name] = phases(url, config)
    names = list(results)
    print(f"bench/loop_phases.py: {args.steps} steps, SQLite; ms per step (after the first 10 %)")
    print(f"{'phase':16}" + "".join(f"{n.split(' (')[0]:>12}" for n in names))
    for phase in PHASES:
        print(f"{phase:16}" + "".join(f"{results[n][0][phase]:12.3f}" for n in names))
    print(f"{'step (all)':16}" + "".join(f"{results[n][1]:12.3f}" for n in names))


if __name__ == "__main__":
    main()
