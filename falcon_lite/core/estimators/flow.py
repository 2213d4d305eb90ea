"""``flow``: a conditional normalizing flow q(theta | x) (zuko's NSF or MAF), trained by NPE.

The flow maps standardised parameters u = (theta - m_theta) / s_theta to a standard normal
z = f(u; c) through ``transforms`` autoregressive transforms (rational-quadratic splines
with ``bins`` bins for ``"nsf"``, affine for ``"maf"``; coupling ones with ``passes = 2``),
each conditioned on the embedded, standardised observation c = e((x - m_x) / s_x)
``(n, features)``: x of any shape, standardised per value, then the ``estimator.embedding``
e (core/embeddings.py: identity = x flattened, mlp, cnn1d or a plugin), trained with the flow. By the change of variables

    log q(theta | x) = log N(f(u; c); 0, I) + log |det df/du| - sum_d log s_theta_d.

Training minimises -sum_i w_i log q(theta_i | x_i) (``loss``; w_i = 1/n, or the
self-normalised importance weights prior/q under ``importance_weighting``). Sampling draws
z ~ N(0, I) from the caller's generator and returns theta = m_theta + s_theta f^-1(z; c).

``normalize``: m and s are running statistics (EMA with ``ema_momentum``, set by the first
batch) of each training batch's theta and x, updated by ``observe`` before the step and kept
in the state dict; without it m = 0 and s = 1. (NSF's splines act on [-5, 5]: standardise.)

The engine's Gaussian view (``posterior``: proposal, diagnostics) is the sample mean and
variance of ``POSTERIOR_DRAWS`` draws at x_obs from a generator seeded with ``MOMENT_SEED``
on every call, so it is a function of the weights alone; ``posterior_batch`` uses
``BATCH_DRAWS`` draws per row. Shapes: theta ``(n, D)``, x ``(n, x_dim)`` (flattened; the
embedding is applied inside), x_obs ``(x_dim,)``. ``log_prob``, ``draw`` and ``sample_and_log_prob``
compute with subnormal floats flushed to zero (core/subnormals.py), as a training step does.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import torch
import zuko
from torch import nn

from falcon_lite.core import embeddings
from falcon_lite.core.estimators.head import ACTIVATIONS, DTYPES
from falcon_lite.core.subnormals import flushes_subnormals

POSTERIOR_DRAWS = 1000  # draws behind the (mean, var) at x_obs
BATCH_DRAWS = 32  # draws per row behind posterior_batch (the engine's held-out checks, every step)
MOMENT_SEED = 0  # the fixed seed of those draws
_TINY_STD = 1e-30
SLOPE = 1e-3  # the splines' minimum slope (zuko's NSF default)


def _bin_shares(v: torch.Tensor) -> torch.Tensor:
    """softmax over the last dimension (the bins), written as exp / sum: the same numbers to
    rounding, and on the CPU several times faster than torch's softmax over a last dimension of
    ~10 (a softmax over the first dimension of a transposed copy is faster still, but leaves the
    knots strided and the spline's own ops slower; bench/flow_step.py)."""
    e = torch.exp(v - v.amax(dim=-1, keepdim=True))
    return e / e.sum(dim=-1, keepdim=True)


class Spline(zuko.transforms.MonotonicRQSTransform):
    """zuko's monotonic rational-quadratic spline (Durkan et al. 2019) with its knots built
    faster: the flow rebuilds every spline on every call, and torch's softmax over the bins took
    a third of a bench run's time. The knots are the ones zuko's constructor builds from the same
    unconstrained widths, heights and derivatives (the parametrisation a stored flow's weights
    mean): each squashed by v / (1 + |a v|), a = 2 / log(slope) (1 / log(slope) for the
    derivatives), widths and heights turned into bin shares, their cumulative sums scaled to
    [-bound, bound], and the derivatives exponentiated with 1 at both ends. Evaluation and
    inversion are zuko's."""

    def __init__(self, widths: torch.Tensor, heights: torch.Tensor, derivatives: torch.Tensor,
                 bound: float = 5.0, slope: float = SLOPE, **kwargs) -> None:
        torch.distributions.Transform.__init__(self, **kwargs)
        log_slope = math.log(slope)
        knots = []
        for v in (widths, heights):
            shares = _bin_shares(v / (1 + abs(2 * v / log_slope)))
            edges = torch.cumsum(nn.functional.pad(shares, (1, 0)), dim=-1)
            knots.append(bound * (2 * edges - 1))
        self.horizontal, self.vertical = knots
        self.derivatives = torch.exp(nn.functional.pad(derivatives / (1 + abs(derivatives / log_slope)), (1, 1)))


def _nsf(features: int, context: int, bins: int = 8, **kwargs) -> zuko.flows.MAF:
    """zuko's NSF (the same modules, so the same weights and state dict) with `Spline`."""
    return zuko.flows.MAF(features, context, univariate=partial(Spline, slope=SLOPE),
                          shapes=[(bins,), (bins,), (bins - 1,)], **kwargs)


FLOWS = {"nsf": _nsf, "maf": zuko.flows.MAF}


def build_flow(kind: str, dim: int, x_dim: int, transforms: int, hidden: list[int], activation: str,
               bins: int, dtype: torch.dtype, generator: torch.Generator | None, passes: int | None = None) -> nn.Module:
    """zuko's conditional flow over ``dim`` features with ``x_dim`` context features; `passes`
    (zuko's): None is fully autoregressive, 2 a coupling flow.

    zuko initialises from torch's global generator: with `generator`, the construction runs
    in a forked global state seeded from it, so the weights follow the generator alone.
    """
    kwargs = {"hidden_features": list(hidden), "activation": ACTIVATIONS[activation]}
    if passes is not None:  # (not passed otherwise: zuko's default, and the old numbers)
        kwargs["passes"] = passes
    if kind == "nsf":
        kwargs["bins"] = bins
    if generator is None:
        return FLOWS[kind](dim, x_dim, transforms=transforms, **kwargs).to(dtype)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(2**62, (), generator=generator)))
        return FLOWS[kind](dim, x_dim, transforms=transforms, **kwargs).to(dtype)


class FlowPosterior(nn.Module):
    """q(theta | x) as a conditional normalizing flow; see the module docstring."""

    amortized = True  # its posterior at any x is a pass of the flow

    def __init__(self, cfg, dim: int, prior, generator: torch.Generator | None = None, *,
                 residual_base: str = "identity", x_dim: int | None = None,
                 x_shape: tuple[int, ...] | None = None, embedding_plugin=None):
        """`residual_base` is not used (a flow takes no residual); `x_dim`: x's value count
        (None: ``dim``, as for the built-in simulators), or `x_shape`: the shape of one x (x_dim =
        its size); `embedding_plugin`: the factory of the plugin embedding ``cfg.embedding`` names."""
        super().__init__()
        del prior, residual_base
        if x_shape is not None:
            size = math.prod(x_shape)
            if x_dim is not None and x_dim != size:
                raise ValueError(f"x_dim={x_dim} and x_shape={tuple(x_shape)} disagree")
            x_dim = size
        self.dim, self.x_dim = dim, dim if x_dim is None else x_dim
        self.x_shape = (self.x_dim,) if x_shape is None else tuple(x_shape)
        self.dtype = DTYPES[cfg.dtype]
        self.importance_weighting = cfg.importance_weighting
        self.variance_source = cfg.variance_source
        self.normalize, self.momentum = cfg.normalize, float(cfg.ema_momentum)
        features = embeddings.features_of(cfg.embedding, self.x_shape)
        made = None
        if features is None:  # a plugin: its size is known once it is built
            made = embeddings.build(cfg.embedding, self.x_shape, cfg.activation, self.dtype, generator,
                                    embedding_plugin)
            features = made.features
        self.flow = build_flow(cfg.flow, dim, features, cfg.transforms, list(cfg.hidden), cfg.activation,
                               cfg.bins, self.dtype, generator, cfg.passes)
        # after the flow, so that a flow on x itself (identity: no weights) keeps its numbers
        self.embedding = made or embeddings.build(cfg.embedding, self.x_shape, cfg.activation, self.dtype,
                                                  generator)
        self._flat = isinstance(self.embedding, embeddings.Flatten)  # identity: the flow reads x as it is
        for name, size, init in (("theta_mean", dim, 0.0), ("theta_std", dim, 1.0),
                                 ("x_mean", self.x_dim, 0.0), ("x_std", self.x_dim, 1.0)):
            self.register_buffer(name, torch.full((size,), init, dtype=self.dtype))
        self.register_buffer("norm_count", torch.zeros((), dtype=torch.long))
        self.extra_stats: dict = {}

    @property
    def device(self) -> torch.device:
        return self.theta_mean.device

    def _theta_x(self, theta, x) -> tuple[torch.Tensor, torch.Tensor]:
        theta = torch.as_tensor(theta, dtype=self.dtype).reshape(-1, self.dim)
        return theta, torch.as_tensor(x, dtype=self.dtype).reshape(-1, self.x_dim)

    def observe(self, theta: torch.Tensor, x: torch.Tensor) -> None:
        """Update the running standardisation of theta and x from one batch (no-op without normalize)."""
        if not self.normalize:
            return
        with torch.no_grad():
            m = 1.0 if int(self.norm_count) == 0 else self.momentum
            for mean, std, values in ((self.theta_mean, self.theta_std, theta), (self.x_mean, self.x_std, x)):
                mean.mul_(1 - m).add_(values.mean(0), alpha=m)
                std.mul_(1 - m).add_(values.std(0, unbiased=False).clamp_min(_TINY_STD), alpha=m)
            self.norm_count += 1

    @flushes_subnormals
    def log_prob(self, theta, x) -> torch.Tensor:
        """log q(theta_i | x_i) ``(n,)`` for theta ``(n, D)`` and x ``(n, x_dim)`` (differentiable)."""
        theta, x = self._theta_x(theta, x)
        u = (theta - self.theta_mean) / self.theta_std
        return self.flow(self._context(x)).log_prob(u) - torch.log(self.theta_std).sum()

    def _context(self, x: torch.Tensor) -> torch.Tensor:
        """What the flow is conditioned on: x ``(m, x_dim)`` standardised, then embedded ``(m, features)``."""
        c = (x - self.x_mean) / self.x_std
        return c if self._flat else self.embedding(c.reshape(len(c), *self.x_shape))

    def loss(self, theta: torch.Tensor, x: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        """-mean_i log q(theta_i | x_i), or -sum_i w_i log q(theta_i | x_i) with weights w ``(n,)``."""
        log_q = self.log_prob(theta, x)
        return -log_q.mean() if w is None else -(w * log_q).sum()

    @flushes_subnormals
    @torch.no_grad()
    def draw(self, x: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
        """``(n, m, D)`` draws: n per row of x ``(m, x_dim)`` (the noise in float64, then the flow's dtype)."""
        z = self._noise(n, x.shape[0], generator)
        # the context (m, features) broadcasts against z (n, m, D): with D = 1 the flow's networks see each
        # row's context once, not n times (the same numbers as an expanded c)
        u = self.flow(self._context(x)).transform.inv(z)  # the base is N(0, I): z is a draw from it
        return self.theta_mean + self.theta_std * u

    def sample(self, x_obs: np.ndarray, n: int, generator: torch.Generator) -> np.ndarray:
        """n draws ``(n, D)`` (float64) from q(theta | x_obs)."""
        _, x = self._theta_x(np.zeros(self.dim), x_obs)
        return self.draw(x, n, generator)[:, 0].to(torch.float64).numpy()

    @flushes_subnormals
    @torch.no_grad()
    def sample_and_log_prob(self, x_obs: np.ndarray, n: int, generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
        """`sample`'s n draws ``(n, D)`` with their log q(theta | x_obs) ``(n,)`` (both float64), in
        one pass of the flow: log q = log N(z) - log |det d u / d z| - sum_d log s_theta_d, the
        Jacobian of the inverse pass that made the draw (the same as `log_prob` to rounding)."""
        _, x = self._theta_x(np.zeros(self.dim), x_obs)
        z = self._noise(n, 1, generator)
        flow = self.flow(self._context(x))
        u, ladj = flow.transform.inv.call_and_ladj(z)
        log_q = flow.base.log_prob(z) - ladj - torch.log(self.theta_std).sum()
        theta = self.theta_mean + self.theta_std * u
        return theta[:, 0].to(torch.float64).numpy(), log_q[:, 0].to(torch.float64).numpy()

    def _noise(self, n: int, m: int, generator: torch.Generator) -> torch.Tensor:
        """z ``(n, m, D)`` ~ N(0, I) from `generator` (drawn in float64, then the flow's dtype)."""
        return torch.randn((n, m, self.dim), generator=generator, dtype=torch.float64).to(self.dtype)

    def posterior_batch(self, x: np.ndarray, draws: int = BATCH_DRAWS) -> tuple[np.ndarray, np.ndarray]:
        """Sample means and variances ``(m, D)`` of q(theta | x_i) at every row of x ``(m, x_dim)``."""
        x_t = torch.as_tensor(np.asarray(x), dtype=self.dtype).reshape(-1, self.x_dim)
        theta = self.draw(x_t, draws, torch.Generator().manual_seed(MOMENT_SEED)).to(torch.float64)
        return theta.mean(0).numpy(), theta.var(0, unbiased=False).numpy()

    def posterior(self, x_obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean (D,), var (D,)) of q(theta | x_obs), from POSTERIOR_DRAWS fixed-seed draws."""
        mean, var = self.posterior_batch(x_obs, POSTERIOR_DRAWS)
        return mean[0], var[0]
