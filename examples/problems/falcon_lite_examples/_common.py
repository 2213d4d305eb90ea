"""What the examples share: their named observations and Gaussian references."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from falcon_lite.core.problems import Reference

REFERENCE_SAMPLES = 10_000


def observe(simulate, true_theta: Mapping[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """x_obs per name: ``simulate(theta*[None], np.random.default_rng([seed, int(name)]))[0]``."""
    return {name: simulate(np.asarray(theta, np.float64)[None], np.random.default_rng([seed, int(name)]))[0]
            for name, theta in true_theta.items()}


def gaussian_reference(mean: np.ndarray, cov: np.ndarray, seed: int) -> Reference:
    """An exact Gaussian posterior N(mean, cov): its mean, std and `REFERENCE_SAMPLES` draws
    (from ``default_rng(seed)``, for sample-based diagnostics)."""
    rng = np.random.default_rng(seed)
    samples = rng.multivariate_normal(mean, cov, size=REFERENCE_SAMPLES, method="cholesky")
    return Reference(np.asarray(mean, np.float64), np.sqrt(np.diag(cov)), samples)


def conjugate_posterior(design: np.ndarray, x: np.ndarray, noise_var: float, prior_mean: np.ndarray,
                        prior_var: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean (d,), cov (d, d)) of theta for x = design @ theta + N(0, noise_var I), theta ~
    N(prior_mean, diag(prior_var)):

        P = design^T design / noise_var + diag(1 / prior_var),   cov = P^-1,
        mean = cov (design^T x / noise_var + prior_mean / prior_var).
    """
    precision = design.T @ design / noise_var + np.diag(1.0 / prior_var)
    cov = np.linalg.inv(precision)
    cov = 0.5 * (cov + cov.T)
    mean = cov @ (design.T @ x / noise_var + prior_mean / prior_var)
    return mean, cov
