"""The Ray runtime against the inline runtime and a bare torch loop (issue 4's target).

Config (falcon-comparable): `exp_noise` 3-D, MLP 3x128, batch 128, rolling buffer
min=max=1024 training, 256 validation, 128 new simulations per step, PostgreSQL.
All three run in this process's session, one after another, on the same machine:

- ray: RunControl on a local Ray instance (supervisor, trainer, sampler, 2 simulators);
  steps/s and simulations/s measured from the run's progress in the database, after
  the first 10% of steps (start-up excluded);
- inline: the same run with the inline runtime;
- bare loop: the same network, batch and optimizer on in-memory data.

The Ray runtime runs in four modes: continuous (`runtime.steps_per_batch = null`: the
trainer trains while batches arrive, falcon's mode, simulation as fast as it goes); paced
(`steps_per_batch = 8` and `16`: up to k optimizer steps per batch of 128, i.e. 16 or 8 new
simulations per step, the trainer waiting only if simulation falls behind); and lock-step
(one optimizer step per batch of 128, the seed's semantics). Simulations/s counts samples
stored (the store's totals); "waits" is the mean share of the trainer's time spent waiting
for a simulated batch (the rows' `wait_share`: 0 when simulation keeps up). The bare loop
runs before and after every other measurement, and each row is compared with the mean of
the two bare runs around it (this 2-vCPU machine's speed drifts by a third within minutes).

Target: ray steps/s >= 0.7 x bare loop steps/s, and simulation keeping up with training.

    .venv/bin/python bench/ray_loop.py [--steps 600] [--ray-steps 6000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_worker_niceness", "0")  # as connect_ray's local Ray; the bare loop runs at nice 0 too

import torch

from falcon_lite.config import RunConfig, with_overrides
from falcon_lite.core.training import make_optimizer
from falcon_lite.store import runs
from falcon_lite.store.db import make_engine, migrate, session_factory

from scratch_db import scratch_database  # bench/scratch_db.py

OVERRIDES = {
    "simulator.name": "exp_noise",
    "estimator.hidden": [128, 128, 128],
    "training.batch_size": 128,
    "buffer.min_training": 1024,
    "buffer.max_training": 1024,
    "buffer.validation_size": 256,
    "buffer.simulations_per_step": 128,
    "runtime.simulators": 2,
}


def rate(samples: list[tuple[float, int]], skip: int) -> float:
    """Steps per second over the samples after step `skip`; nan with fewer than two of them
    (a run too short for the 4 polls a second that sample it)."""
    kept = [(t, s) for t, s in samples if s >= skip]
    if len(kept) < 2:
        return float("nan")
    (t0, s0), (t1, s1) = kept[0], kept[-1]
    return (s1 - s0) / (t1 - t0) if t1 > t0 else float("nan")


def stored_total(engine, run_id: int, config: RunConfig) -> int:
    """Samples ever stored in the run (live + purged), from the store's maintained counts."""
    from falcon_lite.engine.loop import sizes_for
    from falcon_lite.store.buffer import SampleStore

    sizes = sizes_for(config, config.buffer.initial_fraction)
    return SampleStore(engine, run_id, sizes, config.dim).composition().total


def bench_ray(url: str, config: RunConfig) -> tuple[float, float, float]:
    """(steps/s, simulations/s, trainer's waiting share) of a run on a local Ray, measured
    from the database while it runs, after its first 10 % of steps."""
    import ray

    from falcon_lite.runtime.control import RunControl
    from falcon_lite.settings import Settings

    tmp = tempfile.mkdtemp(prefix="flr-ray-", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="falcon-lite", _temp_dir=tmp)
    try:
        control = RunControl(Settings(), database_url=url)
        run_id = control.create(config)
        steps, sims = [], []
        while True:
            with control.sessions.begin() as s:
                run = runs.get_run(s, run_id)
            now = time.perf_counter()
            steps.append((now, run.step))
            sims.append((now, stored_total(control.engine, run_id, config), run.step))
            if run.status not in ("pending", "running", "stopping"):
                break
            time.sleep(0.25)
        assert run.status == "completed", run.reason
        skip = config.training.steps // 10
        per_s = rate([(t, n) for t, n, step in sims if skip <= step < config.training.steps], 0)
        with control.sessions.begin() as s:
            shares = [r["wait_share"] for r in runs.metrics_since(s, run_id, since_step=skip - 1, limit=None)]
        control.close()
        return rate(steps, skip), per_s, sum(shares) / len(shares) if shares else float("nan")
    finally:
        ray.shutdown()


def bench_inline(url: str, config: RunConfig) -> float:
    from falcon_lite.engine.inline import run_inline

    engine = make_engine(url)
    with session_factory(engine).begin() as s:
        run_id = runs.create_run(s, config).id
    samples = []
    run_inline(engine, run_id, on_step=lambda step, row: samples.append((time.perf_counter(), step)))
    engine.dispose()
    return rate(samples, config.training.steps // 10)


def bench_bare(config: RunConfig) -> float:
    dims, layers, width = 3, [], 3
    for h in config.estimator.hidden:
        layers += [torch.nn.Linear(width, h, dtype=torch.float64), torch.nn.Tanh()]
        width = h
    net = torch.nn.Sequential(*layers, torch.nn.Linear(width, dims, dtype=torch.float64))
    opt = make_optimizer(net, 1e-3)  # the same (fused) Adam as the estimators
    theta = torch.randn(1024, dims, dtype=torch.float64)
    x = torch.exp(theta) + 1e-6 * torch.randn_like(theta)
    steps = config.training.steps
    started = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, 1024, (128,))
        loss = torch.mean((net(x[idx]) - theta[idx]) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600, help="steps of the bare loop, inline and lock-step runs")
    parser.add_argument("--ray-steps", type=int, default=6000, help="steps of the continuous Ray run")
    args = parser.parse_args()
    torch.set_num_threads(1)

    def config_for(steps: int, per_batch: int | None) -> RunConfig:
        return with_overrides(RunConfig(), {**OVERRIDES, "training.steps": steps, "training.warmup_steps": steps // 5,
                                            "runtime.steps_per_batch": per_batch})

    n = OVERRIDES["buffer.simulations_per_step"]
    load_before = os.getloadavg()[0]
    nan = float("nan")
    with scratch_database("postgres", tempfile.gettempdir()) as url:

        def inline() -> tuple[float, float, float]:
            steps_per_s = bench_inline(url, config_for(args.steps, 1))
            return steps_per_s, steps_per_s * n, nan

        modes = [
            ("inline", inline),
            ("ray, continuous (steps_per_batch=null)", lambda: bench_ray(url, config_for(args.ray_steps, None))),
            ("ray, paced (steps_per_batch=8)", lambda: bench_ray(url, config_for(args.ray_steps, 8))),
            ("ray, paced (steps_per_batch=16)", lambda: bench_ray(url, config_for(args.ray_steps, 16))),
            ("ray, lock-step (steps_per_batch=1)", lambda: bench_ray(url, config_for(args.steps, 1))),
        ]
        rows = []
        migrate(url)
        bares = [bench_bare(config_for(args.steps, 1))]
        for label, measure in modes:
            result = measure()
            bares.append(bench_bare(config_for(args.steps, 1)))
            rows.append((label, *result, (bares[-2] + bares[-1]) / 2))
    print(f"bench/ray_loop.py: exp_noise 3-D, MLP 3x128, batch 128, rolling 1024/256, {n} sims per batch, "
          f"PostgreSQL; {args.steps} steps (bare, inline, lock-step), {args.ray_steps} (continuous, paced)")
    print(f"bare loop, in order: {', '.join(f'{b:.1f}' for b in bares)} steps/s")
    print(f"{'runtime':40} {'steps/s':>9} {'sims/s':>9} {'sims/step':>9} {'waits':>6} {'bare around':>11} {'vs bare':>8}")
    for label, steps, sims, waits, bare in rows:
        print(f"{label:40} {steps:9.1f} {sims:9.0f} {sims / steps:9.2f} {waits:6.2f} {bare:11.1f} {steps / bare:8.2f}")
    if any(value != value for row in rows for value in row[1:3]):
        print("nan: a run ended before two of its samples fell after its first 10 % of steps: give it more steps")
    print("target: ray >= 0.70 x bare loop; reference framework on this machine: ~28 steps/s, ~175 sims/s")
    print(f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after ({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
