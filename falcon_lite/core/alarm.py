"""A ground-truth-free explosion alarm, from the residuals of fresh proposal samples.

Take the newest batch of proposal-origin samples *before* training on it, and its
residuals r = theta - mu(x) under the current estimate. In the identity regime the
learned mean is mu(x) ~ x + b near x_obs (EXPLOSION_NOTES.md), so r ~ -b - noise:

    mean(r) ~ -b,    std(r) ~ sigma_obs    =>    z = |mean(r)| / std(r) ~ |b| / sigma_obs.

z estimates |bias|/sigma, the quantity whose crossing 1 starts the runaway, without
knowing the true posterior; the same holds per dimension for x = f(z) + noise with a
smooth invertible f (std(r) is then the posterior width). In the constant regime
std(r) grows to the proposal width. The alarm is an exponential moving average of z
(max over dimensions) compared with a threshold.
"""

from __future__ import annotations

import numpy as np

THRESHOLD = 1.0
MOMENTUM = 0.05


def residual_z(theta: np.ndarray, mean_pred: np.ndarray) -> np.ndarray:
    """|mean(r)| / std(r) per dimension for residuals r = theta - mean_pred, both (n, D).

    >>> residual_z(np.array([[1.0], [3.0]]), np.array([[0.0], [0.0]]))
    array([2.])
    """
    r = np.asarray(theta, dtype=np.float64) - np.asarray(mean_pred, dtype=np.float64)
    if len(r) < 2:
        return np.full(r.shape[1], np.nan)
    std = r.std(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(std > 0, np.abs(r.mean(axis=0)) / std, np.inf)


def smooth(previous: float | None, value: float, momentum: float = MOMENTUM) -> float:
    """The alarm's moving average; the first finite value starts it."""
    if not np.isfinite(value):
        return previous if previous is not None else float("nan")
    if previous is None or not np.isfinite(previous):
        return float(value)
    return (1.0 - momentum) * previous + momentum * float(value)
