"""A long series: a sine of known frequency and phase on a linear trend, in `n_bins` bins
(default 1000), with three parameters and an exact posterior.

    t_i = i / (n_bins - 1),  i = 0 .. n_bins - 1
    x_i = A sin(2 pi f0 t_i + phi0) + B + C t_i + sigma eps_i,   eps_i ~ N(0, 1)
    A ~ N(1, 1),  B ~ N(0, 1),  C ~ N(0, 1);   f0 = 5, phi0 = 0, sigma = 1 fixed

x is linear in theta = (A, B, C): x = F theta + sigma eps with the design F = [sin(2 pi f0 t
+ phi0), 1, t] (n_bins, 3), so the posterior is exactly Gaussian:

    P = F^T F / sigma^2 + diag(1 / prior_var),  cov = P^-1,
    mean = cov (F^T x / sigma^2 + prior_mean / prior_var).

`Problem.reference` gives it at any x_obs (mean, std and draws); `posterior` the full
covariance (the three are correlated through the design).

Observations "1", "2", "3": theta* = (1.0, 0.0, 0.0), (0.5, -1.0, 2.0), (2.0, 0.5, -1.0),
x_obs simulated with ``default_rng([41, k])``.
"""

from __future__ import annotations

import numpy as np

from falcon_lite.core.problems import Normal, Parameter, Problem, ProblemError, Reference
from falcon_lite_examples._common import conjugate_posterior, gaussian_reference, observe

TRUE_THETA = {"1": [1.0, 0.0, 0.0], "2": [0.5, -1.0, 2.0], "3": [2.0, 0.5, -1.0]}
PRIOR_MEAN = np.array([1.0, 0.0, 0.0])
PRIOR_STD = np.array([1.0, 1.0, 1.0])


def design(n_bins: int = 1000, frequency: float = 5.0, phase: float = 0.0) -> np.ndarray:
    """F (n_bins, 3): the columns that A, B and C multiply."""
    t = np.linspace(0.0, 1.0, n_bins)
    return np.stack([np.sin(2 * np.pi * frequency * t + phase), np.ones_like(t), t], axis=1)


def posterior(x_obs: np.ndarray, n_bins: int = 1000, frequency: float = 5.0, phase: float = 0.0,
              sigma: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(mean (3,), cov (3, 3)) of the exact posterior at x_obs."""
    return conjugate_posterior(design(n_bins, frequency, phase), np.asarray(x_obs, np.float64), sigma**2,
                               PRIOR_MEAN, PRIOR_STD**2)


def make(n_bins: int = 1000, frequency: float = 5.0, phase: float = 0.0, sigma: float = 1.0) -> Problem:
    """The series in `n_bins` bins, with the fixed frequency f0, phase phi0 and noise sigma."""
    if n_bins < 3 or not sigma > 0:
        raise ProblemError(f"signal needs n_bins >= 3 and sigma > 0, got n_bins={n_bins}, sigma={sigma}")
    features = design(n_bins, frequency, phase)

    def simulate(theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return theta @ features.T + sigma * rng.standard_normal((len(theta), n_bins))

    def reference(x_obs: np.ndarray) -> Reference:
        return gaussian_reference(*posterior(x_obs, n_bins, frequency, phase, sigma), seed=42)

    parameters = [Parameter(name, Normal(float(mu), float(sd)))
                  for name, mu, sd in zip(("A", "B", "C"), PRIOR_MEAN, PRIOR_STD, strict=True)]
    return Problem(
        name="signal", parameters=parameters, simulate=simulate, x_shape=(n_bins,),
        observations=observe(simulate, TRUE_THETA, seed=41), reference=reference,
        description=f"A sin(2 pi {frequency} t + {phase}) + B + C t + {sigma} eps in {n_bins} bins (exact posterior)",
    )
