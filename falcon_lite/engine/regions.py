"""A truncated proposal's region (`proposal.method = "truncated"`, core/truncation.py) at a run's
cadence, the same way in every runtime.

The region is made from a *version* of the weights: those after `version` optimizer steps,
taken afresh once `proposal.region_every` steps have passed since the last (`loop.steer_for`;
every step with 1). A version is what the trainer hands the proposal sampler (`Weights`: a state dict,
on Ray by an object-store reference put once per version), and `RegionCache` turns it into the
truncated prior on a copy of the estimator, rebuilt only when the version changes: the inline
runtime and a Ray sampler both draw through it, so they draw the same rows for the same
weights. The version held is part of the checkpoint (`RunState.to_bytes`), so a resumed run
draws what it would have drawn.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from falcon_lite.core.protocols import DensityEstimator, Prior
from falcon_lite.core.truncation import TruncatedPrior, hpd_threshold

if TYPE_CHECKING:
    from falcon_lite.config import RunConfig

REGION_SEED = 0  # the fixed seed of the draws behind a region's threshold


@dataclass(frozen=True)
class Weights:
    """The estimator's weights after `version` optimizer steps: a state dict, or on Ray a
    reference to one in the object store."""

    version: int
    state: Any


def estimator_for(config: RunConfig, simulator):
    """The run's estimator with its initial weights (they follow the seed): the trainer's, and
    a sampler's copy to load weights versions into."""
    import torch

    from falcon_lite.core.estimators import make_estimator
    from falcon_lite.engine.problem import embedding_plugin
    from falcon_lite.engine.streams import INIT, rng

    generator = torch.Generator().manual_seed(int(rng(config.training.seed, INIT, 0).integers(2**62)))
    return make_estimator(config.estimator, simulator.dim, simulator.prior, generator=generator,
                          residual_base=simulator.residual_base, x_shape=simulator.x_shape,
                          embedding_plugin=embedding_plugin(config))


def truncated_prior(estimator, config: RunConfig, prior: Prior, x_obs: np.ndarray) -> TruncatedPrior:
    """The prior restricted to the estimate's HPD region at x_obs (core/truncation.py): a
    function of the weights (the threshold's draws come from a fixed seed)."""
    import torch

    if not isinstance(estimator, DensityEstimator):
        raise ValueError('proposal.method "truncated" needs an estimator with a density (log_prob), e.g. "flow"')
    x_obs = np.asarray(x_obs, dtype=np.float64).reshape(1, -1)
    p = config.proposal

    def log_q(theta: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return estimator.log_prob(theta, np.repeat(x_obs, len(theta), axis=0)).to(torch.float64).numpy()

    _, log_q_draws = estimator.sample_and_log_prob(x_obs[0], p.region_draws, torch.Generator().manual_seed(REGION_SEED))
    return TruncatedPrior(prior, log_q, hpd_threshold(log_q_draws, p.hpd_epsilon))


class RegionCache:
    """The truncated prior of the newest weights version, on an estimator of its own."""

    def __init__(self, config: RunConfig, simulator) -> None:
        self.config, self.simulator = config, simulator
        self.estimator = None
        self.held: tuple[int, TruncatedPrior] | None = None

    def region(self, weights: Weights, load: Callable[[Any], dict] = lambda state: state) -> TruncatedPrior:
        """The region of `weights` (`load` turns its state into a state dict: ray.get on Ray)."""
        if self.held is None or self.held[0] != weights.version:
            if self.estimator is None:
                self.estimator = estimator_for(self.config, self.simulator)
            self.estimator.load_state_dict(load(weights.state))
            region = truncated_prior(self.estimator, self.config, self.simulator.prior, self.simulator.x_obs)
            self.held = (weights.version, region)
        return self.held[1]
