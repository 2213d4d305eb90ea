"""Diagnostics: plain functions of the learned posterior and the truth, each hand-checkable.

- ``std_ratio = sqrt(var) / true_std`` per dim (1 = calibrated width);
- ``bias_over_sigma = (mean - true_mean) / true_std`` per dim;
- ``ess_fraction(log_w) = (sum w)^2 / (n sum w^2)``, in (0, 1];
- ``regime``: "identity" while every |bias| < sigma, else "constant" (EXPLOSION_NOTES.md);
- ``classify_outcome``: the stress contract's calibrated / exploded / miscalibrated / diverged;
- ``expected_coverage``: per-dim coverage of central credible intervals on held-out pairs.
"""

from __future__ import annotations

import math
from functools import lru_cache
from statistics import NormalDist

import numpy as np

CONVERGED = (0.9, 1.1)  # open interval: std_ratio inside means "reached calibration"
EXPLODED = 10.0  # std_ratio above this after convergence means "exploded"
CALIBRATED = (0.8, 1.25)  # closed interval for the final std_ratio


def std_ratio(var, true_std) -> np.ndarray:
    """sqrt(var) / true_std, per dim."""
    return np.sqrt(np.asarray(var, dtype=np.float64)) / np.asarray(true_std, dtype=np.float64)


def bias_over_sigma(mean, true_mean, true_std) -> np.ndarray:
    """(mean - true_mean) / true_std, per dim (signed)."""
    return (np.asarray(mean, dtype=np.float64) - np.asarray(true_mean)) / np.asarray(true_std, dtype=np.float64)


def ess_fraction(log_w) -> float:
    """(sum w)^2 / (n sum w^2) for unnormalised log weights, computed stably; in (0, 1]."""
    log_w = np.asarray(log_w, dtype=np.float64).reshape(-1)
    if log_w.size == 0:
        raise ValueError("ess_fraction needs at least one weight")
    w = np.exp(log_w - np.max(log_w))
    return float(np.sum(w) ** 2 / (log_w.size * np.sum(w * w)))


def regime(bias, sigma) -> str:
    """"identity" if every |bias| < sigma (the stable regime), else "constant"."""
    return "identity" if np.all(np.abs(np.asarray(bias)) < np.asarray(sigma)) else "constant"


def _log_distance(r: float) -> float:
    """|log r|, +inf for 0, negative, inf or nan (so those count as the worst)."""
    return abs(math.log(r)) if 0.0 < r < math.inf else math.inf


def summarize(mean, var, truth_mean, truth_std, temperature: float | None = None) -> dict:
    """One metrics row for the estimate (mean, var) against the truth; values are floats or str.

    ``std_ratio`` is the worst dim (farthest from 1 in log), ``bias_over_sigma`` the signed
    value of the dim with the largest |.|, ``abs_bias_over_sigma`` its size; per-dim values are
    ``std_ratio_<d>``, ``bias_over_sigma_<d>``, ``learned_var_<d>``. ``learned_var`` is the
    largest var, ``proposal_width`` the largest sqrt(var * T) (T = 1 if not given). A nan in a
    dim makes that dim the worst. (Computed on Python floats: it runs every step.)
    """
    variances = np.asarray(var, dtype=np.float64).reshape(-1).tolist()
    ratios = std_ratio(variances, truth_std).reshape(-1).tolist()
    biases = bias_over_sigma(mean, truth_mean, truth_std).reshape(-1).tolist()
    dims = range(len(ratios))
    worst = max(dims, key=lambda d: _log_distance(ratios[d]))
    biggest = max(dims, key=lambda d: abs(biases[d]) if biases[d] == biases[d] else math.inf)
    largest_var = float(np.max(variances))
    row: dict = {
        "std_ratio": ratios[worst],
        "bias_over_sigma": biases[biggest],
        "abs_bias_over_sigma": abs(biases[biggest]),
        "regime": "identity" if all(abs(b) < 1.0 for b in biases) else "constant",
        "learned_var": largest_var,
        "proposal_width": math.sqrt(largest_var * (1.0 if temperature is None else temperature))
        if largest_var >= 0 else math.nan,
    }
    for d in dims:
        row[f"std_ratio_{d}"] = ratios[d]
        row[f"bias_over_sigma_{d}"] = biases[d]
        row[f"learned_var_{d}"] = variances[d]
    return row


def classify_outcome(steps, std_ratio_series, abs_bias_series):
    """The stress contract's outcome of one run, from its diagnostics series.

    ``std_ratio_series`` and ``abs_bias_series`` are (S,) (worst dim) or (S, D) (per dim).
    converged_step: first step with 0.9 < std_ratio < 1.1 (every dim); explosion_step: first
    later step with std_ratio > 10 (any dim). Outcome: ``diverged`` if any value is non-finite
    (the steps found on the finite prefix are still reported); ``exploded`` if an explosion
    step exists; ``calibrated`` if the final std_ratio is in [0.8, 1.25] and the final
    |bias|/sigma < 1 (every dim); ``miscalibrated`` otherwise.
    Returns (outcome, converged_step | None, explosion_step | None,
    max_std_ratio_after_convergence | None).
    """
    steps = np.asarray(steps).reshape(-1)
    ratio = np.asarray(std_ratio_series, dtype=np.float64).reshape(len(steps), -1)
    bias = np.asarray(abs_bias_series, dtype=np.float64).reshape(len(steps), -1)
    if len(steps) == 0:
        raise ValueError("classify_outcome needs at least one step")
    finite = np.all(np.isfinite(ratio), axis=1) & np.all(np.isfinite(bias), axis=1)
    n_ok = len(steps) if finite.all() else int(np.argmin(finite))
    lo, hi = CONVERGED
    converged = np.flatnonzero(np.all((ratio[:n_ok] > lo) & (ratio[:n_ok] < hi), axis=1))
    converged_step = explosion_step = max_after = None
    if converged.size:
        i = int(converged[0])
        converged_step = int(steps[i])
        after = ratio[i:n_ok]
        max_after = float(np.max(after))
        exploded = np.flatnonzero(np.any(ratio[i + 1:n_ok] > EXPLODED, axis=1))
        if exploded.size:
            explosion_step = int(steps[i + 1 + int(exploded[0])])
    if n_ok < len(steps):
        outcome = "diverged"
    elif explosion_step is not None:
        outcome = "exploded"
    elif CALIBRATED[0] <= ratio[-1].min() and ratio[-1].max() <= CALIBRATED[1] and bias[-1].max() < 1.0:
        outcome = "calibrated"
    else:
        outcome = "miscalibrated"
    return outcome, converged_step, explosion_step, max_after


def expected_coverage(est, theta, x, levels=(0.5, 0.68, 0.95)) -> dict:
    """Per-dim (marginal) coverage of the learned Gaussian posterior on held-out pairs.

    For each row i and dim d, theta_id is inside the central credible interval of level L if
    |theta_id - mean_d(x_i)| / sqrt(var_d(x_i)) < Phi^-1((1 + L) / 2). Returns
    ``coverage_<round(100 L)>``: the share over all rows and dims (calibrated: ~L), and
    ``coverage_<round(100 L)>_<d>`` per dim.
    """
    return coverage(theta, *est.posterior_batch(x), levels)


def coverage(theta, mean, var, levels=(0.5, 0.68, 0.95), per_dim: bool = True) -> dict:
    """`expected_coverage` from posterior means and variances (n, D) already computed at the
    rows' x (so a caller that needs them for something else makes one forward pass)."""
    theta = np.asarray(theta, dtype=np.float64)
    z = np.abs(theta.reshape(mean.shape) - mean) / np.sqrt(var)
    out: dict = {}
    for level in levels:
        inside = z < _half_width(level)
        key = f"coverage_{round(100 * level)}"
        out[key] = float(inside.mean())
        if per_dim:
            for d in range(inside.shape[1]):
                out[f"{key}_{d}"] = float(inside[:, d].mean())
    return out


@lru_cache(maxsize=64)
def _half_width(level: float) -> float:
    """Phi^-1((1 + level) / 2): the half-width, in standard deviations, of the central interval."""
    return NormalDist().inv_cdf((1.0 + level) / 2.0)
