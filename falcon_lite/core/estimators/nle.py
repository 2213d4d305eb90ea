"""``gaussian_nle``: the seed's neural likelihood estimator, with a Laplace posterior.

p(x | theta) = N(g(theta), diag(exp(log_var))): an MLP mean g trained by MSE on (theta, x)
pairs, and an EMA variance of the x residuals (the same ``GaussianHead`` as the NPE, roles
swapped). The posterior for the proposal is Laplace's approximation of
prior(theta) * likelihood(x_obs | theta): the MAP of

    f(theta) = -log prior(theta) + 0.5 * sum_d (x_obs - g(theta))_d^2 / var_d

found by damped Newton steps (the Hessian from ``torch.autograd.functional.hessian``; the
Gauss-Newton matrix J^T diag(1/var) J + prior curvature where the Hessian is not positive
definite), started from the previous MAP (kept in the state dict) or the prior mean, until the
Newton decrement grad^T H^-1 grad falls below 1e-12; the posterior variance is the diagonal of
the inverse of that matrix at the MAP.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.autograd.functional import hessian, jacobian

from falcon_lite.core.estimators.common import gaussian_sample, head_from_config

MAX_NEWTON_STEPS = 50
NEWTON_DECREMENT_TOL = 1e-12  # stop when grad^T H^-1 grad (twice the predicted gain, nats) is below


class GaussianNLE(nn.Module):
    """Likelihood estimator x ~ N(g(theta), var) whose posterior is a Laplace approximation."""

    amortized = False  # each posterior is a MAP search, warm-started from the last one

    def __init__(self, cfg, dim: int, prior, generator: torch.Generator | None = None, *,
                 residual_base: str = "identity", x_shape: tuple[int, ...] | None = None, embedding_plugin=None):
        """`residual_base`: the simulator's known inverse, which a likelihood's head (theta -> x)
        does not use: ``residual_base = "auto"`` is the identity here. A likelihood models the raw
        x: it takes x of ``dim`` values only, and no embedding."""
        super().__init__()
        del residual_base, embedding_plugin
        if x_shape is not None and tuple(x_shape) != (dim,):
            raise ValueError(f"gaussian_nle models x of as many values as theta ({dim}), got x of shape "
                             f"{tuple(x_shape)}: use gaussian_ema")
        if cfg.embedding.name != "identity":
            raise ValueError("gaussian_nle models the raw x: estimator.embedding must be identity")
        self.dim, self.prior = dim, prior
        self.importance_weighting = cfg.importance_weighting
        self.variance_source = cfg.variance_source
        self.head = head_from_config(cfg, dim, generator)
        self.register_buffer("map_theta", torch.as_tensor(prior.mean, dtype=self.head.dtype).clone())
        self.register_buffer("has_map", torch.zeros((), dtype=torch.bool))
        self.extra_stats: dict = {}

    @staticmethod
    def pair(theta: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(input, output) of the regression: theta -> x."""
        return theta, x

    def _objective(self, x_obs: torch.Tensor):
        precision = torch.exp(-self.head.log_var.detach())

        def f(theta: torch.Tensor) -> torch.Tensor:
            r = x_obs - self.head.mean(theta[None])[0]
            return 0.5 * (r * r * precision).sum() - self.prior.log_prob_t(theta[None])[0]

        return f, precision

    def _curvature(self, f, theta: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
        """The Hessian of f at theta if positive definite, else the Gauss-Newton matrix."""
        h = hessian(f, theta)
        if torch.isfinite(h).all() and torch.linalg.cholesky_ex(h).info == 0:
            return h
        jac = jacobian(lambda t: self.head.mean(t[None])[0], theta)
        gn = jac.T @ (precision[:, None] * jac)
        prior_std = getattr(self.prior, "scale", None)
        if prior_std is not None:
            gn = gn + torch.eye(self.dim, dtype=gn.dtype) / prior_std**2
        return gn + torch.eye(self.dim, dtype=gn.dtype) * 1e-12 * gn.diagonal().abs().max().clamp_min(1.0)

    def laplace(self, x_obs: np.ndarray, start: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(MAP (D,), Laplace variance (D,)) for one observation, by damped Newton steps."""
        x_t = torch.as_tensor(np.asarray(x_obs), dtype=self.head.dtype).reshape(self.dim)
        theta = (self.map_theta if start is None else start).detach().clone()
        f, precision = self._objective(x_t)
        with torch.enable_grad():
            value = f(theta).detach()
            curvature = None  # the curvature at the current theta, once computed
            for _ in range(MAX_NEWTON_STEPS):
                grad = jacobian(f, theta)
                curvature = self._curvature(f, theta, precision)
                try:
                    step = torch.linalg.solve(curvature, grad)
                except torch.linalg.LinAlgError:
                    break  # singular curvature: keep the best point found so far
                if float(grad @ step) < NEWTON_DECREMENT_TOL:
                    break  # predicted gain negligible: theta is the MAP (a warm start usually is)
                t, accepted = 1.0, False
                while t > 1e-12:
                    candidate = theta - t * step
                    new_value = f(candidate).detach()
                    if torch.isfinite(new_value) and new_value <= value:
                        accepted = True
                        break
                    t *= 0.5
                if not accepted:
                    break
                moved = (t * step).abs().max()
                theta, value, curvature = candidate, new_value, None
                if moved <= 1e-13 * (1.0 + theta.abs().max()):
                    break
            if curvature is None:
                curvature = self._curvature(f, theta, precision)
            try:
                var = torch.linalg.inv(curvature).diagonal()
            except torch.linalg.LinAlgError:
                var = 1.0 / curvature.diagonal()
        return theta.detach(), var.detach()

    def posterior(self, x_obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean (D,), var (D,)) of the Laplace posterior at x_obs; remembers the MAP as next start."""
        start = self.map_theta if bool(self.has_map) else torch.as_tensor(self.prior.mean, dtype=self.head.dtype)
        theta, var = self.laplace(x_obs, start)
        with torch.no_grad():
            self.map_theta.copy_(theta)
            self.has_map.fill_(True)
        return theta.to(torch.float64).numpy().copy(), var.to(torch.float64).numpy().copy()

    def posterior_batch(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Laplace means and variances (n, D) at every row of x, each from the prior mean."""
        start = torch.as_tensor(self.prior.mean, dtype=self.head.dtype)
        rows = [self.laplace(row, start) for row in np.asarray(x).reshape(-1, self.dim)]
        mean = torch.stack([m for m, _ in rows]).to(torch.float64).numpy()
        var = torch.stack([v for _, v in rows]).to(torch.float64).numpy()
        return mean, var

    def sample(self, x_obs: np.ndarray, n: int, generator: torch.Generator) -> np.ndarray:
        """n draws (n, D) from the Laplace posterior at x_obs."""
        return gaussian_sample(*self.posterior(x_obs), n, generator)
