"""sbibm's ``gaussian_linear`` (Lueckmann et al. 2021): a Gaussian with a Gaussian prior on its mean.

    theta ~ N(0, prior_var I_d),    x | theta ~ N(theta, noise_var I_d),    d = 10,
    prior_var = noise_var = 0.1 (variances, not standard deviations).

The posterior is exact and Gaussian, independent per coordinate:

    theta | x ~ N(v x / noise_var, v I),    v = 1 / (1 / prior_var + 1 / noise_var)

(x / 2 and variance 0.05 with the defaults). `Problem.reference` gives it at any x_obs.

Observations "1", "2", "3": theta*_k drawn from the prior with ``default_rng([11, k])``,
x_obs_k simulated from it with ``default_rng([12, k])`` (sbibm draws its true parameters from
the prior too; these are not its numbers).
"""

from __future__ import annotations

import math

import numpy as np

from falcon_lite.core.problems import Normal, Parameter, Problem, ProblemError, ProductPrior, Reference
from falcon_lite_examples._common import gaussian_reference, observe


def posterior(x_obs: np.ndarray, prior_var: float = 0.1, noise_var: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """(mean (d,), cov (d, d)) of the exact posterior at x_obs."""
    v = 1.0 / (1.0 / prior_var + 1.0 / noise_var)
    x_obs = np.asarray(x_obs, np.float64)
    return v * x_obs / noise_var, v * np.eye(len(x_obs))


def make(dim: int = 10, prior_var: float = 0.1, noise_var: float = 0.1) -> Problem:
    """The task with `dim` parameters (sbibm: 10) and the given variances."""
    if dim < 1 or not (prior_var > 0 and noise_var > 0):
        raise ProblemError(f"gaussian_linear needs dim >= 1 and positive variances, got dim={dim}, "
                           f"prior_var={prior_var}, noise_var={noise_var}")
    parameters = [Parameter(f"theta{i + 1}", Normal(0.0, math.sqrt(prior_var))) for i in range(dim)]
    noise_std = math.sqrt(noise_var)

    def simulate(theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return theta + noise_std * rng.standard_normal(theta.shape)

    def reference(x_obs: np.ndarray) -> Reference:
        return gaussian_reference(*posterior(x_obs, prior_var, noise_var), seed=13)

    prior = ProductPrior(parameters)
    true_theta = {k: prior.sample(1, np.random.default_rng([11, int(k)]))[0] for k in ("1", "2", "3")}
    return Problem(
        name="gaussian_linear", parameters=parameters, simulate=simulate, x_shape=(dim,),
        observations=observe(simulate, true_theta, seed=12), reference=reference, prior=prior,
        description=f"sbibm gaussian_linear: theta ~ N(0, {prior_var} I_{dim}), x ~ N(theta, {noise_var} I)",
    )
