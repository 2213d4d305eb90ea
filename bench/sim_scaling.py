"""Slow simulators at scale (issue 16, item 7): does a pool of N simulator actors simulate N
times as fast as one, and does the trainer keep training meanwhile?

A run on a local Ray for each N = 1, 2, 4, 8 simulator actors, with a sleep-dominated
simulator (`runtime.simulator_delay_ms`, default 20 ms per simulation, so that 2 cores
suffice), batches of 128 split into chunks of 16 rows (`runtime.simulation_chunk`: 8 chunks
per batch, each sent to the least busy actor), 4 batches in flight, and the trainer in
continuous mode (`runtime.steps_per_batch = null`: it trains on the buffer it has while the
simulations trickle in). Config otherwise the seed scenario's (gaussian 1-D, MLP 1-64-64-1,
batch 128), with a rolling pool of 128-1024 samples.

Each run is measured from the database while it goes, for `--seconds` after its first
stored batch (start-up excluded), then stopped: simulations/s between the first and the last
batch stored in that window (the store's totals, polled 10 times a second), and the
trainer's optimizer steps/s over the same window (the run's step). Printed per N: sims/s,
N x the N = 1 rate, their ratio (target >= 0.9 at each N), the ideal rate N x 1000 / delay,
and the trainer's steps/s beside a bare torch loop of the same network and batch run in this
process before and after every run (the mean of the two around it). A last run, N = 8 with
whole batches (no chunks), shows what the chunks are for: each batch then runs on one actor,
and only as many actors are busy as batches are in flight.

    .venv/bin/python bench/sim_scaling.py [--seconds 25] [--delay-ms 20] [--chunk 16] [--database sqlite]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_worker_niceness", "0")  # as connect_ray's local Ray

import torch

from falcon_lite.config import RunConfig, with_overrides
from falcon_lite.core.training import make_optimizer
from falcon_lite.store import runs
from falcon_lite.store.db import migrate

from ray_loop import stored_total  # bench/ray_loop.py
from scratch_db import scratch_database  # bench/scratch_db.py

POOLS = (1, 2, 4, 8)


def config_for(simulators: int, delay_ms: float, chunk: int | None) -> RunConfig:
    return with_overrides(RunConfig(), {
        "training.steps": 10**7,  # stopped after the measured window
        "training.warmup_steps": 200,
        "buffer.simulations_per_step": 128,
        "buffer.min_training": 128,
        "buffer.max_training": 1024,
        "runtime.steps_per_batch": None,
        "runtime.in_flight": 4,
        "runtime.simulators": simulators,
        "runtime.simulation_chunk": chunk,
        "runtime.simulator_delay_ms": delay_ms,
    })


def changes(samples: list[tuple[float, int]]) -> list[tuple[float, int]]:
    """The samples at which the value changed (the first sample of each new value)."""
    return [s for i, s in enumerate(samples) if i == 0 or s[1] != samples[i - 1][1]]


def rate(events: list[tuple[float, int]]) -> float:
    """Per second between the first and the last event; nan with fewer than two."""
    if len(events) < 2 or events[-1][0] <= events[0][0]:
        return float("nan")
    return (events[-1][1] - events[0][1]) / (events[-1][0] - events[0][0])


def measure(control, config: RunConfig, seconds: float) -> tuple[float, float, int]:
    """(simulations/s, trainer steps/s, batches in the window) of one run, measured for
    `seconds` after its first stored batch, then stopped."""
    run_id = control.create(config)
    sims, steps = [], []
    started = None
    while True:
        with control.sessions.begin() as s:
            run = runs.get_run(s, run_id)
        now, total = time.perf_counter(), stored_total(control.engine, run_id, config)
        assert run.status in ("pending", "running"), (run.status, run.reason)
        if total and started is None:
            started = now
        if started is not None:
            sims.append((now, total))
            steps.append((now, run.step))
            if now - started > seconds:
                break
        time.sleep(0.1)
    control.stop(run_id)
    assert control.wait(run_id, timeout=120) == "stopped"
    stored = changes(sims)[1:]  # from the end of the first batch in the window
    trained = [s for s in changes(steps) if s[1] > 0]  # from the first recorded step
    return rate(stored), rate(trained), len(stored) - 1


def bench_bare(steps: int = 1500) -> float:
    """Steps/s of the run's network (1-64-64-1, tanh, float64), batch 128, fused Adam, on
    in-memory data: what the trainer would do with nothing else to do."""
    net = torch.nn.Sequential(torch.nn.Linear(1, 64, dtype=torch.float64), torch.nn.Tanh(),
                              torch.nn.Linear(64, 64, dtype=torch.float64), torch.nn.Tanh(),
                              torch.nn.Linear(64, 1, dtype=torch.float64))
    opt = make_optimizer(net, 1e-3)
    theta = torch.randn(1024, 1, dtype=torch.float64)
    x = theta + 1e-6 * torch.randn_like(theta)
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
    parser.add_argument("--seconds", type=float, default=25.0, help="measured window of each run")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="simulator sleep per simulation")
    parser.add_argument("--chunk", type=int, default=16, help="rows per simulator call (batches of 128)")
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import ray

    from falcon_lite.runtime.control import RunControl
    from falcon_lite.settings import Settings

    load_before = os.getloadavg()[0]
    folder = tempfile.mkdtemp(prefix="flr-scale-", dir="/tmp")
    bench_bare(200)  # warm-up: torch's first steps are slow
    rows, bares = [], [bench_bare()]
    try:
        with scratch_database(args.database, folder) as url:
            migrate(url)
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="falcon-lite",
                     _temp_dir=f"{folder}/ray")
            try:
                control = RunControl(Settings(), database_url=url)
                for n, chunk in [*((n, args.chunk) for n in POOLS), (POOLS[-1], None)]:
                    rows.append((n, chunk, *measure(control, config_for(n, args.delay_ms, chunk), args.seconds)))
                    bares.append(bench_bare())
                control.close()
            finally:
                ray.shutdown()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    one = rows[0][2]
    print(f"bench/sim_scaling.py: {args.delay_ms:g} ms per simulation (sleep), batches of 128 in chunks of "
          f"{args.chunk}, 4 batches in flight, continuous training (gaussian 1-D, MLP 1-64-64-1, batch 128, "
          f"pool 128-1024), {args.database}; {args.seconds:g} s measured per run")
    print(f"bare loop, in order: {', '.join(f'{b:.0f}' for b in bares)} steps/s")
    print(f"{'actors':>6} {'chunk':>5} {'sims/s':>8} {'N x N=1':>8} {'ratio':>6} {'ideal':>7} {'batches':>7} "
          f"{'steps/s':>8} {'bare':>6} {'vs bare':>7}")
    for i, (n, chunk, sims, steps, batches) in enumerate(rows):
        bare = (bares[i] + bares[i + 1]) / 2
        print(f"{n:6d} {chunk or 'none':>5} {sims:8.1f} {n * one:8.1f} {sims / (n * one):6.2f} "
              f"{n * 1000 / args.delay_ms:7.0f} {batches:7d} {steps:8.1f} {bare:6.0f} {steps / bare:7.2f}")
    print("target: sims/s >= 0.9 x (N x the N=1 rate) at each N; the trainer keeps training (steps/s > 0)")
    print(f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after ({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
