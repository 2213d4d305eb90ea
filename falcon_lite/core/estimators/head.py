"""A Gaussian regression head: the shared piece of both estimators.

It regresses an output ``out`` (n, D) on an input ``inp`` (n, D) with a diagonal Gaussian error:
``out ~ N(mean(inp), diag(exp(log_var)))``. The NPE estimator uses it with (inp, out) = (x, theta),
the NLE estimator with (theta, x). Options compose inside ``mean``:

- ``normalize``: the MLP sees ``(inp - in_mean) / in_std`` and predicts the standardised target
  ``(t - out_mean) / out_std``; all four statistics are running EMAs (momentum ``ema_momentum``,
  set directly by the first batch) updated by ``observe`` from each training batch. With
  ``center_output=False`` out_mean stays 0 and out_std is the root mean square of t: for a
  residual target, whose mean is known to be ~0, the running batch mean is pure noise that
  would move the predicted mean by more than a narrow posterior's width;
- ``residual``: the target is ``t = out - base(inp)`` and ``mean(inp) = base(inp) + r(inp)``; r's
  last layer starts near zero (scaled by 1e-3, not exactly zero, so every parameter gets a
  gradient). ``base`` is the identity, or ``log`` (``residual_base="log"``, for x = exp(z) + noise;
  inputs are clamped to at least 1e-300 first), and r is counted in the base's slope,
  ``mean = log(x) + r(x) / x``, so that the noise on x is the same size in the target of every
  row (the delta method: dz = dx / x) and the loss weighs rows alike; the EMA variance is
  then kept in that unit too, and the predicted variance at x is ``exp(log_var) / x^2``;
- ``loss="mse"`` (default): loss = weighted mean over rows of the mean over dims of
  ``(out - mean)^2`` (divided by ``out_std^2`` under ``normalize``, i.e. the MSE in standardised
  units); the variance is then an EMA, ``update_variance``:
  ``log_var <- (1 - m) log_var + m log(sum_i w_i (out_i - mean_i)^2)`` per dim, without grad,
  ``w_i = 1/n`` unless importance weights are given; initial ``log_var = 0``;
- ``loss="nll"``: ``log_var`` is a trainable parameter and the loss is the Gaussian NLL
  ``mean over dims of 0.5 * ((out - mean)^2 / exp(log_var) + log_var)`` (no EMA).
"""

from __future__ import annotations

import math

import torch
from torch import nn

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}
DTYPES = {"float64": torch.float64, "float32": torch.float32}
_TINY_STD = 1e-30


def mlp(dim_in: int, hidden: list[int], dim_out: int, activation: str, dtype: torch.dtype) -> nn.Sequential:
    """dim_in -> hidden[0] -> act -> ... -> hidden[-1] -> act -> dim_out."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; known: {sorted(ACTIVATIONS)}")
    layers: list[nn.Module] = []
    width = dim_in
    for h in hidden:
        layers += [nn.Linear(width, h, dtype=dtype), ACTIVATIONS[activation]()]
        width = h
    layers.append(nn.Linear(width, dim_out, dtype=dtype))
    return nn.Sequential(*layers)


def init_from(net: nn.Sequential, generator: torch.Generator) -> None:
    """Re-draw every Linear layer like torch's default init, but from `generator`."""
    with torch.no_grad():
        for layer in net:
            if isinstance(layer, nn.Linear):
                bound = 1.0 / math.sqrt(layer.in_features)
                for p in (layer.weight, layer.bias):
                    p.copy_(torch.rand(p.shape, generator=generator, dtype=p.dtype) * 2 * bound - bound)


class GaussianHead(nn.Module):
    """out ~ N(mean(inp), diag(exp(log_var))), see the module docstring for the options."""

    def __init__(self, dim: int, hidden: list[int], activation: str = "tanh", dtype: str = "float64",
                 ema_momentum: float = 0.01, normalize: bool = False, residual: bool = False,
                 loss: str = "mse", generator: torch.Generator | None = None, residual_base: str = "identity",
                 center_output: bool = True, in_dim: int | None = None):
        """`dim`: the output's size; `in_dim`: the input's (default `dim`)."""
        super().__init__()
        in_dim = dim if in_dim is None else in_dim
        if residual and in_dim != dim:
            raise ValueError(f"a residual head needs an input of the output's size ({dim}), got {in_dim}: "
                             "the known inverse maps x to theta value by value")
        if loss not in ("mse", "nll"):
            raise ValueError(f"unknown loss {loss!r}; known: ['mse', 'nll']")
        self.dtype = DTYPES[dtype]
        self.dim, self.momentum = dim, float(ema_momentum)
        self.normalize, self.residual, self.nll = normalize, residual, loss == "nll"
        if residual_base not in ("identity", "log"):
            raise ValueError(f"unknown residual_base {residual_base!r}; known: ['identity', 'log']")
        self.log_base = residual_base == "log"
        self.center_output = center_output
        self.net = mlp(in_dim, hidden, dim, activation, self.dtype)
        if generator is not None:
            init_from(self.net, generator)
        if residual:
            with torch.no_grad():
                self.net[-1].weight.mul_(1e-3)
                self.net[-1].bias.mul_(1e-3)
        zeros = torch.zeros(dim, dtype=self.dtype)
        if self.nll:
            self.log_var = nn.Parameter(zeros.clone())
        else:
            self.register_buffer("log_var", zeros.clone())
        if normalize:
            for name, init, size in (("in_mean", 0.0, in_dim), ("in_std", 1.0, in_dim), ("out_mean", 0.0, dim),
                                     ("out_std", 1.0, dim)):
                self.register_buffer(name, torch.full((size,), init, dtype=self.dtype))
            self.register_buffer("norm_count", torch.zeros((), dtype=torch.long))

    def mean(self, inp: torch.Tensor) -> torch.Tensor:
        """(n, in_dim) -> (n, D): the predicted mean of out."""
        h = (inp - self.in_mean) / self.in_std if self.normalize else inp
        u = self.net(h)
        if self.normalize:
            u = self.out_mean + self.out_std * u
        return self.base(inp) + self.unit(inp) * u if self.residual else u

    def base(self, inp: torch.Tensor) -> torch.Tensor:
        """The known part of the mean that the residual is taken around."""
        return torch.log(inp.clamp_min(1e-300)) if self.log_base else inp

    def unit(self, inp: torch.Tensor) -> torch.Tensor | float:
        """The residual's unit: the base's slope, so that additive noise on the input is
        the same size in every row (for log: d log x = dx / x)."""
        return 1.0 / inp.clamp_min(1e-300) if self.log_base else 1.0

    def observe(self, inp: torch.Tensor, out: torch.Tensor) -> None:
        """Update the running standardisation statistics from one batch (no-op without normalize)."""
        if not self.normalize:
            return
        with torch.no_grad():
            target = (out - self.base(inp)) / self.unit(inp) if self.residual else out
            m = 1.0 if int(self.norm_count) == 0 else self.momentum
            for (mean, std), values in (((self.in_mean, self.in_std), inp), ((self.out_mean, self.out_std), target)):
                if self.center_output or mean is self.in_mean:
                    mean.mul_(1 - m).add_(values.mean(0), alpha=m)
                    spread = values.std(0, unbiased=False)
                else:  # out_mean stays 0; the scale is the root mean square
                    spread = values.square().mean(0).sqrt()
                std.mul_(1 - m).add_(spread.clamp_min(_TINY_STD), alpha=m)
            self.norm_count += 1

    def loss(self, inp: torch.Tensor, out: torch.Tensor, w: torch.Tensor | None = None):
        """The training loss (scalar) and the detached residuals out - mean(inp) (n, D).

        ``w`` (n,), if given, are self-normalised row weights (summing to one).
        """
        r = out - self.mean(inp)
        if self.nll:
            terms = 0.5 * (r * r * torch.exp(-self.log_var) + self.log_var)
        else:
            s = r / self.unit(inp) if self.residual else r
            s = s / self.out_std if self.normalize else s
            terms = s * s
        # unweighted: the mean over rows of the mean over dims is the mean of all terms
        loss = terms.mean() if w is None else (w * terms.mean(-1)).sum()
        return loss, self.in_units(inp, r.detach())

    def in_units(self, inp: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """Residuals out - mean in the residual's unit (unchanged unless residual_base="log"):
        what the variance EMA averages, alike in every row."""
        return r / self.unit(inp) if self.residual and self.log_base else r

    def variance(self, inp: torch.Tensor) -> torch.Tensor:
        """The predicted variance of out at each row of inp (n, D): exp(log_var), times the
        residual unit squared under residual_base="log" (the width scales as 1 / x)."""
        var = torch.exp(self.log_var).expand(len(inp), self.dim)
        if self.residual and self.log_base:
            var = var * self.unit(inp) ** 2
        return var

    def update_variance(self, r: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        """EMA step of log_var from detached residuals r (n, D); returns the batch log-variance (D,).

        Under ``loss="nll"`` log_var is trained by the optimizer and is left alone here. (No
        ``no_grad`` needed: r is detached and the EMA buffer does not require grad.)
        """
        r2 = (r * r).mean(0) if w is None else (w[:, None] * r * r).sum(0)
        batch_log_var = torch.log(r2)
        if not self.nll:
            self.log_var.mul_(1 - self.momentum).add_(batch_log_var, alpha=self.momentum)
        return batch_log_var
