"""The tempered proposal and how a step's parameters are drawn.

``TemperedProposal(mean, var, T)`` is N(mean, var * T) independently per dim: the learned
posterior at x_obs, widened by the temperature. Given a support box (``low``, ``high``: a
prior's `support`, where the prior is bounded), it is that Gaussian truncated to the box:
draws outside are drawn again, and its density is the Gaussian's divided by its mass in the
box, Z = prod_d (Phi(b_d) - Phi(a_d)) (zero outside). ``draw_parameters`` puts the prior share first
(origin 0) and the proposal rows after (origin 1), from separate generators, so two runs that
differ only in prior_fraction share their draws where they can.
"""

from __future__ import annotations

import math

import numpy as np

from falcon_lite.core.policy import Origin


MIN_MASS = 1e-9  # a truncated proposal with less of its mass in the box cannot be drawn from


class TemperedProposal:
    """theta_d ~ N(mean_d, var_d * temperature), independently per dim (truncated to a box if given)."""

    def __init__(self, mean, var, temperature: float, support: tuple[np.ndarray, np.ndarray] | None = None):
        self.mean = np.asarray(mean, dtype=np.float64).reshape(-1)
        self.var = np.asarray(var, dtype=np.float64).reshape(-1)
        if self.mean.shape != self.var.shape:
            raise ValueError(f"proposal mean {self.mean.shape} and var {self.var.shape} differ in shape")
        if not temperature > 0:
            raise ValueError(f"proposal temperature must be > 0, got {temperature!r}")
        # one finite sum covers nan/inf in either; min > 0 the sign (built every step: keep it short)
        if not (math.isfinite(float(self.mean.sum() + self.var.sum())) and self.var.min() > 0):
            raise ValueError(f"proposal needs a finite mean and a finite positive variance, "
                             f"got mean={self.mean.tolist()}, var={self.var.tolist()}")
        self.temperature = float(temperature)
        self.std = np.sqrt(self.var * self.temperature)
        self._norm = float(np.sum(np.log(self.std))) + 0.5 * self.mean.size * math.log(2 * math.pi)
        self.support = support
        if support is not None:
            self.mass = _box_mass(self.mean, self.std, *support)
            if not self.mass >= MIN_MASS:
                raise ValueError(f"the proposal N({self.mean.tolist()}, std {self.std.tolist()}) has mass "
                                 f"{self.mass:.3g} inside the prior's support: nothing to draw")
            self._norm += math.log(self.mass)

    @property
    def dim(self) -> int:
        return self.mean.size

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if self.support is None:
            return self.mean + self.std * rng.standard_normal((n, self.dim))
        low, high = self.support
        kept: list[np.ndarray] = []
        found = 0
        while found < n:  # rejection: about n / mass draws in all
            size = max(16, math.ceil(1.2 * (n - found) / self.mass))
            draws = self.mean + self.std * rng.standard_normal((size, self.dim))
            draws = draws[np.all((draws >= low) & (draws <= high), axis=1)]
            kept.append(draws)
            found += len(draws)
        return np.concatenate(kept)[:n]

    def log_prob(self, theta: np.ndarray) -> np.ndarray:
        theta = np.asarray(theta)
        u = (theta - self.mean) / self.std
        density = -0.5 * np.sum(u * u, axis=-1) - self._norm
        if self.support is None:
            return density
        inside = np.all((theta >= self.support[0]) & (theta <= self.support[1]), axis=-1)
        return np.where(inside, density, -np.inf)


def _box_mass(mean: np.ndarray, std: np.ndarray, low: np.ndarray, high: np.ndarray) -> float:
    """The mass of N(mean, diag(std^2)) in the box [low, high] (bounds may be infinite)."""
    mass = 1.0
    for m, s, a, b in zip(mean.tolist(), std.tolist(), np.broadcast_to(low, mean.shape).tolist(),
                          np.broadcast_to(high, mean.shape).tolist()):
        mass *= 0.5 * (math.erf((b - m) / (s * math.sqrt(2))) - math.erf((a - m) / (s * math.sqrt(2))))
    return mass


def draw_parameters(prior, proposal: TemperedProposal | None, n: int, n_prior: int,
                    rng_prior: np.random.Generator | None, rng_proposal: np.random.Generator | None):
    """Draw n parameters: n_prior from the prior, then n - n_prior from the proposal.

    With ``proposal=None`` (warm-up) all n come from the prior. A generator that draws
    nothing may be None. Returns ``(theta (n, D),
    origin (n,) int8, log_q (n,), log_prior (n,))`` where log_q is the log density of the
    distribution each row was drawn from (log_prior for prior rows).
    """
    if not 0 <= n_prior <= n:
        raise ValueError(f"n_prior must be in [0, n={n}], got {n_prior}")
    if proposal is None:
        n_prior = n
    if n_prior == n:
        theta = prior.sample(n, rng_prior)
    elif n_prior == 0:
        theta = proposal.sample(n, rng_proposal)
    else:
        theta = np.concatenate([prior.sample(n_prior, rng_prior), proposal.sample(n - n_prior, rng_proposal)])
    origin = np.full(n, int(Origin.PROPOSAL), dtype=np.int8)
    origin[:n_prior] = int(Origin.PRIOR)
    log_prior = prior.log_prob(theta)
    log_q = log_prior.copy()
    if n > n_prior:
        log_q[n_prior:] = proposal.log_prob(theta[n_prior:])
    return theta, origin, log_q, log_prior


def disfavour_mask(log_q_drawn: np.ndarray, log_q_now: np.ndarray, threshold: float,
                   origin: np.ndarray | None = None) -> np.ndarray:
    """bool (n,): rows whose log q_now - log q_drawn < threshold (only proposal rows if origin given)."""
    mask = (np.asarray(log_q_now) - np.asarray(log_q_drawn)) < threshold
    if origin is not None:
        mask &= np.asarray(origin) == int(Origin.PROPOSAL)
    return mask
