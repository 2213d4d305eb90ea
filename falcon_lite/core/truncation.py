"""The truncated prior (TSNPE, Deistler et al. 2022): the prior restricted to the highest-density
region of the current posterior estimate q(theta | x_obs).

The region holds 1 - eps of q's mass at x_obs:

    HPR = {theta : log q(theta | x_obs) >= tau},   tau = the eps-quantile of log q(theta' | x_obs),
    theta' ~ q(. | x_obs)   (`hpd_threshold`, from `draws` fixed-seed draws: a function of the weights)

and the proposal is the prior inside it, p~(theta) = p(theta) 1[theta in HPR] / Z, Z = P_prior(HPR).
`TruncatedPrior.sample` draws from the prior and keeps the draws inside (rejection); Z is
estimated by the share kept over all the draws of that call, so the stored log density of a row
is log p(theta) - log Z (`log_prob`; -inf outside the region).

Why plain NPE stays correct: minimising E_{p~(theta) p(x | theta)}[-log q(theta | x)] gives
q(theta | x) = p~(theta) p(x | theta) / p~(x), which at x_obs is p(theta | x_obs) 1[HPR] / P(HPR | x_obs):
the true posterior wherever the region covers it (all but eps of q's mass, so all of the
posterior's as long as q is not overconfident). No proposal density enters the loss, so the
buffer may mix rows of any number of past regions and the prior share (drawn from the untruncated
prior) freely. A Gaussian proposal without a correction instead trains towards the proposal
posterior p(theta | x) q(theta) / p(theta).

Fallback: when fewer than n draws fall in the region within `max_draws` prior draws (the region
holds less than about n / max_draws of the prior's mass: an estimate collapsed or gone astray),
the call draws from the untruncated prior instead (always a valid NPE proposal; log Z = 0) and
sets `fell_back`. Shapes: theta ``(n, D)``; `log_q` maps ``(n, D)`` to ``(n,)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

MAX_DRAWS = 1_000_000  # prior draws one call may spend before it falls back to the prior itself
CHUNK = 1024  # prior draws per rejection round, at least


def hpd_threshold(log_q_draws: np.ndarray, eps: float) -> float:
    """tau: the eps-quantile of log q over draws from q (the region {log q >= tau} holds 1 - eps)."""
    values = np.asarray(log_q_draws, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        raise ValueError("no finite log q among the draws: the region is undefined")
    return float(np.quantile(values, eps))


class TruncatedPrior:
    """The prior restricted to {theta : log_q(theta) >= threshold}; see the module docstring."""

    def __init__(self, prior, log_q: Callable[[np.ndarray], np.ndarray], threshold: float,
                 max_draws: int = MAX_DRAWS):
        self.prior, self.log_q, self.threshold, self.max_draws = prior, log_q, float(threshold), int(max_draws)
        self.log_mass = 0.0  # log Z, as estimated by the last call of `sample`
        self.fell_back = False
        self.drawn = 0  # prior draws the last call made

    @property
    def dim(self) -> int:
        return self.prior.dim

    def inside(self, theta: np.ndarray) -> np.ndarray:
        """bool (n,): whether each row lies in the region (NaN log q counts as outside)."""
        return np.asarray(self.log_q(theta)) >= self.threshold

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n draws (n, D) by rejection from the prior; sets `log_mass` (or falls back, see above)."""
        kept: list[np.ndarray] = []
        found = drawn = 0
        while found < n and drawn < self.max_draws:
            rate = found / drawn if found else 0.0
            size = min(self.max_draws - drawn, max(CHUNK, math.ceil(1.2 * (n - found) / rate) if rate else CHUNK))
            theta = self.prior.sample(size, rng)
            theta = theta[self.inside(theta)]
            kept.append(theta)
            found += len(theta)
            drawn += size
        self.drawn = drawn
        self.fell_back = found < n
        if self.fell_back:
            self.log_mass = 0.0
            return self.prior.sample(n, rng)
        self.log_mass = math.log(found / drawn)
        return np.concatenate(kept)[:n]

    def log_prob(self, theta: np.ndarray) -> np.ndarray:
        """log p~(theta) (n,) = log p(theta) - log Z inside the region, -inf outside (the prior's
        own density after a fallback)."""
        log_p = np.asarray(self.prior.log_prob(theta), dtype=np.float64)
        if self.fell_back:
            return log_p
        return np.where(self.inside(theta), log_p - self.log_mass, -np.inf)
