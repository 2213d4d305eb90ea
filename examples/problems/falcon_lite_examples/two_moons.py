"""sbibm's ``two_moons`` (Greenberg et al. 2019; Lueckmann et al. 2021): a crescent-shaped,
bimodal posterior in two parameters.

    theta ~ U([-1, 1]^2)
    a ~ U(-pi/2, pi/2),   r ~ N(0.1, 0.01^2),   p = (r cos a + 0.25, r sin a)
    x = p + ( -|theta1 + theta2| / sqrt 2,  (-theta1 + theta2) / sqrt 2 )

The reference is exact: the simulator inverted. Write x = p + g(theta). Given x_obs, draw p
as the simulator does, set u = x_obs - p; if u1 <= 0 there are two solutions of g(theta) = u,

    |theta1 + theta2| = -sqrt 2 u1,   theta2 - theta1 = sqrt 2 u2,

one on each side of theta1 + theta2 = 0 (the two moons). g is linear with |det| = 1 on each
side, so taking either solution with probability 1/2 draws theta with density proportional to
p_p(x_obs - g(theta)) = p(x_obs | theta); keeping the draws inside the prior's box (the prior is
uniform) leaves the posterior. `REFERENCE_SAMPLES` of them, from a fixed seed, at any x_obs.

Observations "1", "2", "3": theta* = (0.3, 0.4), (-0.5, 0.2), (0.6, -0.1), x_obs simulated with
``default_rng([21, k])`` (not sbibm's numbers).
"""

from __future__ import annotations

import math

import numpy as np

from falcon_lite.core.problems import Parameter, Problem, Reference, Uniform
from falcon_lite_examples._common import REFERENCE_SAMPLES, observe

SQRT2 = math.sqrt(2.0)
TRUE_THETA = {"1": [0.3, 0.4], "2": [-0.5, 0.2], "3": [0.6, -0.1]}


def _crescent(n: int, rng: np.random.Generator) -> np.ndarray:
    """p (n, 2): the simulator's noise, a half ring of radius ~0.1 around (0.25, 0)."""
    a = rng.uniform(-math.pi / 2, math.pi / 2, n)
    r = rng.normal(0.1, 0.01, n)
    return np.stack([r * np.cos(a) + 0.25, r * np.sin(a)], axis=1)


def simulate(theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    p = _crescent(len(theta), rng)
    shift = np.stack([-np.abs(theta[:, 0] + theta[:, 1]) / SQRT2, (-theta[:, 0] + theta[:, 1]) / SQRT2], axis=1)
    return p + shift


def posterior_samples(x_obs: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n exact posterior draws (n, 2) at x_obs, by inverting the simulator (module doc)."""
    x_obs = np.asarray(x_obs, np.float64)
    found, total = [], 0
    for _ in range(100):
        u = x_obs - _crescent(2 * n, rng)
        ok = u[:, 0] <= 0
        s = -SQRT2 * u[ok, 0] * rng.choice([-1.0, 1.0], size=np.count_nonzero(ok))  # theta1 + theta2
        d = SQRT2 * u[ok, 1]  # theta2 - theta1
        theta = np.stack([(s - d) / 2, (s + d) / 2], axis=1)
        theta = theta[np.all(np.abs(theta) <= 1.0, axis=1)]
        found.append(theta)
        total += len(theta)
        if total >= n:
            return np.concatenate(found)[:n]
    raise ValueError(f"x_obs {x_obs.tolist()} is (almost) impossible under two_moons: no posterior draws")


def reference(x_obs: np.ndarray) -> Reference | None:
    """The exact posterior at x_obs (`REFERENCE_SAMPLES` draws from ``default_rng(22)``); None
    where x_obs is (almost) impossible."""
    try:
        return Reference.from_samples(posterior_samples(x_obs, REFERENCE_SAMPLES, np.random.default_rng(22)))
    except ValueError:
        return None


def make() -> Problem:
    """The task as published (it has no parameters of its own)."""
    parameters = [Parameter("theta1", Uniform(-1.0, 1.0)), Parameter("theta2", Uniform(-1.0, 1.0))]
    return Problem(
        name="two_moons", parameters=parameters, simulate=simulate, x_shape=(2,),
        observations=observe(simulate, TRUE_THETA, seed=21), reference=reference,
        description="sbibm two_moons: a crescent-shaped, bimodal posterior in 2 parameters",
    )
