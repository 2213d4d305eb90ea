"""One falcon-lite run of the sbibm bench's config, looked into: where its posterior at x_obs
sits beside sbibm's reference, and how much of the prior its last TSNPE region holds.

The run is `bench/sbibm.py`'s falcon-lite side (`falcon_config`, ``--falcon-config`` merged in,
``--steps-per-batch``), and so are its 10 000 draws and its C2ST: the same numbers as a
``bench/sbibm.py --sides falcon`` record of the same config and seed. Printed as one JSON line:
the C2ST, the CPU time, the steps the early stop passed over, the last region's prior mass
(`TruncatedPrior.log_mass`; null where none was drawn), and per parameter the mean and sd of
the draws and of the reference, with each one's share of draws above zero.

    .venv/bin/python bench/sbibm_one.py --task slcp --obs 2 --budget 10000 --seed 0
    .venv/bin/python bench/sbibm_one.py --task slcp --obs 2 --budget 10000 --falcon-config '{"proposal": {"hpd_epsilon": 0.01}}'
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sbibm  # noqa: E402  (bench/sbibm.py: its environment, config and runs)
import sbibm_refs  # noqa: E402


def moments(samples) -> dict:
    """Per parameter: mean, sd and the share of draws above zero, rounded for reading."""
    return {"mean": samples.mean(0).round(3).tolist(), "sd": samples.std(0).round(3).tolist(),
            "above_zero": (samples > 0).mean(0).round(3).tolist()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="slcp", choices=sbibm_refs.TASKS)
    p.add_argument("--obs", type=int, default=1)
    p.add_argument("--budget", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--falcon-config", default="{}", help="JSON merged into falcon-lite's run config")
    p.add_argument("--steps-per-batch", type=int, default=None)
    p.add_argument("--draws", type=int, default=sbibm.DRAWS)
    p.add_argument("--cache", type=Path, default=sbibm_refs.CACHE, help="where the sbibm wheel is kept")
    args = p.parse_args(argv)

    import torch

    from falcon_lite.core.diagnostics_samples import c2st
    from falcon_lite.engine import loop
    from falcon_lite.store.db import make_engine, migrate

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)  # as bench/sbibm.py's process does
    refs = sbibm_refs.References(sbibm_refs.wheel(args.cache))
    x_obs, reference = refs.observation(args.task, args.obs), refs.samples(args.task, args.obs)
    refs.close()
    config = sbibm.falcon_config(args.task, x_obs, args.budget, args.seed, json.loads(args.falcon_config),
                                 args.steps_per_batch)
    sbibm.warm_reference(config)
    with tempfile.TemporaryDirectory(prefix="flr-sbibm-one-") as tmp:
        url = f"sqlite:///{tmp}/one.db"
        migrate(url)
        engine = make_engine(url)
        state, times = sbibm.falcon_run(engine, config)
        engine.dispose()
    samples = loop.posterior_draws(state, args.draws, torch.Generator().manual_seed(args.seed))
    held = state.regions.held
    print(json.dumps({
        "task": args.task, "obs": args.obs, "budget": args.budget, "seed": args.seed,
        "falcon_config": json.loads(args.falcon_config), "steps_per_batch": args.steps_per_batch,
        "c2st": c2st(reference, samples), "cpu_s": round(times["cpu_s"], 1),
        "passed_steps": None if state.decay is None else state.decay.passed,
        "region_mass": None if held is None else round(math.exp(held[1].log_mass), 3),
        "falcon": moments(samples), "reference": moments(reference),
    }))


if __name__ == "__main__":
    main()
