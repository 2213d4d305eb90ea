"""Two ways out of issue 3's target that do not work, measured (figures in docs/benchmarks.md).

On bench/loop.py's two configs, SQLite, ms per step (medians of --repeats):

1. A writer thread: the bare loop and the bare insert in two threads of one process
   against the two run one after the other. Both are mostly Python, which takes turns on
   the interpreter lock: a threaded wall time no shorter than the sum means no overlap.
2. Fewer diagnostics: the inline runtime with `training.diagnostics_every` 1 (the default)
   and 10, as a ratio against bare loop + bare insert (the posterior at x_obs is computed
   every step anyway, for the proposal).

    .venv/bin/python bench/loop_limits.py [--steps 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch

from falcon_lite.config import RunConfig, with_overrides
from falcon_lite.store.db import make_engine, migrate

from loop import CONFIGS, time_bare_insert, time_bare_loop, time_inline  # bench/loop.py


def threaded(engine, config: RunConfig) -> float:
    """Wall ms per step of the bare loop and the bare insert run at once in two threads."""
    failed: list[BaseException] = []

    def insert() -> None:
        try:
            time_bare_insert(engine, config)
        except BaseException as exc:  # raised below, in the caller's thread
            failed.append(exc)

    thread = threading.Thread(target=insert)
    started = time.perf_counter()
    thread.start()
    time_bare_loop(config)
    thread.join()
    if failed:
        raise failed[0]
    return 1e3 * (time.perf_counter() - started) / config.training.steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"bench/loop_limits.py: {args.steps} steps x {args.repeats} repeats, SQLite; ms per step (median)")
    with tempfile.TemporaryDirectory(prefix="flr-bench-") as tmp:
        url = f"sqlite:///{tmp}/limits.db"
        migrate(url)
        engine = make_engine(url)
        print(f"{'config':34} {'loop':>7} {'insert':>7} {'sum':>7} {'2 threads':>10}")
        for name, overrides in CONFIGS.items():
            config = with_overrides(RunConfig(), {**overrides, "training.steps": args.steps})
            loops, inserts, both = [], [], []
            for _ in range(args.repeats):
                loops.append(1e3 * time_bare_loop(config))
                inserts.append(1e3 * time_bare_insert(engine, config))
                both.append(threaded(engine, config))
            lo, ins, thr = (statistics.median(t) for t in (loops, inserts, both))
            print(f"{name:34} {lo:7.3f} {ins:7.3f} {lo + ins:7.3f} {thr:10.3f}")
        print(f"\n{'config':34} {'every':>5} {'inline':>7} {'bare':>7} {'ratio':>6}")
        for name, overrides in CONFIGS.items():
            for every in (1, 10):
                config = with_overrides(RunConfig(), {**overrides, "training.steps": args.steps,
                                                      "training.warmup_steps": args.steps // 3,
                                                      "training.diagnostics_every": every})
                inline, bare = [], []
                for _ in range(args.repeats):
                    inline.append(1e3 * time_inline(engine, config))
                    bare.append(1e3 * (time_bare_loop(config) + time_bare_insert(engine, config)))
                i, b = statistics.median(inline), statistics.median(bare)
                print(f"{name:34} {every:5} {i:7.3f} {b:7.3f} {i / b:6.2f}")
        engine.dispose()


if __name__ == "__main__":
    main()
