"""Simulations to a calibrated posterior on the seed scenario (x = z + noise, sigma = 1e-6).

Real simulators are expensive, so this counts simulations, not steps. For each setup and
seed it runs the inline runtime and finds the first step after which std_ratio stays in
[0.8, 1.25] to the end of the run (the stress contract's calibrated band); the simulations
spent by then are ``simulations_per_step * (step + 1)``. A setup that never settles in the
band within ``--steps`` is reported as "not within N".

Setups (each at 20 % prior):
- ``preset fresh``: the calibrated preset (a residual head around the known inverse, on
  standardised data) with 128 fresh simulations per step, every one trained once;
- ``preset rolling``: the same with 16 new simulations per step into a pool of 1024 that
  training draws from again and again (samples reused across steps, as falcon does), and a
  200-step warm-up;
- ``flow fresh`` / ``flow rolling``: the zuko flow (NSF, standardised, no problem-specific
  head) in the same two buffers.

    .venv/bin/python bench/sim_budget.py [--steps 3000] [--seeds 3] [--setups "preset rolling" ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np
import torch

from falcon_lite.config import RunConfig, with_overrides
from falcon_lite.engine.inline import run_inline, scratch_run
from falcon_lite.store import runs
from falcon_lite.store.db import session_factory

BAND = (0.8, 1.25)
FRESH = {"buffer.simulations_per_step": 128}
ROLLING = {"buffer.simulations_per_step": 16, "buffer.min_training": 1024, "buffer.max_training": 1024,
           "training.warmup_steps": 200}
PRESET = {"estimator.preset": "calibrated"}
FLOW = {"estimator.name": "flow", "estimator.normalize": True}
SETUPS = {
    "preset fresh": {**PRESET, **FRESH},
    "preset rolling": {**PRESET, **ROLLING},
    "flow fresh": {**FLOW, **FRESH},
    "flow rolling": {**FLOW, **ROLLING},
}


def settled_step(steps: np.ndarray, ratio: np.ndarray) -> int | None:
    """The first step from which every std_ratio stays in BAND to the end (None: never)."""
    inside = (ratio >= BAND[0]) & (ratio <= BAND[1])
    if not inside[-1]:
        return None
    outside = np.flatnonzero(~inside)
    return int(steps[0]) if not len(outside) else int(steps[outside[-1] + 1])


def run_setup(overrides: dict, seed: int, steps: int) -> tuple[int | None, float, float]:
    """(simulations to settled | None, final std_ratio, wall seconds) of one inline run."""
    config = with_overrides(RunConfig(), {**overrides, "buffer.prior_fraction": 0.2, "training.seed": seed,
                                          "training.steps": steps})
    with scratch_run(config, prefix="flr-budget-") as (engine, run_id):
        started = time.perf_counter()
        run_inline(engine, run_id)
        wall = time.perf_counter() - started
        with session_factory(engine).begin() as s:
            rows = runs.metrics_since(s, run_id, names=["std_ratio"], limit=None)
    steps_ = np.array([r["step"] for r in rows])
    ratio = np.array([np.nan if r["std_ratio"] is None else r["std_ratio"] for r in rows])
    step = settled_step(steps_, ratio)
    per_step = config.buffer.simulations_per_step
    return (None if step is None else per_step * (step + 1)), float(ratio[-1]), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| setup | seeds settled | simulations to calibrated (median; per seed) | final std_ratio (median) "
          "| wall s per run |\n|---|---|---|---|---|")
    for name in args.setups:
        found = [run_setup(SETUPS[name], seed, args.steps) for seed in range(args.seeds)]
        sims = [s for s, _, _ in found]
        settled = [s for s in sims if s is not None]
        per_seed = ", ".join("-" if s is None else f"{s:,}" for s in sims)
        median = f"{statistics.median(settled):,.0f}" if len(settled) == len(sims) else f"not within {args.steps} steps"
        print(f"| {name} | {len(settled)} of {len(sims)} | {median} ({per_seed}) | "
              f"{statistics.median(r for _, r, _ in found):.3g} | {statistics.median(w for _, _, w in found):.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
