"""Priors over theta, by name: ``normal`` (independent N(loc, scale^2) per dim) and ``uniform``.

Every prior gives numpy ``sample(n, rng) -> (n, D)`` and ``log_prob(theta (n, D)) -> (n,)``
(summed over dims; ``-inf`` outside a uniform's support), plus a torch ``log_prob_t`` used by
the likelihood estimator's MAP search, and ``mean``/``std`` (D,) for starting points.
Randomness only from the ``np.random.Generator`` passed in. Torch is imported by
``log_prob_t`` only, so that proposing (numpy) does not load it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


class NormalPrior:
    """theta_d ~ N(loc, scale^2) independently for d = 1..D."""

    name = "normal"
    support = None  # unbounded: proposals are not truncated

    def __init__(self, loc: float, scale: float, dim: int):
        if not scale > 0:
            raise ValueError(f"normal prior needs scale > 0, got {scale!r}")
        self.loc, self.scale, self.dim = float(loc), float(scale), int(dim)
        self.mean = np.full(self.dim, self.loc)
        self.std = np.full(self.dim, self.scale)
        self._norm = self.dim * (math.log(self.scale) + 0.5 * math.log(2 * math.pi))

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.loc + self.scale * rng.standard_normal((n, self.dim))

    def log_prob(self, theta: np.ndarray) -> np.ndarray:
        u = (np.asarray(theta) - self.loc) / self.scale
        return -0.5 * np.sum(u * u, axis=-1) - self._norm

    def log_prob_t(self, theta: torch.Tensor) -> torch.Tensor:
        u = (theta - self.loc) / self.scale
        return -0.5 * (u * u).sum(-1) - self._norm


class UniformPrior:
    """theta_d ~ U(low, high) independently; log density -inf outside the box. (The v1 config's
    prior: its proposals are not truncated to the box, as before problems existed; a problem's
    `ProductPrior` of uniforms truncates them.)"""

    name = "uniform"
    support = None

    def __init__(self, low: float, high: float, dim: int):
        if not low < high:
            raise ValueError(f"uniform prior needs low < high, got low={low!r}, high={high!r}")
        self.low, self.high, self.dim = float(low), float(high), int(dim)
        self.mean = np.full(self.dim, 0.5 * (self.low + self.high))
        self.std = np.full(self.dim, (self.high - self.low) / math.sqrt(12.0))
        self._log_density = -self.dim * math.log(self.high - self.low)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.uniform(self.low, self.high, size=(n, self.dim))

    def log_prob(self, theta: np.ndarray) -> np.ndarray:
        theta = np.asarray(theta)
        inside = np.all((theta >= self.low) & (theta <= self.high), axis=-1)
        return np.where(inside, self._log_density, -np.inf)

    def log_prob_t(self, theta: torch.Tensor) -> torch.Tensor:
        import torch

        inside = ((theta >= self.low) & (theta <= self.high)).all(-1)
        value = torch.full(inside.shape, self._log_density, dtype=theta.dtype)
        return torch.where(inside, value, torch.full_like(value, -math.inf)) + 0.0 * theta.sum(-1)


PRIORS: dict[str, type] = {"normal": NormalPrior, "uniform": UniformPrior}

Prior = NormalPrior | UniformPrior


def make_prior(cfg, dim: int) -> Prior:
    """Build the prior named by ``cfg.name`` (a PriorConfig) for a ``dim``-dimensional theta."""
    if cfg.name == "normal":
        return NormalPrior(cfg.loc, cfg.scale, dim)
    if cfg.name == "uniform":
        return UniformPrior(cfg.low, cfg.high, dim)
    raise ValueError(f"unknown prior {cfg.name!r}; known: {sorted(PRIORS)}")
