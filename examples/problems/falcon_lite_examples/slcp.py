"""sbibm's ``slcp``, simple likelihood, complex posterior (Papamakarios et al. 2019;
Lueckmann et al. 2021): five parameters, four 2-D Gaussian draws as x.

    theta ~ U([-3, 3]^5)
    m = (theta1, theta2),  s1 = theta3^2,  s2 = theta4^2,  rho = tanh(theta5)
    Sigma = [[s1^2, rho s1 s2], [rho s1 s2, s2^2]]
    x = (x_1, x_2, x_3, x_4) flattened to 8 values (x_j1, x_j2 in turn),  x_j iid ~ N(m, Sigma)

The likelihood is a product of four bivariate normal densities (`log_likelihood`); the
posterior is complex: the signs of theta3 and theta4 are not identified, so it has (at
least) four modes that are mirror images of each other.

Reference: `REFERENCE_SAMPLES` draws from the exact likelihood by tempered SMC
(falcon_lite_examples/_smc.py: prior draws, tempered by bisection on the ESS, resampled, and
moved by 20 random-walk Metropolis steps per stage with the particles' covariance, 100 at the
end), from ``default_rng(32)``; then each draw's theta3 and theta4 signs are flipped at random,
which the posterior is invariant to, so the four mirror modes hold equal mass exactly.
Computed on first use at an x_obs (about a second) and kept. Checked (tests/test_examples.py)
against importance sampling from millions of prior draws, against what is known exactly (with
m well inside the box, E[m | x] is the mean of the four x_j: the posterior of m given Sigma is
N(mean x_j, Sigma / 4), symmetric around it), and, on gaussian_linear, the same sampler
against the closed form.

Observations "1", "2", "3": theta* = (0.7, -1.5, -1.0, -0.9, 0.6), (-0.5, 1.0, 1.2, 0.8, -1.0),
(1.5, 0.5, -0.8, 1.1, 0.3), x_obs simulated with ``default_rng([31, k])`` (not sbibm's numbers).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from falcon_lite.core.problems import Parameter, Problem, ProductPrior, Reference, Uniform
from falcon_lite_examples._common import REFERENCE_SAMPLES, observe
from falcon_lite_examples._smc import smc

TRUE_THETA = {"1": [0.7, -1.5, -1.0, -0.9, 0.6], "2": [-0.5, 1.0, 1.2, 0.8, -1.0], "3": [1.5, 0.5, -0.8, 1.1, 0.3]}
PARAMETERS = [Parameter(f"theta{i + 1}", Uniform(-3.0, 3.0)) for i in range(5)]


def _moments(theta: np.ndarray):
    m = theta[:, None, :2]  # (n, 1, 2)
    s1, s2, rho = theta[:, 2] ** 2, theta[:, 3] ** 2, np.tanh(theta[:, 4])
    return m, s1[:, None], s2[:, None], rho[:, None]


def simulate(theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """x (n, 8): four draws of N(m, Sigma) per row, through Sigma's Cholesky factor
    [[s1, 0], [rho s2, s2 sqrt(1 - rho^2)]]."""
    m, s1, s2, rho = _moments(theta)
    z = rng.standard_normal((len(theta), 4, 2))
    x1 = m[..., 0] + s1 * z[..., 0]
    x2 = m[..., 1] + s2 * (rho * z[..., 0] + np.sqrt(1 - rho**2) * z[..., 1])
    return np.stack([x1, x2], axis=-1).reshape(len(theta), 8)


def log_likelihood(theta: np.ndarray, x_obs: np.ndarray) -> np.ndarray:
    """log p(x_obs | theta) (n,): the sum of four bivariate normal log densities (-inf where
    theta3 or theta4 is 0)."""
    m, s1, s2, rho = _moments(theta)
    points = np.asarray(x_obs, np.float64).reshape(4, 2)[None]
    with np.errstate(divide="ignore", invalid="ignore"):
        u1, u2 = (points[..., 0] - m[..., 0]) / s1, (points[..., 1] - m[..., 1]) / s2
        q = (u1**2 - 2 * rho * u1 * u2 + u2**2) / (1 - rho**2)
        log_p = -np.log(2 * np.pi) - np.log(s1 * s2) - 0.5 * np.log(1 - rho**2) - 0.5 * q
    return np.nan_to_num(log_p.sum(axis=1), nan=-np.inf)


def posterior_samples(x_obs: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n posterior draws (n, 5) at x_obs (module doc: tempered SMC, then the sign symmetry)."""
    x_obs = np.asarray(x_obs, np.float64)
    theta = smc(lambda t: log_likelihood(t, x_obs), ProductPrior(PARAMETERS), n, rng, moves=20, final_moves=100)
    theta[:, 2:4] *= rng.choice([-1.0, 1.0], size=(n, 2))
    return theta


@lru_cache(maxsize=16)
def _reference(x_bytes: bytes) -> Reference:
    x_obs = np.frombuffer(x_bytes, np.float64)
    return Reference.from_samples(posterior_samples(x_obs, REFERENCE_SAMPLES, np.random.default_rng(32)))


def reference(x_obs: np.ndarray) -> Reference:
    return _reference(np.ascontiguousarray(x_obs, np.float64).tobytes())


def make() -> Problem:
    """The task as published (it has no parameters of its own)."""
    return Problem(
        name="slcp", parameters=PARAMETERS, simulate=simulate, x_shape=(8,),
        observations=observe(simulate, TRUE_THETA, seed=31), reference=reference,
        description="sbibm slcp: simple likelihood (4 draws of a 2-D Gaussian), complex posterior in 5 parameters",
    )
