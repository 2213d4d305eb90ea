"""The two problems falcon-lite ships, registered like any plugin (``falcon_lite.problems``
in its own pyproject.toml): ``gaussian`` (x = z + noise, the seed's scenario) and
``exp_noise`` (x = exp(z) + noise, falcon's example 04).

A run config's v1 sections (``simulator`` and ``prior``) name these and mean the same run:
the same prior draws, simulations and reference posterior as before there were plugins.
"""

from __future__ import annotations

import math

import numpy as np

from falcon_lite.core.priors import NormalPrior, UniformPrior
from falcon_lite.core.problems import Normal, Parameter, Problem, ProblemError, Reference, Uniform
from falcon_lite.core.simulators import ExpNoiseSimulator, GaussianSimulator


def _prior(prior: str, dim: int, loc: float, scale: float, low: float, high: float):
    if prior == "normal":
        return NormalPrior(loc, scale, dim), Normal(loc, scale)
    if prior == "uniform":
        return UniformPrior(low, high, dim), Uniform(low, high)
    raise ProblemError(f"prior must be 'normal' or 'uniform', got {prior!r}")


def gaussian(dim: int = 1, sigma_obs: float = 1e-6, z_true: list | None = None, prior: str = "normal",
             loc: float = 0.0, scale: float = 1.0, low: float = -10.0, high: float = 10.0) -> Problem:
    """x = z + sigma_obs * eps in `dim` dimensions; observation "default": z_true, else 0.3 each.
    Reference: the exact conjugate posterior (normal prior), or N(x_obs, sigma^2) under a wide
    uniform prior."""
    if z_true is not None and len(z_true) != dim:
        raise ProblemError(f"z_true has {len(z_true)} values, dim is {dim}")
    x_default = np.asarray(z_true if z_true is not None else [0.3] * dim, np.float64)
    return _built_in("gaussian", GaussianSimulator, x_default, sigma_obs, _prior(prior, dim, loc, scale, low, high),
                     "x = z + noise (the seed's explosion scenario)")


def exp_noise(dim: int = 3, sigma_obs: float = 1e-6, z_true: list | None = None, prior: str = "normal",
              loc: float = 0.0, scale: float = 1.0, low: float = -10.0, high: float = 10.0) -> Problem:
    """x = exp(z) + sigma_obs * eps; observation "default": exp(z_true), z_true = [-5, 0, 5]
    for dim 3 (falcon's example 04), else zeros. Reference: the delta method, mean log(x_obs),
    std sigma / x_obs."""
    if z_true is None:
        z_true = [-5.0, 0.0, 5.0] if dim == 3 else [0.0] * dim
    if len(z_true) != dim:
        raise ProblemError(f"z_true has {len(z_true)} values, dim is {dim}")
    if any(z > 700 for z in z_true):
        raise ProblemError("z_true too large: exp(z_true) overflows (exp_noise needs z_true <= 700)")
    x_default = np.array([math.exp(z) for z in z_true])
    return _built_in("exp_noise", ExpNoiseSimulator, x_default, sigma_obs, _prior(prior, dim, loc, scale, low, high),
                     "x = exp(z) + noise (falcon's example 04)")


def _built_in(name: str, simulator: type, x_default: np.ndarray, sigma_obs: float, prior: tuple,
              description: str) -> Problem:
    """A built-in problem around its v1 simulator class: the same draws, simulations and
    reference posterior (`true_posterior`) as the v1 config that names it."""
    sampler, marginal = prior

    def reference(x_obs: np.ndarray) -> Reference:
        return Reference.gaussian(*simulator(x_obs, sigma_obs).true_posterior(sampler))

    return Problem(
        name=name, parameters=[Parameter(f"z{i}", marginal) for i in range(len(x_default))],
        simulate=simulator(x_default, sigma_obs), x_shape=(len(x_default),), observations={"default": x_default},
        reference=reference, prior=sampler, residual_base=simulator.residual_base, description=description,
    )
