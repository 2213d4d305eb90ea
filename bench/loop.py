"""Inline runtime speed against what is physically needed (issue 3's target).

For two configs — the seed's default (128 fresh simulations per step, every one persisted)
and a rolling buffer (16 new simulations per step into min=max=1024 training, 256
validation) — measures in the same process, interleaved:

- inline: falcon-lite's inline runtime (store, policy, quota, mirror, diagnostics every
  step, checkpoints), steps/s;
- bare loop: a plain in-memory torch loop with the same network, batch and optimizer
  (simulation included, no buffer);
- bare insert: an executemany INSERT of that step's rows into a bare table of the same
  shape in the same database, one commit per step.

Target: inline time/step <= 1.25 x (bare loop + bare insert).

    .venv/bin/python bench/loop.py [--steps 1500] [--repeats 3] [--database sqlite|postgres]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np
import sqlalchemy as sa
import torch

from falcon_lite.config import RunConfig, with_overrides
from falcon_lite.core.training import make_optimizer
from falcon_lite.engine.inline import run_inline
from falcon_lite.store import runs
from falcon_lite.store.db import make_engine, migrate, session_factory

from scratch_db import scratch_database  # bench/scratch_db.py

CONFIGS = {
    "default (128 new/step, fresh)": {},
    "rolling (16 new/step, 1024 pool)": {
        "buffer.simulations_per_step": 16,
        "buffer.min_training": 1024,
        "buffer.max_training": 1024,
        "buffer.validation_size": 256,
    },
}
def time_inline(engine, config: RunConfig) -> float:
    with session_factory(engine).begin() as s:
        run_id = runs.create_run(s, config).id
    started = time.perf_counter()
    run_inline(engine, run_id)
    return (time.perf_counter() - started) / config.training.steps


def time_bare_loop(config: RunConfig) -> float:
    """Same MLP, batch, optimizer and simulation, all in memory."""
    hidden, dtype = config.estimator.hidden, torch.float64
    layers, width = [], 1
    for h in hidden:
        layers += [torch.nn.Linear(width, h, dtype=dtype), torch.nn.Tanh()]
        width = h
    net = torch.nn.Sequential(*layers, torch.nn.Linear(width, 1, dtype=dtype))
    opt = make_optimizer(net, 1e-3)  # the same (fused) Adam as the estimators
    rng = np.random.default_rng(0)
    pool = np.zeros((config.buffer.max_training, 1))
    n_new, batch = config.buffer.simulations_per_step, config.training.batch_size
    log_var = 0.0
    started = time.perf_counter()
    for step in range(config.training.steps):
        theta = rng.normal(size=(n_new, 1))
        x = theta + 1e-6 * rng.normal(size=(n_new, 1))
        pool = np.concatenate([pool[n_new:], theta]) if n_new < len(pool) else theta
        idx = rng.choice(len(pool), size=min(batch, len(pool)), replace=False)
        t = torch.from_numpy(pool[idx])
        xt = torch.from_numpy(x[: len(idx)] if len(x) >= len(idx) else np.resize(x, t.shape))
        loss = torch.mean((net(xt) - t) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        log_var = 0.99 * log_var + 0.01 * float(torch.log(loss.detach()))
    return (time.perf_counter() - started) / config.training.steps


def time_bare_insert(engine, config: RunConfig) -> float:
    meta = sa.MetaData()
    table = sa.Table(
        f"bare_{uuid.uuid4().hex[:8]}", meta,
        sa.Column("run_id", sa.Integer, primary_key=True), sa.Column("seq", sa.BigInteger, primary_key=True),
        sa.Column("status", sa.SmallInteger), sa.Column("origin", sa.SmallInteger), sa.Column("step", sa.Integer),
        sa.Column("theta", sa.LargeBinary), sa.Column("x", sa.LargeBinary),
        sa.Column("log_q", sa.Float), sa.Column("log_prior", sa.Float), sa.Column("version", sa.BigInteger),
    )
    meta.create_all(engine)
    n = config.buffer.simulations_per_step
    rng = np.random.default_rng(0)
    seq = 0
    started = time.perf_counter()
    for step in range(config.training.steps):
        theta = rng.normal(size=(n, 1))
        rows = [
            {"run_id": 1, "seq": seq + i, "status": 0, "origin": 1, "step": step, "theta": theta[i].tobytes(),
             "x": theta[i].tobytes(), "log_q": 0.0, "log_prior": 0.0, "version": step}
            for i in range(n)
        ]
        seq += n
        with engine.begin() as conn:
            conn.execute(table.insert(), rows)
    elapsed = (time.perf_counter() - started) / config.training.steps
    meta.drop_all(engine)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"bench/loop.py: {args.steps} steps x {args.repeats} repeats, {args.database}; ms per step (median)")
    print(f"{'config':34} {'inline':>8} {'bare loop':>10} {'bare insert':>12} {'ratio':>7}  target <= 1.25")
    with tempfile.TemporaryDirectory(prefix="flr-bench-") as tmp, scratch_database(args.database, tmp) as url:
        migrate(url)
        engine = make_engine(url)
        for name, overrides in CONFIGS.items():
            config = with_overrides(RunConfig(), {**overrides, "training.steps": args.steps,
                                                  "training.warmup_steps": args.steps // 3})
            t_inline, t_loop, t_insert = [], [], []
            for _ in range(args.repeats):  # interleaved, so load changes hit all three alike
                t_inline.append(time_inline(engine, config))
                t_loop.append(time_bare_loop(config))
                t_insert.append(time_bare_insert(engine, config))
            i, lo, ins = (statistics.median(t) * 1e3 for t in (t_inline, t_loop, t_insert))
            print(f"{name:34} {i:8.3f} {lo:10.3f} {ins:12.3f} {i / (lo + ins):7.2f}")
        engine.dispose()


if __name__ == "__main__":
    main()
