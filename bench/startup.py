"""How fast a run starts on Ray, and what its processes hold in memory.

On a local Ray instance (2 CPUs) and a SQLite file (or a throwaway PostgreSQL database),
for a small run (the seed's 1-D scenario, MLP 16x16, 32 simulations per step): the time `RunControl.create` takes to
return (it waits for the run's supervisor to start), the time until the run's first
optimizer step is in the database, and the resident memory of the run's actor processes
once it trains. Baseline, in the same Ray instance just before: a bare actor's start (a
method call on a fresh actor that does nothing), the floor of any actor's start here.

    .venv/bin/python bench/startup.py [--runs 3] [--database sqlite|postgres]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_worker_niceness", "0")

import ray

from falcon_lite.config import RunConfig, with_overrides
from falcon_lite.runtime.control import RunControl
from falcon_lite.settings import Settings
from falcon_lite.store import runs
from falcon_lite.store.db import migrate

from scratch_db import scratch_database  # bench/scratch_db.py

SMALL = {
    "training.steps": 400,  # long enough that its actors still run when their memory is read
    "training.warmup_steps": 20,
    "estimator.hidden": [16, 16],
    "buffer.simulations_per_step": 32,
    "buffer.min_training": 32,
    "buffer.max_training": 32,
    "training.batch_size": 32,
}


@ray.remote(num_cpus=0.01)
class Bare:
    def ping(self) -> int:
        return os.getpid()


def actor_rss_mb() -> dict[str, int]:
    """Resident MB per Ray actor class (summed over its processes), from /proc."""
    out: dict[str, int] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                title = f.read().split(b"\0")[0].decode()
            with open(f"/proc/{pid}/status") as f:
                kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
        except (OSError, StopIteration):
            continue
        if title.startswith("ray::") and not title.startswith(("ray::IDLE", "ray::Bare")):
            name = title.removeprefix("ray::").split(".")[0]
            if name in ("Supervisor", "Trainer", "ProposalSampler", "SimulatorActor", "Writer"):
                out[name] = out.get(name, 0) + kb // 1024
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="flr-startup-", dir="/tmp")
    load_before = os.getloadavg()[0]
    try:
        with scratch_database(args.database, tmp, "startup.db") as url:
            migrate(url)
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="falcon-lite", _temp_dir=tmp)
            try:
                control = RunControl(Settings(), database_url=url)
                config = with_overrides(RunConfig(), SMALL)
                bare, created, first, rss = [], [], [], []
                for _ in range(args.runs):
                    t0 = time.perf_counter()
                    actor = Bare.remote()
                    ray.get(actor.ping.remote())
                    bare.append(time.perf_counter() - t0)
                    ray.kill(actor)
                    t0 = time.perf_counter()
                    run_id = control.create(config)
                    created.append(time.perf_counter() - t0)
                    while True:
                        with control.sessions.begin() as s:
                            if runs.get_run(s, run_id).step >= 1:
                                break
                        time.sleep(0.05)
                    first.append(time.perf_counter() - t0)
                    rss.append(actor_rss_mb())
                    assert control.wait(run_id, timeout=300) == "completed"
                control.close()
            finally:
                ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = statistics.median(bare)
    print(f"bench/startup.py: {args.runs} runs, {args.database}, local Ray (2 CPUs); seconds, medians")
    print(f"{'bare actor start (baseline)':34} {base:6.2f}")
    print(f"{'RunControl.create returns':34} {statistics.median(created):6.2f}  {statistics.median(created) / base:5.1f}x")
    print(f"{'first optimizer step stored':34} {statistics.median(first):6.2f}  {statistics.median(first) / base:5.1f}x")
    last = rss[-1]
    print("resident MB per actor class (last run): "
          + ", ".join(f"{k} {v}" for k, v in sorted(last.items())) + f"; total {sum(last.values())}")
    print(f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after ({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
