"""This code against an older commit, measured in the same run: is the new code slower?

For a git ref (default: the commit before the store/runtime redesign), makes a temporary
worktree of it and measures both trees alternately, each in a fresh process with that
tree's `falcon_lite` first on the path (the order flips every round, so drift on a shared
machine hits both alike):

- loop: the inline runtime's time per step on bench/loop.py's two configs (SQLite file);
- buffer: on a run holding `--rows` samples (bench/buffer.py's sizes: 256 new rows per
  append, a 1024 pool, 256 validation, 20 % prior), the p50 of one append with the mirror
  following it (the trainer's hot path), of a mirror sync after an append, and of a batch draw.

With ``--sbibm TASK ...`` it measures instead the CPU seconds of falcon-lite's side of
bench/sbibm.py (this tree's config for the task, sbibm's observation 1, `--budget` (1000),
seed 0, `--steps-per-batch` as given) from run creation to the final flow, without the C2ST;
the process does not flush subnormal floats (bench/sbibm.py's `--keep-subnormals`), so each
tree computes as a falcon-lite run does.

Prints each figure's median per tree and new/old (below 1: the new code is faster).

    .venv/bin/python bench/against.py [--ref 6e18932] [--rounds 3] [--steps 1000] [--rows 20000]
    .venv/bin/python bench/against.py --ref 0d87ec9 --sbibm two_moons gaussian_linear [--steps-per-batch 10] [--budget 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEFORE_REDESIGN = "6e18932"


def measure(steps: int, rows: int) -> dict[str, float]:
    """Run in a child process: the figures of whichever falcon_lite is first on the path."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import numpy as np
    import torch

    sys.path.insert(1, str(ROOT / "bench"))
    from loop import CONFIGS, time_inline

    from falcon_lite.config import RunConfig, with_overrides
    from falcon_lite.core.policy import Sizes
    from falcon_lite.store import runs
    from falcon_lite.store.db import make_engine, migrate, session_factory

    torch.set_num_threads(1)
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="flr-against-") as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        migrate(url)
        engine = make_engine(url)
        for name, overrides in CONFIGS.items():
            config = with_overrides(RunConfig(), {**overrides, "training.steps": steps})
            out[f"loop {name.split()[0]} ms/step"] = 1e3 * time_inline(engine, config)
        with session_factory(engine).begin() as s:
            run_id = runs.create_run(s, RunConfig(name="bench")).id
        store, mirror, append = _buffer(engine, run_id, Sizes(256, 1024, 1024, 0.2))
        rng = np.random.default_rng(0)
        for _ in range(rows // 256):
            append(rng)
        mirror.sync()
        times: dict[str, list[float]] = {"append+apply": [], "sync": [], "draw": []}
        for _ in range(60):
            t0 = time.perf_counter()
            append(rng, follow=True)
            times["append+apply"].append(time.perf_counter() - t0)
            append(rng)
            t0 = time.perf_counter()
            mirror.sync()
            times["sync"].append(time.perf_counter() - t0)
        draw_rng = np.random.default_rng(1)
        for _ in range(500):
            t0 = time.perf_counter()
            mirror.draw(128, draw_rng, 0.2)
            times["draw"].append(time.perf_counter() - t0)
        for name, values in times.items():
            out[f"buffer {name} p50 ms"] = 1e3 * statistics.median(values)
        mirror.close()
        engine.dispose()
    return out


def measure_sbibm(tasks: list[str], steps_per_batch: int | None, budget: int = 1000) -> dict[str, float]:
    """Run in a child process: CPU seconds of one falcon-lite bench run per task (bench/sbibm.py's)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    sys.path.insert(1, str(ROOT / "bench"))
    import sbibm
    import sbibm_refs

    from falcon_lite.store.db import make_engine, migrate

    torch.set_num_threads(1)
    refs = sbibm_refs.References(sbibm_refs.wheel())
    out = {}
    with tempfile.TemporaryDirectory(prefix="flr-against-") as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        migrate(url)
        engine = make_engine(url)
        for task in tasks:
            config = sbibm.falcon_config(task, refs.observation(task, 1), budget, 0, None, steps_per_batch)
            sbibm.warm_reference(config)
            out[f"sbibm {task} at {budget}: falcon-lite CPU s"] = sbibm.run_falcon(engine, config, 10, 0)[1]["cpu_s"]
        engine.dispose()
    refs.close()
    return out


def _buffer(engine, run_id, sizes):
    """(store, mirror, append(rng, follow=False)) on either side of the redesign's API."""
    import numpy as np

    def batch(rng):
        theta = rng.normal(size=(256, 1))
        origin = np.where(rng.random(256) < 0.2, 0, 1).astype(np.int8)
        return theta, theta + 1e-6 * rng.normal(size=(256, 1)), origin, rng.normal(size=256), rng.normal(size=256)

    try:
        from falcon_lite.core.samples import Samples
        from falcon_lite.store.buffer import SampleStore
    except ImportError:  # before the redesign
        from falcon_lite.store.samples import SampleStore

        store = SampleStore(engine, run_id, sizes, 1)
        mirror = store.mirror("bench")

        def append(rng, follow=False):
            arrays = batch(rng)
            result = store.append(*arrays[:3], 0, *arrays[3:])
            if follow:
                mirror.apply(result, *arrays)

        return store, mirror, append
    store = SampleStore(engine, run_id, sizes, 1)
    mirror = store.mirror("bench")

    def append(rng, follow=False):
        theta, x, origin, log_q, log_prior = batch(rng)
        delta = store.append(Samples(theta, x, origin, log_q, log_prior, step=0))
        if follow:
            mirror.apply(delta)

    return store, mirror, append


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", default=BEFORE_REDESIGN)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--sbibm", nargs="+", default=None, metavar="TASK",
                        help="measure falcon-lite's side of bench/sbibm.py on these tasks instead")
    parser.add_argument("--steps-per-batch", type=int, default=None, help="with --sbibm: falcon-lite's k")
    parser.add_argument("--budget", type=int, default=1000, help="with --sbibm: the simulation budget")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure_sbibm(args.sbibm, args.steps_per_batch, args.budget) if args.sbibm
                         else measure(args.steps, args.rows)))
        return
    passed = ["--steps", str(args.steps), "--rows", str(args.rows)]
    if args.sbibm:
        passed += ["--sbibm", *args.sbibm, "--budget", str(args.budget)]
        if args.steps_per_batch:
            passed += ["--steps-per-batch", str(args.steps_per_batch)]
    with tempfile.TemporaryDirectory(prefix="flr-ref-") as tmp:
        old = Path(tmp) / "old"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(old), args.ref], check=True)
        try:
            figures: dict[str, dict[str, list[float]]] = {"old": {}, "new": {}}
            for round_ in range(args.rounds):
                order = [("old", old), ("new", ROOT)]
                for label, tree in order if round_ % 2 == 0 else order[::-1]:
                    env = {**os.environ, "PYTHONPATH": str(tree)}
                    done = subprocess.run([sys.executable, __file__, "--measure", *passed], env=env, cwd=tree,
                                          check=True, capture_output=True, text=True)
                    for name, value in json.loads(done.stdout.splitlines()[-1]).items():
                        figures[label].setdefault(name, []).append(value)
                    print(f"round {round_ + 1}: {label} measured", file=sys.stderr, flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=False)
    print(f"| figure | {args.ref} (old) | this tree (new) | new / old |\n|---|---|---|---|")
    for name in figures["old"]:
        a, b = statistics.median(figures["old"][name]), statistics.median(figures["new"][name])
        print(f"| {name} | {a:.3f} | {b:.3f} | {b / a:.2f} |")


if __name__ == "__main__":
    main()
