"""A short plain loop (no store, no engine) of the seed's scenario converges to std_ratio ~ 1.

1000 prior-only warm-up steps at lr 1e-2, then 1500 steps at lr 1e-3 with 0% prior and the
tempered proposal N(mu(x_obs), var * 2): the run must reach 0.9 < std_ratio < 1.1 and sit in
[0.5, 2] at the end, in the identity regime (the seed's explosion comes later, ~step 5000:
see bench/core_loop.py).
"""

import numpy as np
import torch

from falcon_lite.config import RunConfig
from falcon_lite.core import diagnostics as dg
from falcon_lite.core.estimators import make_estimator
from falcon_lite.core.priors import make_prior
from falcon_lite.core.proposal import TemperedProposal, draw_parameters
from falcon_lite.core.simulators import make_simulator
from falcon_lite.core.training import make_optimizer, set_lr, train_step


class Rows:
    def __init__(self, theta, x, log_q, log_prior, origin):
        self.theta, self.x, self.log_q, self.log_prior, self.origin = theta, x, log_q, log_prior, origin


def test_seed_scenario_converges_with_zero_prior_fraction():
    torch.set_num_threads(1)
    cfg = RunConfig()
    sim = make_simulator(cfg.simulator)
    prior = make_prior(cfg.prior, sim.dim)
    est = make_estimator(cfg.estimator, sim.dim, prior, torch.Generator().manual_seed(0))
    opt = make_optimizer(est, cfg.training.lr)
    true_mean, true_std = sim.true_posterior(prior)
    rng_prior, rng_prop, rng_noise = (np.random.default_rng([0, k]) for k in range(3))
    ratios, biases = [], []
    for step in range(2500):
        proposal = None
        if step >= 1000:
            proposal = TemperedProposal(*est.posterior(sim.x_obs), cfg.proposal.temperature)
        if step == 1000:
            set_lr(opt, cfg.training.lr_after_warmup)
        theta, origin, log_q, log_prior = draw_parameters(prior, proposal, 128, 0, rng_prior, rng_prop)
        train_step(est, opt, Rows(theta, sim(theta, rng_noise), log_q, log_prior, origin))
        mean, var = est.posterior(sim.x_obs)
        ratios.append(dg.std_ratio(var, true_std)[0])
        biases.append(abs(dg.bias_over_sigma(mean, true_mean, true_std)[0]))
    assert ratios[999] > 10  # after the warm-up the width is network error, far from sigma_obs
    outcome, converged, exploded, _ = dg.classify_outcome(np.arange(2500), ratios, biases)
    assert converged is not None and converged > 1000 and exploded is None
    assert 0.5 <= ratios[-1] <= 2.0
    assert biases[-1] < 1.0
    assert outcome == "calibrated"
