"""A cheap model whose simulator takes a set time per simulation, for scaling tests.

    theta ~ N(0, I_dim),   x | theta ~ N(theta, sigma^2 I_dim)

Each call spends ``ms_per_simulation`` milliseconds per row: the share ``cpu_share`` of it
busy on the CPU (small numpy products, so a process pool or Ray shows real load), the rest
asleep (as a simulator waiting on I/O or another program would). The result does not depend
on the timing: it is a function of theta and the generator only.

Reference: the exact conjugate posterior, N(x / (1 + sigma^2), sigma^2 / (1 + sigma^2) I).

Observations "1", "2", "3": theta* = 0.5, -0.5 and 1.0 in every coordinate, x_obs simulated
with ``default_rng([51, k])``.
"""

from __future__ import annotations

import time

import numpy as np

from falcon_lite.core.problems import Normal, Parameter, Problem, ProblemError, Reference
from falcon_lite_examples._common import conjugate_posterior, gaussian_reference, observe


def _busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    a = np.full((32, 32), 0.5)
    while time.perf_counter() < end:
        a = np.tanh(a @ a)


def make(ms_per_simulation: float = 20.0, cpu_share: float = 0.2, dim: int = 2, sigma: float = 0.1) -> Problem:
    """`dim` parameters; each simulation takes `ms_per_simulation` ms, `cpu_share` of it busy."""
    if ms_per_simulation < 0 or not 0.0 <= cpu_share <= 1.0 or dim < 1 or not sigma > 0:
        raise ProblemError(f"slow needs ms_per_simulation >= 0, cpu_share in [0, 1], dim >= 1 and sigma > 0; "
                           f"got {ms_per_simulation}, {cpu_share}, {dim}, {sigma}")

    def model(theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return theta + sigma * rng.standard_normal(theta.shape)

    def simulate(theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        seconds = len(theta) * ms_per_simulation / 1000.0
        _busy(cpu_share * seconds)
        time.sleep((1.0 - cpu_share) * seconds)
        return model(theta, rng)

    def reference(x_obs: np.ndarray) -> Reference:
        return gaussian_reference(*conjugate_posterior(np.eye(dim), x_obs, sigma**2, np.zeros(dim), np.ones(dim)),
                                  seed=52)

    true_theta = {"1": [0.5] * dim, "2": [-0.5] * dim, "3": [1.0] * dim}
    return Problem(
        name="slow", parameters=[Parameter(f"theta{i + 1}", Normal(0.0, 1.0)) for i in range(dim)],
        simulate=simulate, x_shape=(dim,), observations=observe(model, true_theta, seed=51), reference=reference,
        description=f"x = theta + {sigma} eps, {ms_per_simulation} ms per simulation ({cpu_share:.0%} CPU)",
    )
