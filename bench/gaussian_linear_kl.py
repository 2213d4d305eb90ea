"""gaussian_linear run as bench/sbibm.py runs it, both sides, scored without a classifier.

bench/sbibm.py's C2ST on ten parameters takes minutes a score (the classifier runs to sbibm's
`max_iter`); gaussian_linear's posterior is exact (N(x_o / 2, 0.05 I)), so the KL from it to
each side's final posterior, KL(exact || q) by Monte Carlo over 4000 exact draws
(bench/flow_overfit.py's), scores a run in a moment, and a config can be tried on every
observation and seed before the C2ST bench. Beside the KL, over the same exact draws, the
accuracy of the best classifier between the two posteriors (`best_accuracy`: what C2ST's
classifier would reach with unlimited samples), and from 4000 of each side's draws, its mean's
shift and its widths in the exact posterior's units (`moments_against`). Each side as
bench/sbibm.py runs it: falcon-lite's `falcon_config` at each of `--steps-per-batch` (k;
`--falcon-config` merges in), sbi's multi-round NPE; one thread, subnormal floats flushed for
the process (as bench/sbibm.py), CPU seconds to the final posterior. Records go to `--results`
(JSON lines) as they are measured.

    .venv/bin/python bench/gaussian_linear_kl.py [--obs 1 2 3] [--seeds 0 1 2] [--budget 1000] \\
        [--steps-per-batch 5 3] [--sides falcon sbi] [--falcon-config '{...}']
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
from flow_overfit import KL_DRAWS, best_accuracy, exact_posterior, kl_exact_to  # noqa: E402

TASK = "gaussian_linear"


def moments_against(draws: np.ndarray, exact) -> dict:
    """Where draws (n, DIM) of a final posterior differ from the exact one, in its own units:
    `mean_shift`, the Mahalanobis distance of their mean from its mean (about sqrt(DIM / n) for
    n exact draws), and `width_ratio`, their standard deviation over its, averaged over the
    parameters (1 when the widths are right); `toward_prior`, the cosine between that shift and
    the way from the exact mean to the prior's (0): near 1 when the mean is pulled towards the
    prior's, near 0 for a shift in no particular direction."""
    loc, sd = exact.loc.numpy(), np.sqrt(np.diag(exact.covariance_matrix.numpy()))
    shift, home = (draws.mean(axis=0) - loc) / sd, -loc / sd
    return {"mean_shift": float(np.linalg.norm(shift)), "width_ratio": float(np.mean(draws.std(axis=0) / sd)),
            "toward_prior": float(shift @ home / (np.linalg.norm(shift) * np.linalg.norm(home)))}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--obs", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--budget", type=int, default=1000)
    p.add_argument("--steps-per-batch", nargs="+", type=int, default=[None], help="falcon-lite's k values to compare")
    p.add_argument("--sides", nargs="+", default=["falcon", "sbi"], choices=["falcon", "sbi"])
    p.add_argument("--falcon-config", default="{}", help="JSON merged into falcon-lite's run config")
    p.add_argument("--results", type=Path, default=Path(tempfile.gettempdir()) / "falcon-lite-gl-kl.jsonl")
    args = p.parse_args(argv)
    overrides = json.loads(args.falcon_config)
    plan = [("falcon", k) for k in args.steps_per_batch] if "falcon" in args.sides else []
    plan += [("sbi", None)] if "sbi" in args.sides else []

    import torch

    from falcon_lite import plugins
    from falcon_lite.engine import loop
    from falcon_lite.store.db import make_engine, migrate

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)  # as bench/sbibm.py: both sides alike
    refs = sbibm_refs.References(sbibm_refs.wheel())
    problem = plugins.bind(plugins.PROBLEMS, TASK, {})()
    rows: dict[tuple, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="flr-gl-kl-") as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        migrate(url)
        engine = make_engine(url)
        for k in args.obs:
            x_obs = np.asarray(refs.observation(TASK, k), np.float64).reshape(-1)
            exact = exact_posterior(x_obs)
            for seed in args.seeds:
                for side, steps in plan:
                    if side == "falcon":
                        config = sbibm.falcon_config(TASK, x_obs, args.budget, seed, overrides, steps)
                        if sbibm.simulations_of(config) != args.budget:
                            raise SystemExit(f"the falcon-lite config spends {sbibm.simulations_of(config)} "
                                             f"simulations, not the budget {args.budget}")
                        state, times = sbibm.falcon_run(engine, config)
                        x_rows = lambda t: np.repeat(x_obs[None], len(t), axis=0)  # noqa: E731
                        log_q = lambda t: state.estimator.log_prob(t, x_rows(t)).double()  # noqa: E731
                        draws = loop.posterior_draws(state, KL_DRAWS, torch.Generator().manual_seed(seed))
                        label = f"falcon-lite k = {config['runtime']['steps_per_batch']}"
                    else:
                        rounds = sbibm.ROUNDS.get(args.budget, 2)
                        posterior, times = sbibm.sbi_posterior(problem, x_obs, args.budget, rounds, seed)
                        log_q = lambda t: posterior.log_prob(t.float()).double()  # noqa: E731
                        draws = posterior.sample((KL_DRAWS,), show_progress_bars=False).double().numpy()
                        label = f"sbi, {rounds} rounds"
                    record = {"task": TASK, "obs": k, "budget": args.budget, "seed": seed, "side": label,
                              "kl": kl_exact_to(log_q, exact), "best_accuracy": best_accuracy(log_q, exact),
                              **moments_against(np.asarray(draws), exact), **times,
                              "falcon_config": overrides if side == "falcon" else None}
                    with args.results.open("a") as out:
                        out.write(json.dumps(record) + "\n")
                    print(f"obs {k} seed {seed} {label}: KL {record['kl']:.3f}, best accuracy {record['best_accuracy']:.3f}, "
                          f"mean shift {record['mean_shift']:.3f} (towards the prior's {record['toward_prior']:.2f}), "
                          f"widths {record['width_ratio']:.3f}, CPU {times['cpu_s']:.1f} s", flush=True)
                    rows.setdefault((k, label), []).append((record["kl"], times["cpu_s"]))
        engine.dispose()
    refs.close()
    print(f"\ngaussian_linear, budget {args.budget}: KL(exact || final posterior), nats, mean ± sd over seeds")
    print("| obs | side | seeds | KL | CPU (s) |\n|---|---|---|---|---|")
    for (k, label), values in rows.items():
        kl, cpu = sbibm.mean_sd([v[0] for v in values]), sbibm.mean_sd([v[1] for v in values])
        spread = f" ± {kl[1]:.2f}" if len(values) > 1 else ""
        print(f"| {k} | {label} | {len(values)} | {kl[0]:.2f}{spread} | {cpu[0]:.1f} |")


if __name__ == "__main__":
    main()
