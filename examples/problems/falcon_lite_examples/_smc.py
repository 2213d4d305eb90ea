"""Posterior samples from an exact likelihood by tempered sequential Monte Carlo (SMC), for
references where no closed form exists (slcp).

Targets pi_b(theta) ∝ p(theta) L(theta)^b for 0 = b_0 < b_1 < ... < b_K = 1. From n prior
draws, each stage picks the next b by bisection so that the incremental weights
w_i = L(theta_i)^(b_k - b_{k-1}) keep an effective sample size ESS = (sum w)^2 / sum w^2 of
`ess_fraction` n, resamples (systematic) by w, and moves every particle by `moves`
Metropolis steps targeting pi_b, with Gaussian random-walk proposals of covariance
(2.38^2 / d) C, C the particles' covariance (shrunk when few proposals are accepted). After
b = 1, `final_moves` more steps decorrelate the resampled copies.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def _ess(log_w: np.ndarray) -> float:
    if not np.isfinite(log_w).any():
        return 0.0
    w = np.exp(log_w - log_w[np.isfinite(log_w)].max())
    return float(w.sum() ** 2 / (w * w).sum())


def _systematic(log_w: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    w = np.exp(log_w - log_w[np.isfinite(log_w)].max())
    cdf = np.cumsum(w / w.sum())
    cdf[-1] = 1.0
    return np.searchsorted(cdf, (rng.random() + np.arange(len(w))) / len(w))


def smc(log_likelihood: Callable[[np.ndarray], np.ndarray], prior, n: int, rng: np.random.Generator, *,
        ess_fraction: float = 0.5, moves: int = 5, final_moves: int = 20) -> np.ndarray:
    """n draws (n, d) from p(theta | x) ∝ prior(theta) L(theta) (module doc). `prior` has
    ``sample(n, rng)`` and ``log_prob(theta)``; `log_likelihood` maps (n, d) to (n,) (-inf allowed)."""
    theta = prior.sample(n, rng)
    log_l = log_likelihood(theta)
    beta, scale = 0.0, 2.38**2 / theta.shape[1]
    while beta < 1.0:
        if _ess((1.0 - beta) * log_l) >= ess_fraction * n:
            step = 1.0 - beta
        else:
            low, high = 0.0, 1.0 - beta
            for _ in range(50):
                mid = 0.5 * (low + high)
                low, high = (mid, high) if _ess(mid * log_l) >= ess_fraction * n else (low, mid)
            step = max(low, 1e-12)
        index = _systematic(step * log_l, rng)
        theta, log_l = theta[index], log_l[index]
        beta = min(1.0, beta + step)
        theta, log_l, scale = _move(theta, log_l, beta, scale, log_likelihood, prior, rng,
                                    final_moves if beta >= 1.0 else moves)
    return theta


def _move(theta, log_l, beta, scale, log_likelihood, prior, rng, steps):
    log_p = prior.log_prob(theta)
    for _ in range(steps):
        cov = np.atleast_2d(np.cov(theta, rowvar=False)) + 1e-12 * np.eye(theta.shape[1])
        proposed = theta + rng.multivariate_normal(np.zeros(theta.shape[1]), scale * cov, size=len(theta),
                                                   method="cholesky")
        log_p_new = prior.log_prob(proposed)
        log_l_new = np.full(len(theta), -np.inf)
        inside = np.isfinite(log_p_new)
        log_l_new[inside] = log_likelihood(proposed[inside])
        with np.errstate(invalid="ignore"):
            log_ratio = log_p_new + beta * log_l_new - log_p - beta * log_l
        accept = np.log(rng.random(len(theta))) < np.nan_to_num(log_ratio, nan=-np.inf)
        theta = np.where(accept[:, None], proposed, theta)
        log_l = np.where(accept, log_l_new, log_l)
        log_p = np.where(accept, log_p_new, log_p)
        rate = accept.mean()
        scale *= 0.7 if rate < 0.15 else (1.2 if rate > 0.4 else 1.0)
    return theta, log_l, scale
