"""Diagnostics of a posterior from its samples, for posteriors that are not Gaussian.

- ``c2st(a, b)``: a classifier two-sample test, as the sbibm benchmark computes it
  (Lueckmann et al. 2021, ``sbibm.metrics.c2st``): both samples are z-scored with the mean
  and the (n - 1) standard deviation of ``a``; a scikit-learn ``MLPClassifier`` (ReLU, two
  hidden layers of 10 D units, adam, ``max_iter`` 10 000, ``random_state=seed``) is scored
  by ``folds``-fold cross-validated accuracy (``KFold(shuffle=True, random_state=seed)``, the
  folds not stratified) at telling the rows of ``a`` (label 0) from those of ``b`` (label 1);
  the mean accuracy is returned: 0.5 when the two are one distribution, 1.0 when they are
  told apart every time. (sbibm returns it as a float32 tensor; here a Python float.)
- ``tarp_coverage``: TARP's expected coverage probability (Lemos et al. 2023), ground-truth
  free on held-out pairs (theta*_i, x_i) with posterior draws theta_ij ~ q(. | x_i): with a
  random reference point r_i per pair, f_i = share of j with ||theta_ij - r_i|| <
  ||theta*_i - r_i||, and ECP(alpha) = mean_i 1[f_i < alpha]. A calibrated posterior gives
  ECP(alpha) = alpha for every alpha (the coverage of balls around r_i); the summary
  ``tarp_error`` is max_alpha |ECP(alpha) - alpha|.
- ``hpd_coverage``: the expected coverage of highest-density regions, from the posterior's
  own density: theta*_i lies in the HPD region of level alpha iff the share of draws with a
  higher density, f_i = mean_j 1[log q(theta_ij | x_i) > log q(theta*_i | x_i)], is below
  alpha; coverage(alpha) = mean_i 1[f_i < alpha] (= alpha when calibrated, below when the
  posterior is overconfident).
- ``marginals``: per-parameter histograms (densities) on shared edges, to plot or compare.
- ``posterior_draws``: draws from an estimator at each held-out x (the engine's `sample`).

Shapes: samples ``(n, D)``; per-pair draws ``(N, m, D)``; truths ``(N, D)``.
"""

from __future__ import annotations

import numpy as np

LEVELS = np.linspace(0.0, 1.0, 21)  # the credibility levels alpha of the coverage curves


def c2st(a: np.ndarray, b: np.ndarray, seed: int = 1, folds: int = 5, max_iter: int = 10_000) -> float:
    """Cross-validated accuracy of a classifier telling rows of `a` (n, D) from rows of `b` (m, D)."""
    from sklearn.model_selection import KFold, cross_val_score
    from sklearn.neural_network import MLPClassifier

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"c2st needs two samples (n, D) and (m, D), got {a.shape} and {b.shape}")
    mean, std = a.mean(0), a.std(0, ddof=1)
    data = (np.concatenate([a, b]) - mean) / std
    labels = np.concatenate([np.zeros(len(a)), np.ones(len(b))])
    dim = a.shape[1]
    classifier = MLPClassifier(activation="relu", hidden_layer_sizes=(10 * dim, 10 * dim), solver="adam",
                               max_iter=max_iter, random_state=seed)
    split = KFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(np.mean(cross_val_score(classifier, data, labels, cv=split, scoring="accuracy")))


def tarp_coverage(draws: np.ndarray, theta: np.ndarray, seed: int = 0, levels=LEVELS) -> dict:
    """TARP's ECP(alpha) at `levels` from draws (N, m, D) at each pair's x and the truths (N, D).

    Both are scaled to the unit box of the truths (per dim: (t - min) / (max - min)) and the
    reference points are uniform in that box (a numpy generator seeded with `seed`).
    Returns ``{"levels": (L,), "ecp": (L,), "tarp_error": max |ecp - levels|}``.
    """
    draws, theta = _pairs(draws, theta)
    low, span = theta.min(0), np.ptp(theta, axis=0)
    span = np.where(span > 0, span, 1.0)
    draws, theta = (draws - low) / span, (theta - low) / span
    ref = np.random.default_rng(seed).uniform(size=theta.shape)  # (N, D)
    d_draws = np.linalg.norm(draws - ref[:, None, :], axis=-1)  # (N, m)
    d_true = np.linalg.norm(theta - ref, axis=-1)  # (N,)
    return _curve((d_draws < d_true[:, None]).mean(1), levels)


def hpd_coverage(log_q_draws: np.ndarray, log_q_true: np.ndarray, levels=LEVELS) -> dict:
    """HPD coverage at `levels` from log q of the draws (N, m) and of the truths (N,), each at its x.

    Returns ``{"levels": (L,), "ecp": (L,), "tarp_error": max |ecp - levels|}`` (the same keys
    as `tarp_coverage`; the last is the largest gap to the diagonal).
    """
    log_q_draws = np.asarray(log_q_draws, dtype=np.float64)
    log_q_true = np.asarray(log_q_true, dtype=np.float64).reshape(-1)
    if log_q_draws.ndim != 2 or len(log_q_draws) != len(log_q_true):
        raise ValueError(f"hpd_coverage needs (N, m) and (N,), got {log_q_draws.shape} and {log_q_true.shape}")
    return _curve((log_q_draws > log_q_true[:, None]).mean(1), levels)


def marginals(samples: np.ndarray, bins: int = 50, bounds: np.ndarray | None = None) -> dict:
    """Per-parameter histograms of samples (n, D): ``{"edges": (D, bins + 1), "density": (D, bins)}``.

    `bounds` (D, 2) fixes each parameter's range (to compare two samples on the same edges);
    by default the range of the samples. Each density integrates to the share of samples inside.
    """
    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim != 2:
        raise ValueError(f"marginals needs samples (n, D), got {samples.shape}")
    if bounds is None:
        bounds = np.stack([samples.min(0), samples.max(0)], axis=1)
    bounds = np.asarray(bounds, dtype=np.float64).reshape(samples.shape[1], 2)
    edges = np.stack([np.linspace(lo, hi, bins + 1) for lo, hi in bounds])
    counts = np.stack([np.histogram(samples[:, d], edges[d])[0] for d in range(samples.shape[1])])
    return {"edges": edges, "density": counts / (len(samples) * np.diff(edges, axis=1))}


def posterior_draws(est, x: np.ndarray, n: int, generator) -> np.ndarray:
    """``(N, n, D)``: n draws from the estimator's posterior at each of the N rows of x."""
    return np.stack([est.sample(row, n, generator) for row in np.asarray(x)])


def _pairs(draws, theta) -> tuple[np.ndarray, np.ndarray]:
    draws, theta = np.asarray(draws, dtype=np.float64), np.asarray(theta, dtype=np.float64)
    if draws.ndim != 3 or theta.shape != (draws.shape[0], draws.shape[2]):
        raise ValueError(f"needs draws (N, m, D) and truths (N, D), got {draws.shape} and {theta.shape}")
    return draws, theta


def _curve(f: np.ndarray, levels) -> dict:
    """ECP(alpha) = share of pairs with f_i < alpha, for each alpha in levels."""
    levels = np.asarray(levels, dtype=np.float64)
    ecp = (f[None, :] < levels[:, None]).mean(1)
    return {"levels": levels, "ecp": ecp, "tarp_error": float(np.max(np.abs(ecp - levels)))}
