"""How far a flow trained on a fixed pool of simulations is from the exact posterior, by steps
and weight decay: the bench's gaussian_linear gap, taken apart (docs/flows.md).

sbibm's gaussian_linear (ten parameters, prior and noise variance 0.1) has an exact Gaussian
posterior, so the distance needs no classifier: KL(p || q) at sbibm's observation, by Monte
Carlo over 4000 draws of the exact posterior p, with q the trained flow's log density. The pool
is `--pool` simulations from the prior (one seed), and every flow trains on it alone, without a
proposal: falcon-lite's (the sbi bench's size: NSF, 5 autoregressive transforms, 2 x 50, 10 bins,
standardised, float32)
for each `--steps` on batches of 256, Adam at 2e-3 falling along a cosine, with and without
`--weight-decay`; then sbi 0.27's NPE, one round on the same pool, trained as its `train()`
does by default (early stopping on a 10 % validation split). One thread.

    .venv/bin/python bench/flow_overfit.py [--obs 1] [--seed 0] [--pool 1000] \\
        [--steps 100 200 400 1000] [--weight-decay 0.1]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sbibm_refs  # noqa: E402  (bench/sbibm_refs.py)
from sbibm import SBI_NSF  # noqa: E402  (bench/sbibm.py: sbi's default NSF size)

VAR = 0.1  # sbibm's prior and noise variance
DIM = 10
KL_DRAWS = 4000


def exact_posterior(x_obs: np.ndarray) -> torch.distributions.MultivariateNormal:
    """N(x_obs / 2, VAR / 2 I): prior and noise of equal variance."""
    return torch.distributions.MultivariateNormal(torch.tensor(x_obs / 2), VAR / 2 * torch.eye(DIM, dtype=torch.float64))


def log_ratios(log_q, p: torch.distributions.MultivariateNormal) -> torch.Tensor:
    """log q - log p over KL_DRAWS draws of p (a fixed seed), (KL_DRAWS,)."""
    z = torch.randn(KL_DRAWS, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    theta = p.loc + z @ p.scale_tril.T
    with torch.no_grad():
        return log_q(theta) - p.log_prob(theta)


def kl_exact_to(log_q, p: torch.distributions.MultivariateNormal) -> float:
    """KL(p || q) = E_p[log p - log q], over KL_DRAWS draws of p (a fixed seed)."""
    return float(-log_ratios(log_q, p).mean())


def best_accuracy(log_q, p: torch.distributions.MultivariateNormal) -> float:
    """The accuracy of the best classifier between as many draws of p as of q: 1/2 + TV(p, q) / 2,
    TV = E_p[(1 - q/p)+], over the same draws as `kl_exact_to`. C2ST's classifier, learnt from
    samples, scores at most this in expectation; 0.5 when q = p."""
    return float(0.5 + 0.5 * (1 - log_ratios(log_q, p).exp()).clamp(min=0).mean())


def falcon_flow(theta: torch.Tensor, x: torch.Tensor, steps: int, weight_decay: float, seed: int):
    """falcon-lite's flow trained `steps` steps on the pool, and its CPU seconds."""
    from falcon_lite.config import EstimatorConfig
    from falcon_lite.core.estimators.flow import FlowPosterior
    from falcon_lite.core.training import make_optimizer, set_lr

    cfg = EstimatorConfig(name="flow", flow="nsf", transforms=5, hidden=[50, 50], bins=10, activation="relu",
                          normalize=True, dtype="float32")
    g = torch.Generator().manual_seed(seed)
    flow = FlowPosterior(cfg, DIM, None, g, x_dim=DIM)
    opt = make_optimizer(flow, 2e-3, weight_decay)
    start = time.process_time()
    for step in range(steps):
        rows = torch.randint(len(theta), (min(256, len(theta)),), generator=g)
        flow.observe(theta[rows], x[rows])
        set_lr(opt, 2e-3 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        loss = flow.loss(theta[rows], x[rows])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return flow, time.process_time() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--obs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pool", type=int, default=1000)
    p.add_argument("--steps", type=int, nargs="+", default=[100, 200, 400, 1000])
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--no-sbi", action="store_true", help="falcon-lite's flow only")
    args = p.parse_args()
    torch.set_num_threads(1)

    refs = sbibm_refs.References(sbibm_refs.wheel())
    x_obs = refs.observation("gaussian_linear", args.obs)
    refs.close()
    exact = exact_posterior(x_obs)
    rng = np.random.default_rng(args.seed)
    theta = rng.normal(0.0, math.sqrt(VAR), (args.pool, DIM))
    x = theta + math.sqrt(VAR) * rng.standard_normal((args.pool, DIM))
    theta32, x32 = torch.tensor(theta, dtype=torch.float32), torch.tensor(x, dtype=torch.float32)
    x_o = torch.tensor(x_obs, dtype=torch.float32)

    print(f"gaussian_linear obs {args.obs}, a pool of {args.pool} prior simulations (seed {args.seed}); "
          f"KL(exact || flow) in nats, {KL_DRAWS} draws")
    print("| flow | steps | weight decay | epochs | KL | CPU (s) |\n|---|---|---|---|---|---|")
    for steps in args.steps:
        for decay in (0.0, args.weight_decay):
            flow, cpu = falcon_flow(theta32, x32, steps, decay, args.seed)
            kl = kl_exact_to(lambda t: flow.log_prob(t.float(), x_o.expand(len(t), DIM)).double(), exact)
            print(f"| falcon-lite | {steps} | {decay:g} | {steps * 256 / args.pool:.0f} | {kl:.2f} | {cpu:.1f} |",
                  flush=True)
    if not args.no_sbi:
        from sbi.inference import NPE
        from sbi.neural_nets import posterior_nn

        torch.manual_seed(args.seed)
        prior = torch.distributions.MultivariateNormal(torch.zeros(DIM), VAR * torch.eye(DIM))
        inference = NPE(prior=prior, show_progress_bars=False,
                        density_estimator=posterior_nn(model="nsf", **SBI_NSF))
        start = time.process_time()
        estimator = inference.append_simulations(theta32, x32).train()
        cpu = time.process_time() - start
        posterior = inference.build_posterior(estimator).set_default_x(x_o)
        kl = kl_exact_to(lambda t: posterior.log_prob(t.float()).double(), exact)
        epochs = inference._summary["epochs_trained"][-1]
        print(f"| sbi NPE (early stopping) | – | 0 | {epochs} | {kl:.2f} | {cpu:.1f} |")


if __name__ == "__main__":
    main()
