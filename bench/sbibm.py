"""falcon-lite against sbi's sequential NPE on sbibm's reference posteriors (issue 17 item 7).

For each task (two_moons, slcp, gaussian_linear), sbibm observation k, simulation budget and
seed, in one process:

- falcon-lite: a run of the registered example problem with ``problem.x_obs`` = sbibm's
  observation k, estimator "flow" (NSF, sbi's default size), on the inline runtime with a
  temporary SQLite file; the budget is ``buffer.simulations_per_step x training.steps`` (the
  warm-up's prior draws included). Its config is built in one place, `falcon_config`, and
  ``--falcon-config '{...}'`` merges into it (e.g. another ``proposal`` section).
- sbi: SNPE-C through its documented multi-round API (``append_simulations(theta, x,
  proposal).train()``, ``build_posterior``, ``set_default_x``), ``posterior_nn("nsf")`` with
  its defaults (50 hidden features, 5 transforms, 10 bins), the budget split evenly over
  ``--rounds`` rounds, a torch prior and a simulator that both call the same example
  problem's prior bounds and ``simulate``.

Each side's wall and CPU time run from nothing to its final posterior (simulations, storage,
training; sampling not included); then 10 000 draws from each are scored by C2ST against
sbibm's 10 000 reference samples (``falcon_lite.core.diagnostics_samples.c2st``, as sbibm
computes it). Both sides run single-threaded in one process, one after the other for each
seed, so the CPU times compare even on a shared machine, where wall times count the others.
Every record is appended to ``--results`` (JSON lines) as it is measured, and the table is
printed from that file: a long matrix can be measured in pieces and printed once.

    .venv/bin/python bench/sbibm.py --quick                 # two_moons, obs 1, budget 1000, 1 seed
    .venv/bin/python bench/sbibm.py --tasks two_moons slcp gaussian_linear --obs 1 2 3 \\
        --budgets 1000 10000 --seeds 0 1 2
    .venv/bin/python bench/sbibm.py --table-only            # the table of what --results holds

sbi is in the ``bench`` extra (``make bench-sbi`` installs it); the sbibm reference files
come from its wheel (bench/sbibm_refs.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
for _threads in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one core each side, C2ST too
    os.environ.setdefault(_threads, "1")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sbibm_refs  # noqa: E402  (bench/sbibm_refs.py)

SBI_NSF = {"hidden_features": 50, "num_transforms": 5, "num_bins": 10}  # sbi 0.27's posterior_nn("nsf")
ROUNDS = {1000: 2, 10_000: 10}  # sbi's rounds per budget (others: --rounds, or 2)
DRAWS = 10_000  # posterior draws scored by C2ST (sbibm's number)


class Clock:
    """Wall and CPU seconds since it was made. The CPU time is this process's (both sides run
    single-threaded in it), the figure to compare on a shared machine, where the wall time
    counts whatever else runs there too."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> dict:
        return {"wall_s": time.perf_counter() - self.wall, "cpu_s": time.process_time() - self.cpu}


# -- falcon-lite --------------------------------------------------------------------------
def deep_merge(base: dict, extra: dict) -> dict:
    """`base` with `extra` merged in, section by section (dicts merge, anything else replaces)."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


# budget: (simulations per batch, optimizer steps per batch). At 1000, k = 5 gave the C2ST of k = 10
# on two_moons, slcp and gaussian_linear in 0.6-0.8 of the CPU time (docs/flows.md)
PLANS = {1000: (10, 5), 10_000: (25, 10)}


def plan(budget: int) -> tuple[int, int]:
    """(simulations per batch, steps per batch) for `budget`: PLANS, else about 100 batches of
    10 steps. A budget the batch does not divide is refused (the bench spends it exactly)."""
    per_batch, steps_per_batch = PLANS.get(budget, (max(1, budget // 100), 10))
    if budget % per_batch:
        raise ValueError(f"a budget of {budget} is not a whole number of batches of {per_batch}")
    return per_batch, steps_per_batch


def falcon_config(task: str, x_obs, budget: int, seed: int, overrides: dict | None = None,
                  steps_per_batch: int | None = None) -> dict:
    """falcon-lite's run config (JSON) for `task` at `x_obs` on `budget` simulations.

    The flow is sbi's default NSF in size and kind (5 coupling transforms, 2 x 50 hidden, 10
    bins, ReLU), standardised, in float32 (as sbi's). The budget is simulated in batches (`plan`: 100
    batches of 10 at 1000, 400 of 25 at 10 000) with k optimizer steps on each (5 at 1000, 10 at
    10 000; batch 256 from the pool), so a run is ``budget / per_batch x k`` steps (500 and
    4000). The first 40 % of the steps
    draw from the prior (the warm-up); after it, TSNPE (``proposal.method = "truncated"``): the
    prior restricted to the flow's highest-density region at x_obs, a new region every 4
    batches, its threshold from 2000 of the flow's draws (10 000 by default: the same KL on
    gaussian_linear in 0.65 of the CPU time, docs/flows.md), with a prior quota of 25 %. Adam
    at 2e-3 through the warm-up, then falling along a cosine to zero at the last step, with
    Adam's L2 weight decay set after every batch from the gap between the flow's held-out and
    training losses (``training.weight_decay = "adaptive"``, core/decay.py: up to 0.2 where the
    flow learns the pool, as in ten dimensions, near 0 where it does not; a fixed 0.1 before,
    which cost two_moons its match), and the early stop (``training.early_stop``, limit 1 nat,
    min_share 0.2): where that gap is above a nat, only k x 1 / gap of a batch's k steps are
    taken, down to one. No alarm or coverage on the fresh batches (``training.batch_checks``: a
    tenth of the run's time in 32 draws a row, steering nothing here; the same flow without them).
    Every simulation stays in the training pool
    (max_training = budget), as sbi keeps all its rounds. `steps_per_batch` replaces the plan's k
    (the steps, warm-up and region cadence follow it); `overrides` merge in last (`deep_merge`).
    """
    per_batch, k = plan(budget)
    k = steps_per_batch or k
    steps = budget // per_batch * k
    config = {
        "name": f"sbibm-{task}-{budget}-{seed}",
        "problem": {"name": task, "x_obs": np.asarray(x_obs, np.float64).tolist()},
        "estimator": {"name": "flow", "flow": "nsf", "transforms": 5, "hidden": [50, 50], "bins": 10,
                      "activation": "relu", "normalize": True, "dtype": "float32", "passes": 2},
        "proposal": {"method": "truncated", "region_every": 4 * k, "region_draws": 2000},
        "buffer": {"simulations_per_step": per_batch, "min_training": 0, "max_training": budget,
                   "prior_fraction": 0.25},
        "runtime": {"steps_per_batch": k},
        "training": {"steps": steps, "warmup_steps": round(0.4 * steps), "batch_size": 256, "lr": 2e-3,
                     "lr_after_warmup": 2e-3, "lr_decay": "cosine", "weight_decay": "adaptive",
                     "early_stop": {"limit": 1.0, "min_share": 0.2}, "batch_checks": False, "diagnostics_every": 100,
                     "checkpoint_every": steps, "seed": seed},
    }
    return deep_merge(config, overrides or {})


def simulations_of(config: dict) -> int:
    """The simulations an inline falcon-lite run of `config` (JSON) spends: one batch of
    ``simulations_per_step`` per ``runtime.steps_per_batch`` = k steps (ceil(steps / k) batches)."""
    from falcon_lite.config import RunConfig

    run = RunConfig.model_validate(config)
    k = run.runtime.steps_per_batch or 1
    return run.buffer.simulations_per_step * -(-run.training.steps // k)


def falcon_run(engine, config: dict):
    """(the final state of an inline falcon-lite run of `config`, {"wall_s", "cpu_s"} from run creation to it)."""
    from falcon_lite.config import RunConfig
    from falcon_lite.engine.inline import run_inline
    from falcon_lite.store import runs
    from falcon_lite.store.db import session_factory

    run_config = RunConfig.model_validate(config)
    clock = Clock()
    with session_factory(engine).begin() as session:
        run_id = runs.create_run(session, run_config).id
    state = run_inline(engine, run_id)
    return state, clock.read()


def run_falcon(engine, config: dict, draws: int, seed: int) -> tuple[np.ndarray, dict]:
    """(draws (n, D) from the final flow at x_obs, {"wall_s", "cpu_s"} from run creation to the final flow)."""
    import torch

    from falcon_lite.engine import loop

    state, times = falcon_run(engine, config)
    samples = loop.posterior_draws(state, draws, torch.Generator().manual_seed(seed))  # inside the prior's support
    return samples, times


def warm_reference(config: dict) -> None:
    """Compute the problem's own reference at x_obs once, outside the timed run (slcp's is a
    tempered SMC of about a second, kept in the problem's cache): a run computes it at start
    for its metrics rows, which is diagnostics, not inference."""
    from falcon_lite.config import RunConfig
    from falcon_lite.engine.problem import bind_problem

    bind_problem(RunConfig.model_validate(config)).reference()


# -- sbi ----------------------------------------------------------------------------------
def torch_prior(problem):
    """The problem's prior as a torch distribution for sbi: a box for uniform parameters, a
    diagonal Gaussian for normal ones (the example tasks use one family each)."""
    import torch
    from sbi.utils import BoxUniform

    from falcon_lite.core.problems import Normal, Uniform

    priors = [p.prior for p in problem.parameters]
    if all(isinstance(p, Uniform) for p in priors):
        return BoxUniform(torch.tensor([p.low for p in priors]), torch.tensor([p.high for p in priors]))
    if all(isinstance(p, Normal) for p in priors):
        loc, scale = torch.tensor([p.loc for p in priors]), torch.tensor([p.scale for p in priors])
        return torch.distributions.MultivariateNormal(loc, torch.diag(scale**2))
    raise ValueError(f"{problem.name}: a prior of one family (uniform or normal) only")


def sbi_posterior(problem, x_obs, budget: int, rounds: int, seed: int, training: dict | None = None):
    """(sbi's final posterior, with x_obs as its default x; {"wall_s", "cpu_s"} to that posterior)."""
    import torch
    from sbi.inference import NPE  # SNPE-C; 0.27 keeps "SNPE" only as a deprecated alias
    from sbi.neural_nets import posterior_nn

    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 7])

    def simulator(theta: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(problem.simulate(theta.double().numpy(), rng), dtype=torch.float32)

    clock = Clock()
    prior = torch_prior(problem)
    x_o = torch.as_tensor(x_obs, dtype=torch.float32)
    inference = NPE(prior=prior, density_estimator=posterior_nn(model="nsf", **SBI_NSF), show_progress_bars=False)
    proposal, per_round = prior, [budget // rounds + (r < budget % rounds) for r in range(rounds)]
    for n in per_round:
        theta = proposal.sample((n,))
        estimator = inference.append_simulations(theta, simulator(theta), proposal=proposal).train(**(training or {}))
        proposal = inference.build_posterior(estimator).set_default_x(x_o)
    return proposal, clock.read()


def run_sbi(problem, x_obs, budget: int, rounds: int, seed: int, draws: int,
            training: dict | None = None) -> tuple[np.ndarray, dict]:
    """(draws (n, D) from sbi's final posterior at x_obs, {"wall_s", "cpu_s"} to that posterior)."""
    posterior, times = sbi_posterior(problem, x_obs, budget, rounds, seed, training)
    return posterior.sample((draws,), show_progress_bars=False).double().numpy(), times


# -- the table ------------------------------------------------------------------------------
def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else float("nan"))


def table(records: list[dict]) -> str:
    """The markdown table: per (task, obs, budget), C2ST mean ± sd over seeds for each side,
    their ratio, the mean wall and CPU times and their ratios (falcon-lite / sbi: below 1 is better)."""
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for r in records:
        groups.setdefault((r["task"], r["obs"], r["budget"]), {}).setdefault(r["side"], []).append(r)
    lines = ["| task | obs | budget | seeds | C2ST falcon | C2ST sbi | C2ST ratio | wall falcon (s) | wall sbi (s) "
             "| wall ratio | CPU falcon (s) | CPU sbi (s) | CPU ratio |", "|---" * 13 + "|"]
    order = {t: i for i, t in enumerate(sbibm_refs.TASKS)}
    for (task, obs, budget), sides in sorted(groups.items(), key=lambda g: (order.get(g[0][0], 99), g[0][1:])):
        cells = {}
        for side in ("falcon", "sbi"):
            rows = sides.get(side, [])
            if rows:
                scored = [r["c2st"] for r in rows if r["c2st"] is not None]  # (None: timed only)
                cells[side] = {"c2st": mean_sd(scored) if scored else None, "n": len(rows),
                               **{k: mean_sd([r[k] for r in rows])[0] if all(k in r for r in rows) else None
                                  for k in ("wall_s", "cpu_s")}}
        f, s = cells.get("falcon"), cells.get("sbi")
        seeds = "/".join(str(cells[k]["n"]) for k in ("falcon", "sbi") if k in cells)

        def c2st_cell(v):
            if v is None or v["c2st"] is None:
                return "–"
            mean, sd = v["c2st"]
            return f"{mean:.3f}" + ("" if math.isnan(sd) else f" ± {sd:.3f}")

        def seconds(v, key):
            return "–" if v is None or v[key] is None else f"{v[key]:.1f}"

        def ratio(a, b):
            return "–" if a is None or b is None else f"{a / b:.2f}"

        row = [task, str(obs), str(budget), seeds, c2st_cell(f), c2st_cell(s),
               ratio(f and f["c2st"] and f["c2st"][0], s and s["c2st"] and s["c2st"][0])]
        for key in ("wall_s", "cpu_s"):
            row += [seconds(f, key), seconds(s, key), ratio(f and f[key], s and s[key])]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def load(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- main -----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=list(sbibm_refs.TASKS), choices=sbibm_refs.TASKS)
    p.add_argument("--obs", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--budgets", nargs="+", type=int, default=[1000, 10_000])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--sides", nargs="+", default=["falcon", "sbi"], choices=["falcon", "sbi"])
    p.add_argument("--quick", action="store_true", help="two_moons, obs 1, budget 1000, seed 0")
    p.add_argument("--rounds", type=int, default=None, help=f"sbi's rounds (default by budget: {ROUNDS}, else 2)")
    p.add_argument("--falcon-config", default="{}", help="JSON merged into falcon-lite's run config")
    p.add_argument("--steps-per-batch", type=int, default=None,
                   help=f"falcon-lite's optimizer steps per simulated batch (default: the plan's, {PLANS})")
    p.add_argument("--sbi-train", default="{}", help="JSON keyword arguments of sbi's train()")
    p.add_argument("--keep-subnormals", action="store_true",
                   help="the process does not flush subnormal floats (falcon-lite's network still does)")
    p.add_argument("--draws", type=int, default=DRAWS)
    p.add_argument("--time-only", action="store_true",
                   help="time each side to its final posterior, no C2ST (records with c2st null): both sides "
                   "one after the other in one process, for CPU ratios taken side by side")
    p.add_argument("--cache", type=Path, default=sbibm_refs.CACHE, help="where the sbibm wheel is kept")
    p.add_argument("--results", type=Path, default=Path(tempfile.gettempdir()) / "falcon-lite-sbibm.jsonl")
    p.add_argument("--table-only", action="store_true", help="print the table of --results and stop")
    args = p.parse_args(argv)
    if args.table_only:
        print(table(load(args.results)))
        return
    if args.quick:
        args.tasks, args.obs, args.budgets, args.seeds = ["two_moons"], [1], [1000], [0]
    overrides, sbi_train = json.loads(args.falcon_config), json.loads(args.sbi_train)

    import torch

    from falcon_lite import plugins
    from falcon_lite.core.diagnostics_samples import c2st
    from falcon_lite.store.db import make_engine, migrate

    torch.set_num_threads(1)  # both sides alike (a falcon-lite run sets it too)
    # Subnormal floats flushed to zero for the whole process, so for sbi too: falcon-lite's runs
    # flush them around their network's computations (core/subnormals.py), since weight decay
    # pulls weights into float32's subnormal range, where the CPU multiplies many times slower
    # (docs/flows.md, "At a budget of 10 000"). --keep-subnormals leaves falcon-lite's own flush alone.
    if not args.keep_subnormals:
        torch.set_flush_denormal(True)
    refs = sbibm_refs.References(sbibm_refs.wheel(args.cache))
    with tempfile.TemporaryDirectory(prefix="flr-sbibm-") as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        migrate(url)
        engine = make_engine(url)
        for task in args.tasks:
            problem = plugins.bind(plugins.PROBLEMS, task, {})()
            for k in args.obs:
                x_obs, reference = refs.observation(task, k), refs.samples(task, k)
                for budget in args.budgets:
                    rounds = args.rounds or ROUNDS.get(budget, 2)
                    for seed in args.seeds:
                        for side in args.sides:
                            if side == "falcon":
                                config = falcon_config(task, x_obs, budget, seed, overrides, args.steps_per_batch)
                                if simulations_of(config) != budget:
                                    raise SystemExit(f"the falcon-lite config spends {simulations_of(config)} "
                                                     f"simulations, not the budget {budget}")
                                warm_reference(config)
                                if args.time_only:
                                    samples, times = None, falcon_run(engine, config)[1]
                                else:
                                    samples, times = run_falcon(engine, config, args.draws, seed)
                                extra = {"config": config, "process_flushes": not args.keep_subnormals}
                            else:
                                if args.time_only:
                                    samples, times = None, sbi_posterior(problem, x_obs, budget, rounds, seed, sbi_train)[1]
                                else:
                                    samples, times = run_sbi(problem, x_obs, budget, rounds, seed, args.draws, sbi_train)
                                extra = {"rounds": rounds, "train": sbi_train}
                            t0 = time.perf_counter()
                            score = None if samples is None else c2st(reference, samples)
                            if score is not None:
                                extra["c2st_s"] = time.perf_counter() - t0
                            record = {"task": task, "obs": k, "budget": budget, "seed": seed, "side": side,
                                      "c2st": score, **times, **extra}
                            with args.results.open("a") as out:
                                out.write(json.dumps(record) + "\n")
                            scored = "timed only" if score is None else f"C2ST {score:.3f}"
                            print(f"{task} obs {k} budget {budget} seed {seed} {side}: {scored}, "
                                  f"wall {times['wall_s']:.1f} s, CPU {times['cpu_s']:.1f} s", flush=True)
        engine.dispose()
    refs.close()
    print(table([r for r in load(args.results) if r["task"] in args.tasks and r["obs"] in args.obs
                 and r["budget"] in args.budgets]))


if __name__ == "__main__":
    main()
