"""The seed's scenario as a plain loop over falcon_lite.core (no store, no engine): speed and science.

For each prior fraction f and seed: 1000 prior-only warm-up steps at lr 1e-2, then lr 1e-3 with
ceil(f * 128) prior draws and the rest from the tempered proposal N(mu(x_obs), var * T), T = 2;
one fresh batch of 128 simulations per step, trained once. Prints per run: the stress outcome,
converged / explosion steps, final std_ratio and |bias|/sigma, and ms per step; and a bare torch
loop (same net, MSE, Adam, EMA variance, same simulation) for the speed comparison.

    .venv/bin/python bench/core_loop.py [--steps 10000] [--seeds 0 1 2] [--fractions 0 0.2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np
import torch

from falcon_lite.config import RunConfig, with_overrides
from falcon_lite.core import diagnostics
from falcon_lite.core.estimators import make_estimator
from falcon_lite.core.priors import make_prior
from falcon_lite.core.proposal import TemperedProposal, draw_parameters
from falcon_lite.core.simulators import make_simulator
from falcon_lite.core.training import make_optimizer, set_lr, train_step


class Rows:
    """The duck-typed batch train_step takes."""

    def __init__(self, theta, x, log_q, log_prior, origin):
        self.theta, self.x, self.log_q, self.log_prior, self.origin = theta, x, log_q, log_prior, origin


def run(cfg: RunConfig, seed: int, trace_every: int = 0) -> dict:
    """One run of the scenario; returns the stress-contract summary plus timing."""
    torch.set_num_threads(1)
    t, b = cfg.training, cfg.buffer
    sim = make_simulator(cfg.simulator)
    prior = make_prior(cfg.prior, sim.dim)
    est = make_estimator(cfg.estimator, sim.dim, prior, torch.Generator().manual_seed(seed))
    opt = make_optimizer(est, t.lr)
    true_mean, true_std = sim.true_posterior(prior)
    rng_prior, rng_prop, rng_noise = (np.random.default_rng([seed, k]) for k in range(3))
    n = b.simulations_per_step
    ratios, biases, trace = [], [], []
    start, cpu = time.perf_counter(), time.process_time()
    for step in range(t.steps):
        proposal, n_prior = None, n
        if step >= t.warmup_steps:
            proposal = TemperedProposal(*est.posterior(sim.x_obs), cfg.proposal.temperature)
            n_prior = math.ceil(round(b.prior_fraction * n, 9))
        if step == t.warmup_steps:
            set_lr(opt, t.lr_after_warmup)
        theta, origin, log_q, log_prior = draw_parameters(prior, proposal, n, n_prior, rng_prior, rng_prop)
        stats = train_step(est, opt, Rows(theta, sim(theta, rng_noise), log_q, log_prior, origin))
        mean, var = est.posterior(sim.x_obs)
        ratio = diagnostics.std_ratio(var, true_std)
        bias = np.abs(diagnostics.bias_over_sigma(mean, true_mean, true_std))
        ratios.append(ratio)
        biases.append(bias)
        if trace_every and step % trace_every == 0:
            trace.append((step, float(ratio.max()), float(bias.max()), stats["loss"]))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    outcome, conv, expl, max_after = diagnostics.classify_outcome(np.arange(t.steps), ratios, biases)
    return {"seed": seed, "prior_fraction": b.prior_fraction, "outcome": outcome, "converged_step": conv,
            "explosion_step": expl, "final_std_ratio": float(ratios[-1].max()),
            "final_abs_bias_over_sigma": float(biases[-1].max()), "max_std_ratio_after_convergence": max_after,
            "ms_per_step": 1e3 * wall / t.steps, "cpu_ms_per_step": 1e3 * cpu / t.steps, "trace": trace}


def bare_loop(steps: int, seed: int = 0) -> tuple[float, float]:
    """(wall, CPU) ms per step of the bare torch loop: same net, batch, Adam, MSE and EMA; prior draws."""
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(1, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64),
                              torch.nn.Tanh(), torch.nn.Linear(64, 1)).double()
    opt = make_optimizer(net, 1e-3)  # the same Adam (fused) as the core loop
    log_var = torch.zeros(1, dtype=torch.float64)
    rng = np.random.default_rng(seed)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        z = rng.standard_normal((128, 1))
        x = z + 1e-6 * rng.standard_normal((128, 1))
        z_t, x_t = torch.from_numpy(z), torch.from_numpy(x)
        r = z_t - net(x_t)
        loss = (r * r).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            log_var.mul_(0.99).add_(0.01 * torch.log((r * r).mean(0)))
    return 1e3 * (time.perf_counter() - start) / steps, 1e3 * (time.process_time() - cpu) / steps


def step_vs_bare(reps: int = 15, n_batches: int = 200) -> tuple[float, float, float]:
    """CPU us per step of train_step and of the bare step, on the same pre-drawn batches, interleaved.

    Returns (train_step_us, bare_us, posterior_us): the medians over ``reps`` passes.
    """
    torch.set_num_threads(1)
    cfg = RunConfig()
    sim = make_simulator(cfg.simulator)
    prior = make_prior(cfg.prior, sim.dim)
    est = make_estimator(cfg.estimator, sim.dim, prior, torch.Generator().manual_seed(0))
    opt = make_optimizer(est, 1e-3)
    bare_est = make_estimator(cfg.estimator, sim.dim, prior, torch.Generator().manual_seed(0))
    net, bare_opt = bare_est.head.net, make_optimizer(bare_est.head.net, 1e-3)
    log_var = torch.zeros(1, dtype=torch.float64)
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(n_batches):
        theta = prior.sample(128, rng)
        lp = prior.log_prob(theta)
        batches.append(Rows(theta, sim(theta, rng), lp, lp, np.zeros(128, np.int8)))

    def ours():
        for b in batches:
            train_step(est, opt, b)

    def bare():
        for b in batches:
            r = torch.from_numpy(b.theta) - net(torch.from_numpy(b.x))
            loss = (r * r).mean()
            bare_opt.zero_grad()
            loss.backward()
            bare_opt.step()
            with torch.no_grad():
                log_var.mul_(0.99).add_(0.01 * torch.log((r * r).mean(0)))
            loss.item()

    def posteriors():
        for _ in batches:
            est.posterior(sim.x_obs)

    times: dict = {ours: [], bare: [], posteriors: []}
    for _ in range(reps):
        for fn in times:
            t0 = time.process_time()
            fn()
            times[fn].append(1e6 * (time.process_time() - t0) / n_batches)
    return tuple(float(np.median(times[fn])) for fn in (ours, bare, posteriors))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.0, 0.2])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                        help="extra config override, e.g. --set proposal.temperature=0.5")
    parser.add_argument("--trace-every", type=int, default=0)
    parser.add_argument("--json", help="write all results here")
    args = parser.parse_args()
    extra = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    bare_loop(200)  # imports and warms up torch's optimizer machinery outside any timing
    bare, bare_cpu = bare_loop(min(args.steps, 3000))
    ours_us, bare_us, post_us = step_vs_bare()
    print(f"train_step {ours_us:.0f} CPU us/step vs bare step {bare_us:.0f} (ratio {ours_us / bare_us:.3f}); "
          f"posterior(x_obs) {post_us:.0f} CPU us", flush=True)
    results = []
    for f in args.fractions:
        for seed in args.seeds:
            cfg = with_overrides(RunConfig(), {"training.steps": args.steps, "buffer.prior_fraction": f, **extra})
            r = run(cfg, seed, args.trace_every)
            results.append(r)
            print(f"f={f:<4} seed={seed} {r['outcome']:<13} converged={r['converged_step']} "
                  f"exploded={r['explosion_step']} final_std_ratio={r['final_std_ratio']:.3g} "
                  f"final_|bias|/sigma={r['final_abs_bias_over_sigma']:.3g} "
                  f"max_after_conv={r['max_std_ratio_after_convergence']} {r['ms_per_step']:.3f} ms/step "
                  f"({r['cpu_ms_per_step']:.3f} CPU ms/step)",
                  flush=True)
    mean_ms = float(np.mean([r["ms_per_step"] for r in results]))
    mean_cpu = float(np.mean([r["cpu_ms_per_step"] for r in results]))
    print(f"core loop {mean_ms:.3f} ms/step wall, {mean_cpu:.3f} CPU (incl. drawing, 2 posterior evals and "
          f"diagnostics per step); bare torch loop {bare:.3f} wall, {bare_cpu:.3f} CPU; "
          f"CPU ratio {mean_cpu / bare_cpu:.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"runs": results, "bare_ms_per_step": bare, "bare_cpu_ms_per_step": bare_cpu}, fh, indent=1)


if __name__ == "__main__":
    main()
