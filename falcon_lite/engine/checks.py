"""The sample-based checks of a run, at their own cadence (they cost seconds, not microseconds):

- ``c2st`` (`training.c2st_every`): the estimate's draws at x_obs against the problem's reference
  samples (only where it has some), as sbibm computes it (core/diagnostics_samples.py): 0.5 is
  indistinguishable, 1.0 told apart every time;
- expected coverage (`training.coverage_every`) on the held-out VALIDATION rows (theta*, x):
  ``tarp_error`` (max |ECP - alpha|) with ``tarp_ecp_50`` and ``tarp_ecp_95``, and for an estimator
  with a density the HPD coverage ``hpd_error``, ``hpd_coverage_50``, ``hpd_coverage_95``;
- with either: per-parameter marginals of the draws at x_obs, ``marginal_mean_<i>``,
  ``marginal_std_<i>``, ``marginal_q05_<i>``, ``marginal_q50_<i>``, ``marginal_q95_<i>``.

Each check also runs at a run's last step. Every draw comes from a generator seeded with
CHECK_SEED, so the values are a function of the weights (and of the rows held out).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from falcon_lite.core import diagnostics_samples as ds
from falcon_lite.core.protocols import DensityEstimator

if TYPE_CHECKING:
    from falcon_lite.engine.state import RunState
    from falcon_lite.store.mirror import Mirror

CHECK_SEED = 1
C2ST_DRAWS = 1000  # draws (and reference samples, at most) per side of the classifier test
PAIR_DRAWS = 100  # posterior draws per held-out row for the coverage curves
MAX_PAIRS = 200  # held-out rows used, at most (the newest)
QUANTILES = {"q05": 0.05, "q50": 0.5, "q95": 0.95}


def due(state: RunState, step: int) -> tuple[bool, bool]:
    """(c2st due, coverage due) after optimizer step `step` (the last step of the run counts)."""
    t = state.config.training
    last = step + 1 == t.steps

    def at(every):
        return every is not None and (step % every == 0 or last)

    return at(t.c2st_every), at(t.coverage_every)


def sample_checks(state: RunState, mirror: Mirror, step: int) -> dict:
    """The metrics of the checks due at `step` (an empty dict when none is, or none applies)."""
    c2st_due, coverage_due = due(state, step)
    if not (c2st_due or coverage_due) or not state.estimator.amortized:
        return {}
    import torch

    est, x_obs = state.estimator, state.simulator.x_obs
    draws = est.sample(x_obs, C2ST_DRAWS, torch.Generator().manual_seed(CHECK_SEED))
    row = marginal_summary(draws)
    reference = state.simulator.reference()
    if c2st_due and reference is not None and reference.samples is not None and np.all(np.isfinite(draws)):
        row["c2st"] = ds.c2st(reference.samples[:C2ST_DRAWS], draws, seed=CHECK_SEED)
    if coverage_due:
        row.update(coverage_on(est, mirror.validation()))
    return row


def marginal_summary(draws: np.ndarray) -> dict:
    """Per-parameter mean, std and quantiles of draws (n, D)."""
    row = {}
    for d in range(draws.shape[1]):
        column = draws[:, d]
        row[f"marginal_mean_{d}"] = float(np.mean(column))
        row[f"marginal_std_{d}"] = float(np.std(column))
        for name, q in QUANTILES.items():
            row[f"marginal_{name}_{d}"] = float(np.quantile(column, q))
    return row


def coverage_on(est, held_out) -> dict:
    """TARP (and HPD) coverage on the newest MAX_PAIRS held-out rows; {} with fewer than 10."""
    import torch

    if held_out is None or len(held_out.theta) < 10:
        return {}
    theta = np.asarray(held_out.theta, dtype=np.float64)[-MAX_PAIRS:]
    x = np.asarray(held_out.x, dtype=np.float64)[-MAX_PAIRS:].reshape(len(theta), -1)
    draws = ds.posterior_draws(est, x, PAIR_DRAWS, torch.Generator().manual_seed(CHECK_SEED))  # (N, m, D)
    if not np.all(np.isfinite(draws)):
        return {}
    row = _curve_metrics("tarp", "tarp_ecp", ds.tarp_coverage(draws, theta, seed=CHECK_SEED))
    if isinstance(est, DensityEstimator):
        with torch.no_grad():
            n, m, dim = draws.shape
            x_rep = np.repeat(x, m, axis=0)
            log_q_draws = est.log_prob(draws.reshape(n * m, dim), x_rep).to(torch.float64).numpy().reshape(n, m)
            log_q_true = est.log_prob(theta, x).to(torch.float64).numpy()
        row.update(_curve_metrics("hpd", "hpd_coverage", ds.hpd_coverage(log_q_draws, log_q_true)))
    return row


def _curve_metrics(prefix: str, name: str, curve: dict) -> dict:
    levels = curve["levels"]
    row = {f"{prefix}_error": curve["tarp_error"]}
    for level in (0.5, 0.95):
        row[f"{name}_{round(100 * level)}"] = float(curve["ecp"][int(np.argmin(np.abs(levels - level)))])
    return row
