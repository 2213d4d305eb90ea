"""Time per step of the flow estimator against gaussian_ema on the seed's config, in one process.

- train_step: one optimizer step on a batch of 128 (theta ~ N(0, 1), x = theta + 1e-6 eps),
  median over `--steps` steps after 20 unmeasured ones;
- posterior: the (mean, var) at x_obs the engine asks once per step (the flow: 1000 draws);
- posterior_batch: the held-out checks on the 128 fresh rows of a step (the flow: 32 draws each);
- inline: the inline runtime (SQLite file), 300 steps with 100 warm-up, time per step
  (float64 only: an inline run of a float32 estimator fails in the store today).

Estimators are measured interleaved, round by round, so that load on the machine falls on all.

    .venv/bin/python bench/flow_step.py [--steps 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np
import torch

from falcon_lite.config import RunConfig, with_overrides
from falcon_lite.core.estimators import make_estimator
from falcon_lite.core.priors import make_prior
from falcon_lite.core.training import make_optimizer, train_step
from falcon_lite.engine.inline import run_inline
from falcon_lite.store import runs
from falcon_lite.store.db import make_engine, migrate, session_factory

SETTINGS = {
    "gaussian_ema": {},
    "flow nsf": {"estimator.name": "flow", "estimator.normalize": True},
    "flow maf": {"estimator.name": "flow", "estimator.normalize": True, "estimator.flow": "maf"},
    "flow nsf float32": {"estimator.name": "flow", "estimator.normalize": True, "estimator.dtype": "float32"},
}


class Rows:
    def __init__(self, theta, x):
        self.theta, self.x = theta, x
        self.log_q = self.log_prior = np.zeros(len(theta))
        self.origin = np.zeros(len(theta), np.int8)


def per_call(f, n) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def core_times(config: RunConfig, steps: int) -> dict:
    prior = make_prior(config.prior, 1)
    est = make_estimator(config.estimator, 1, prior, torch.Generator().manual_seed(0))
    opt = make_optimizer(est, 1e-3)
    rng = np.random.default_rng(0)
    batches = [Rows(t, t + 1e-6 * rng.normal(size=t.shape)) for t in rng.normal(size=(steps + 20, 128, 1))]
    for b in batches[:20]:
        train_step(est, opt, b)
    it = iter(batches[20:])
    x_obs = np.array([0.3])
    return {
        "train_step": per_call(lambda: train_step(est, opt, next(it)), steps),
        "posterior": per_call(lambda: est.posterior(x_obs), 20),
        "posterior_batch": per_call(lambda: est.posterior_batch(batches[0].x), 10),
    }


def inline_time(config: RunConfig) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        migrate(url)
        engine = make_engine(url)
        with session_factory(engine).begin() as s:
            run_id = runs.create_run(s, config).id
        t = time.perf_counter()
        run_inline(engine, run_id)
        elapsed = time.perf_counter() - t
        engine.dispose()
    return elapsed / config.training.steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    for _ in range(args.rounds):
        for name, overrides in SETTINGS.items():
            config = with_overrides(RunConfig(), {**overrides, "training.steps": 300, "training.warmup_steps": 100})
            row = core_times(config, args.steps)
            # (a float32 estimator's run stores float32 rows that the float64 proposal does not make: skipped)
            row["inline"] = inline_time(config) if config.estimator.dtype == "float64" else float("nan")
            results[name].append(row)
    print(f"{'estimator':<18} {'train_step':>11} {'posterior':>10} {'post_batch':>11} {'inline/step':>12}  (ms, median over rounds)")
    for name, rows in results.items():
        cols = [statistics.median(r[k] for r in rows) * 1e3 for k in ("train_step", "posterior", "posterior_batch", "inline")]
        print(f"{name:<18} " + " ".join(f"{c:>11.2f}" for c in cols))


if __name__ == "__main__":
    main()
