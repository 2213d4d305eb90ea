"""A cheap model whose simulator fails now and then: some calls raise, some rows come back NaN.

    theta ~ N(0, I_dim),   x | theta ~ N(theta, sigma^2 I_dim)

Each call first draws u ~ U(0, 1) from its generator and raises `SimulationFailed` when
u < ``fail_share``; otherwise it simulates and sets each row to NaN with probability
``nan_share`` (a second draw per row). Both are decided by the generator alone, so a run is
as reproducible as with any other simulator. (The engine turns a raising call into NaN rows,
rejected and counted, and goes on.)

Reference: the exact conjugate posterior, N(x / (1 + sigma^2), sigma^2 / (1 + sigma^2) I).

Observations "1", "2", "3" (finite: simulated without failures): theta* = 0.5, -0.5 and 1.0
in every coordinate, x_obs simulated with ``default_rng([61, k])``.
"""

from __future__ import annotations

import numpy as np

from falcon_lite.core.problems import Normal, Parameter, Problem, ProblemError, Reference
from falcon_lite_examples._common import conjugate_posterior, gaussian_reference, observe


class SimulationFailed(RuntimeError):
    """The flaky simulator's deliberate failure."""


def make(fail_share: float = 0.1, nan_share: float = 0.1, dim: int = 2, sigma: float = 0.1) -> Problem:
    """`dim` parameters; a call raises with probability `fail_share`, a row is NaN with
    probability `nan_share`."""
    if not (0.0 <= fail_share <= 1.0 and 0.0 <= nan_share <= 1.0) or dim < 1 or not sigma > 0:
        raise ProblemError(f"flaky needs fail_share and nan_share in [0, 1], dim >= 1 and sigma > 0; "
                           f"got {fail_share}, {nan_share}, {dim}, {sigma}")

    def healthy(theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return theta + sigma * rng.standard_normal(theta.shape)

    def simulate(theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        u = rng.random()
        if u < fail_share:
            raise SimulationFailed(f"flaky: this call fails (u = {u:.3f} < fail_share = {fail_share})")
        x = healthy(theta, rng)
        x[rng.random(len(theta)) < nan_share] = np.nan
        return x

    def reference(x_obs: np.ndarray) -> Reference:
        return gaussian_reference(*conjugate_posterior(np.eye(dim), x_obs, sigma**2, np.zeros(dim), np.ones(dim)),
                                  seed=62)

    true_theta = {"1": [0.5] * dim, "2": [-0.5] * dim, "3": [1.0] * dim}
    return Problem(
        name="flaky", parameters=[Parameter(f"theta{i + 1}", Normal(0.0, 1.0)) for i in range(dim)],
        simulate=simulate, x_shape=(dim,), observations=observe(healthy, true_theta, seed=61), reference=reference,
        description=f"x = theta + {sigma} eps; {fail_share:.0%} of calls raise, {nan_share:.0%} of rows are NaN",
    )
