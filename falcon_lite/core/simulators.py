"""Simulators, by registered name: ``gaussian`` (x = z + noise) and ``exp_noise`` (x = exp(z) + noise).

A simulator has ``dim``, ``sigma`` (the observation noise's standard deviation), ``x_obs`` (D,),
``__call__(theta (n, D), rng) -> x (n, D)`` and ``true_posterior(prior) -> (mean (D,), std (D,))``,
the reference the diagnostics compare the learned posterior against. Noise only from the
``np.random.Generator`` passed in.
"""

from __future__ import annotations

import math

import numpy as np


class GaussianSimulator:
    """x = z + sigma * eps, eps ~ N(0, I), any dimension.

    True posterior: for a normal prior N(m0, s0^2) the exact conjugate normal,
    precision 1/s0^2 + 1/sigma^2, mean (m0/s0^2 + x_obs/sigma^2) / precision; for a uniform
    prior N(x_obs, sigma^2) (the truncation is ignored: x_obs must lie well inside the box).
    """

    name = "gaussian"
    residual_base = "identity"  # x = z + noise: the mean is its own inverse

    def __init__(self, x_obs, sigma: float):
        self.x_obs = np.asarray(x_obs, dtype=np.float64).reshape(-1)
        self.sigma = float(sigma)
        self.dim = self.x_obs.size

    def __call__(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return theta + self.sigma * rng.standard_normal(theta.shape)

    def true_posterior(self, prior) -> tuple[np.ndarray, np.ndarray]:
        if prior.name == "normal":
            precision = 1.0 / prior.scale**2 + 1.0 / self.sigma**2
            mean = (prior.loc / prior.scale**2 + self.x_obs / self.sigma**2) / precision
            return mean, np.full(self.dim, math.sqrt(1.0 / precision))
        if prior.name == "uniform":
            if np.any(self.x_obs - 10 * self.sigma < prior.low) or np.any(self.x_obs + 10 * self.sigma > prior.high):
                raise ValueError("gaussian true posterior under a uniform prior needs x_obs well inside the box")
            return self.x_obs.copy(), np.full(self.dim, self.sigma)
        raise ValueError(f"no true posterior for prior {prior.name!r}")


class ExpNoiseSimulator:
    """x = exp(z) + sigma * eps (falcon's example 04: z_true = [-5, 0, 5], x_obs = exp(z_true)).

    True posterior by the delta method (the likelihood dominates any reasonable prior):
    mean log(x_obs), std sigma / x_obs.
    """

    name = "exp_noise"
    residual_base = "log"  # the inverse of the mean: z = log(x) - noise / x + ...

    def __init__(self, x_obs, sigma: float):
        self.x_obs = np.asarray(x_obs, dtype=np.float64).reshape(-1)
        if np.any(self.x_obs <= 0):
            raise ValueError("exp_noise needs every x_obs > 0 (x = exp(z) + noise)")
        self.sigma = float(sigma)
        self.dim = self.x_obs.size

    def __call__(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.exp(theta) + self.sigma * rng.standard_normal(theta.shape)

    def true_posterior(self, prior) -> tuple[np.ndarray, np.ndarray]:
        return np.log(self.x_obs), self.sigma / self.x_obs


SIMULATORS: dict[str, type] = {"gaussian": GaussianSimulator, "exp_noise": ExpNoiseSimulator}

Simulator = GaussianSimulator | ExpNoiseSimulator


def make_simulator(cfg) -> Simulator:
    """Build the simulator named by ``cfg.name`` (a SimulatorConfig) with its x_obs and sigma_obs."""
    try:
        cls = SIMULATORS[cfg.name]
    except KeyError:
        raise ValueError(f"unknown simulator {cfg.name!r}; known: {sorted(SIMULATORS)}") from None
    return cls(cfg.x_obs, cfg.sigma_obs)
