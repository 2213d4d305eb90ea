"""A run's `held_out_loss` (the flow's loss on each fresh batch before any step has seen it)
beside its training loss, over the run, by weight decay: overfitting seen as it happens.

Each run is bench/sbibm.py's falcon-lite side (`falcon_config`) at one task, observation and
seed, with each `--weight-decay` and its metrics rows recorded at every batch
(`training.diagnostics_every` = k, where the batches come in): the table gives the mean of each
loss over each tenth of the run's batches, and for gaussian_linear, whose posterior is exact,
KL(exact || final posterior) (bench/flow_overfit.py's). One thread, subnormal floats flushed
(as bench/sbibm.py). Records go to `--results` (JSON lines) as they are measured.

    .venv/bin/python bench/held_out_loss.py [--task gaussian_linear] [--obs 2] [--seed 0] \\
        [--weight-decay 0 0.1] [--steps-per-batch 5] [--budget 1000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sbibm  # noqa: E402  (bench/sbibm.py)
import sbibm_refs  # noqa: E402

PARTS = 10


def tenths(values: list[float]) -> list[float]:
    """The mean of each of PARTS consecutive, near-equal parts of `values`."""
    return [float(np.mean(part)) for part in np.array_split(np.asarray(values, np.float64), PARTS)]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="gaussian_linear", choices=sbibm_refs.TASKS)
    p.add_argument("--obs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget", type=int, default=1000)
    p.add_argument("--weight-decay", nargs="+", type=float, default=[0.0, 0.1])
    p.add_argument("--steps-per-batch", type=int, default=None, help="k (default: the bench's)")
    p.add_argument("--results", type=Path, default=Path(tempfile.gettempdir()) / "falcon-lite-held-out.jsonl")
    args = p.parse_args(argv)

    import torch

    from falcon_lite.store import runs
    from falcon_lite.store.db import make_engine, migrate, session_factory

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    refs = sbibm_refs.References(sbibm_refs.wheel())
    x_obs = np.asarray(refs.observation(args.task, args.obs), np.float64).reshape(-1)
    lines = []
    with tempfile.TemporaryDirectory(prefix="flr-held-out-") as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        migrate(url)
        engine = make_engine(url)
        for decay in args.weight_decay:
            k = args.steps_per_batch or sbibm.plan(args.budget)[1]
            overrides = {"training": {"weight_decay": decay, "diagnostics_every": k}}
            config = sbibm.falcon_config(args.task, x_obs, args.budget, args.seed, overrides, k)
            sbibm.warm_reference(config)
            state, times = sbibm.falcon_run(engine, config)
            with session_factory(engine).begin() as session:
                run_id = runs.list_runs(session, limit=1)[0][0].id  # newest first
                rows = runs.metrics_since(session, run_id, names=["held_out_loss", "loss"], limit=None)
            rows = [r for r in rows if r.get("held_out_loss") is not None and r["step"] > 0]
            record = {"task": args.task, "obs": args.obs, "seed": args.seed, "budget": args.budget, "k": k,
                      "weight_decay": decay, "cpu_s": times["cpu_s"],
                      "held_out_loss": tenths([r["held_out_loss"] for r in rows]),
                      "loss": tenths([r["loss"] for r in rows])}
            if args.task == "gaussian_linear":
                from flow_overfit import exact_posterior, kl_exact_to

                x_rows = lambda t: np.repeat(x_obs[None], len(t), axis=0)  # noqa: E731
                record["kl"] = kl_exact_to(lambda t: state.estimator.log_prob(t, x_rows(t)).double(), exact_posterior(x_obs))
            with args.results.open("a") as out:
                out.write(json.dumps(record) + "\n")
            lines.append(record)
        engine.dispose()
    print(f"\n{args.task}, observation {args.obs}, seed {args.seed}, budget {args.budget}: mean loss (nats) "
          f"by tenth of the run's batches")
    head = "| weight decay | loss | " + " | ".join(str(i + 1) for i in range(PARTS)) + " |"
    print(head + (" KL |" if args.task == "gaussian_linear" else ""))
    print("|---" * (PARTS + 2 + (args.task == "gaussian_linear")) + "|")
    for r in lines:
        for name in ("held_out_loss", "loss"):
            kl = f" {r['kl']:.2f} |" if "kl" in r else ""
            print(f"| {r['weight_decay']:g} | {name} | " + " | ".join(f"{v:.2f}" for v in r[name]) + " |"
                  + (kl if name == "held_out_loss" else (" |" if kl else "")))


if __name__ == "__main__":
    main()
