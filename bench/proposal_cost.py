"""What a step's proposal costs with a flow: Gaussian (moments at x_obs) against truncated (TSNPE).

On two_moons with the flow (NSF, 3 transforms, hidden 64-64, normalize), trained first on
`--pretrain` prior-only batches so that its region at x_obs is a realistic share of the prior's
box, it times per step (median of `--steps`):

- gaussian: the (mean, var) at x_obs (1000 flow draws) and a batch of 128 from N(mean, 2 var);
- truncated (inline): the region (`proposal.region_draws` flow draws and their log q, the
  threshold) and a batch of 128 by rejection from the prior, for region_draws 10 000 and 2 000;
- Ray: the trainer's ray.put of the state dict (once per steer), and a ProposalSampler's
  propose round trip with a new weights version every call (fetch, load, region, draw), with
  the same version (its cached region: the draw only) and with a Gaussian steer.

    .venv/bin/python bench/proposal_cost.py [--steps 20] [--pretrain 300] [--no-ray]
"""

from __future__ import annotations

import argparse
import io
import math
import os
import statistics
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np
import torch

from falcon_lite.config import RunConfig, with_overrides
from falcon_lite.core.training import train_step
from falcon_lite.engine import loop, regions
from falcon_lite.engine.state import new_state

BASE = {"problem": {"name": "two_moons"}, "estimator": {"name": "flow", "normalize": True},
        "proposal": {"method": "truncated"}, "training": {"warmup_steps": 0}}


class Rows:
    def __init__(self, theta, x):
        self.theta, self.x = theta, x
        self.log_q = self.log_prior = np.zeros(len(theta))
        self.origin = np.zeros(len(theta), np.int8)


def pretrained(config: RunConfig, steps: int):
    state = new_state(config)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        theta = state.prior.sample(256, rng)
        train_step(state.estimator, state.optimizer, Rows(theta, state.simulator(theta, rng)))
    return state


def timed(fn, steps: int, clock=time.process_time) -> float:
    """Median seconds of fn() over `steps` calls (after one unmeasured): this process's CPU time
    by default (the machine these were measured on is shared: wall time there is mostly waiting)."""
    fn()
    times = []
    for _ in range(steps):
        started = clock()
        fn()
        times.append(clock() - started)
    return statistics.median(times)


def inline(state, steps: int) -> dict:
    cfg = state.config
    out = {}

    def gaussian():
        state.at_obs = None  # as after an optimizer step
        posterior = loop.posterior_at_obs(state)
        loop.propose_from(cfg, state.prior, 1, posterior, 0.0)

    out["gaussian: moments + draw"] = timed(gaussian, steps)
    for draws in (10_000, 2_000):
        config = with_overrides(cfg, {"proposal.region_draws": draws})
        region = regions.truncated_prior(state.estimator, config, state.prior, state.simulator.x_obs)
        out[f"truncated ({draws} region draws): region"] = timed(
            lambda: regions.truncated_prior(state.estimator, config, state.prior, state.simulator.x_obs), steps)
        out[f"truncated ({draws} region draws): draw 128"] = timed(
            lambda: loop.propose_from(config, state.prior, 1, region, 0.0), steps)
    print(f"region: {math.exp(region.log_mass):.4f} of the prior's mass; {region.drawn} prior draws "
          f"for 128 rows; fell back: {region.fell_back}")
    return out


def on_ray(state, steps: int) -> dict:
    import ray

    from falcon_lite.runtime.actors import ProposalSampler

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        cfg = state.config
        buf = io.BytesIO()
        torch.save(state.estimator.state_dict(), buf)
        print(f"state dict: {len(buf.getvalue()) / 1024:.0f} KiB, "
              f"{sum(p.numel() for p in state.estimator.parameters())} parameters")
        sampler = ProposalSampler.remote(cfg.model_dump(mode="json"))
        ray.get(sampler.propose.remote(0, (None, 0.0)))  # started
        out = {"ray.put(state dict)": timed(lambda: ray.put(state.estimator.state_dict()), steps)}
        wall = time.perf_counter  # the round trips below run in the sampler's process: wall time
        ref = ray.put(state.estimator.state_dict())
        version = iter(range(10**6))

        def new_version():
            ray.get(sampler.propose.remote(1, (regions.Weights(next(version), ref), 0.0)))

        out["sampler: new version (fetch, load, region, draw; wall)"] = timed(new_version, steps, wall)
        same = regions.Weights(-1, ref)
        out["sampler: same version (draw; wall)"] = timed(
            lambda: ray.get(sampler.propose.remote(1, (same, 0.0))), steps, wall)
        posterior = state.estimator.posterior(state.simulator.x_obs)
        out["sampler: gaussian steer (wall)"] = timed(
            lambda: ray.get(sampler.propose.remote(1, (posterior, 0.0))), steps, wall)
        return out
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--pretrain", type=int, default=300)
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    state = pretrained(RunConfig.model_validate(BASE), args.pretrain)
    results = inline(state, args.steps)
    if not args.no_ray:
        results.update(on_ray(state, args.steps))
    print("| what | ms per call (CPU of this process unless wall) |\n|---|---|")
    for name, seconds in results.items():
        print(f"| {name} | {1000 * seconds:.1f} |")


if __name__ == "__main__":
    main()
