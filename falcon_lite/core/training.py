"""Training as functions: one optimizer step on one batch, then the variance update.

A batch (and the optional validation set) is anything with numpy arrays ``theta (n, D)``,
``x (n, D)``, ``log_q (n,)``, ``log_prior (n,)`` and ``origin (n,)`` (0 = prior, 1 = proposal),
e.g. the store's ``Batch``. With ``importance_weighting`` the rows carry self-normalised weights

    w_i = exp(log_prior_i - log_q_i) / sum_j exp(log_prior_j - log_q_j)

(in log space; prior-origin rows have log_q = log_prior, so raw weight 1), used in the loss and
in the variance EMA; ESS fraction = 1 / (n sum w_i^2). The EMA is fed by the training batch's
residuals from the forward pass of the step (``variance_source="batch"``, the seed's choice), or
by residuals of the updated model on the validation set (``"validation"``; the training batch
when the validation set is empty or missing, reported as ``variance_source_used``), or by the
batch's proposal-origin rows alone (``"proposal"``; all rows when fewer than two are): the
width at x_obs measured where the proposal puts its samples, not over the prior's range.

An estimator that trains on its own density loss (`protocols.DensityEstimator`, the flow) takes
the same optimizer step on ``loss = -sum_i w_i log q(theta_i | x_i)`` (w_i = 1/n without IW),
after ``observe`` has updated its standardisation; it has no variance to update.
"""

from __future__ import annotations

import numpy as np
import torch

from falcon_lite.core.adam import FusedAdam, fused_kernel_supports
from falcon_lite.core.policy import Origin
from falcon_lite.core.protocols import DensityEstimator
from falcon_lite.core.subnormals import flushes_subnormals

Optimizer = FusedAdam | torch.optim.Optimizer


def make_optimizer(est: torch.nn.Module, lr: float, weight_decay: float = 0.0) -> Optimizer:
    """Adam over every parameter of the estimator, with torch's L2 `weight_decay` (added to
    the gradient, as ``torch.optim.Adam(weight_decay=...)``; not AdamW's decoupled decay).

    `FusedAdam` (core/adam.py: torch's fused kernel called directly, the same numbers as
    `torch.optim.Adam(fused=True)`) where it suits the parameters; else torch's fused Adam
    where torch offers it, else its default one (the same update rule).
    """
    params = list(est.parameters())
    if fused_kernel_supports(params):
        return FusedAdam(params, lr=lr, weight_decay=weight_decay)
    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def set_lr(opt: Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group."""
    for group in opt.param_groups:
        group["lr"] = lr


def set_weight_decay(opt: Optimizer, weight_decay: float) -> None:
    """Set the L2 penalty of every parameter group (training.weight_decay = "adaptive")."""
    for group in opt.param_groups:
        group["weight_decay"] = weight_decay


def clear_grads(opt: Optimizer) -> None:
    """`opt.zero_grad(set_to_none=True)` without its profiler and dynamo wrappers (~20x
    cheaper; it runs every step)."""
    for group in opt.param_groups:
        for p in group["params"]:
            p.grad = None


def iw_weights(log_prior: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    """Self-normalised importance weights prior/q (n,), summing to one, computed in log space."""
    log_w = np.asarray(log_prior, dtype=np.float64) - np.asarray(log_q, dtype=np.float64)
    if not np.all(np.isfinite(log_w)):
        raise ValueError("importance weights need finite log_prior - log_q for every row")
    w = np.exp(log_w - log_w.max())
    return w / w.sum()


def device_of(est: torch.nn.Module) -> torch.device:
    """Where the estimator's parameters live (the CPU, or the GPU of ``training.device``): its
    own ``device`` where it says (walking the modules for a parameter costs ~15 calls a step)."""
    found = getattr(type(est), "device", None)
    return est.device if found is not None else next(est.parameters()).device


_DENSITY: dict[type, bool] = {}


def trains_its_own_density(est) -> bool:
    """Whether the estimator is a `DensityEstimator`, checked once per class (a runtime
    protocol's isinstance walks its attributes every time: ~20 calls a step)."""
    kind = type(est)
    found = _DENSITY.get(kind)
    if found is None:
        found = _DENSITY[kind] = isinstance(est, DensityEstimator)
    return found


def _tensors(est, rows, dtype):
    device = device_of(est)
    theta = torch.as_tensor(rows.theta, dtype=dtype, device=device)
    x = torch.as_tensor(rows.x, dtype=dtype, device=device)
    inp, out = est.pair(theta, x)
    w = None
    if est.importance_weighting:
        w = torch.as_tensor(iw_weights(rows.log_prior, rows.log_q), dtype=dtype, device=device)
    return inp, out, w


@flushes_subnormals
def train_step(est, opt: Optimizer, batch, validation=None) -> dict:
    """One optimizer step on ``batch``, then the variance update; returns plain floats.

    Keys: ``loss``, ``batch_log_var`` (list per dim: the log of the (weighted) mean squared
    residual fed to the EMA), ``log_var`` (list, after the update), ``ess`` (IW effective sample
    size fraction, 1.0 without IW), ``w_max`` (largest normalised weight times n; 1.0 without IW),
    ``variance_source_used``. Subnormal floats are flushed to zero for the step
    (core/subnormals.py), and only for it.
    """
    if trains_its_own_density(est):
        return density_step(est, opt, batch)
    head = est.head
    inp, out, w = _tensors(est, batch, head.dtype)
    head.observe(inp, out)
    loss, r = head.loss(inp, out, w)
    clear_grads(opt)
    loss.backward()
    opt.step()
    source = "batch"
    proposal_rows = batch.origin == Origin.PROPOSAL if est.variance_source == "proposal" else None
    if proposal_rows is not None and np.count_nonzero(proposal_rows) >= 2:
        keep = torch.as_tensor(proposal_rows, device=r.device)
        r, source = r[keep], "proposal"
        if w is not None:
            w = w[keep] / w[keep].sum()
        n = int(keep.sum())
    elif est.variance_source == "validation" and validation is not None and len(validation.theta):
        v_inp, v_out, v_w = _tensors(est, validation, head.dtype)
        with torch.no_grad():
            r = head.in_units(v_inp, v_out - head.mean(v_inp))
        w, source = v_w, "validation"
        n = len(validation.theta)
    else:
        n = len(batch.theta)
    batch_log_var = head.update_variance(r, w)
    stats = {
        "loss": loss.item(),
        "batch_log_var": batch_log_var.tolist(),
        "log_var": head.log_var.detach().tolist(),
        "ess": 1.0,
        "w_max": 1.0,
        "variance_source_used": source,
    }
    if w is not None:
        stats.update(weight_stats(w, n))
    return stats


def weight_stats(w: torch.Tensor, n: int) -> dict:
    """``ess`` = 1 / (n sum w^2) and ``w_max`` = n max w of normalised weights w (n,)."""
    return {"ess": float(1.0 / (n * float((w * w).sum()))), "w_max": float(w.max()) * n}


def density_inputs(est: DensityEstimator, rows) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """theta ``(n, D)``, x flattened ``(n, x_dim)`` and the importance weights (None without IW)
    of `rows`, as an estimator with its own loss takes them, on its device."""
    device = device_of(est)
    theta = torch.as_tensor(rows.theta, dtype=est.dtype, device=device)
    x = torch.as_tensor(rows.x, dtype=est.dtype, device=device).reshape(len(theta), -1)
    w = None
    if est.importance_weighting:
        w = torch.as_tensor(iw_weights(rows.log_prior, rows.log_q), dtype=est.dtype, device=device)
    return theta, x, w


def held_out_loss(est: DensityEstimator, rows) -> float:
    """The loss of an estimator with its own density on `rows`, as a step would take it but
    without the step: no gradient, no update of its standardisation."""
    theta, x, w = density_inputs(est, rows)
    with torch.no_grad():
        return float(est.loss(theta, x, w))


def density_step(est: DensityEstimator, opt: Optimizer, batch) -> dict:
    """One optimizer step of an estimator with its own loss; returns ``loss``, ``ess``, ``w_max``."""
    theta, x, w = density_inputs(est, batch)
    est.observe(theta, x)
    loss = est.loss(theta, x, w)
    clear_grads(opt)
    loss.backward()
    opt.step()
    stats = {"loss": loss.item(), "ess": 1.0, "w_max": 1.0}
    if w is not None:
        stats.update(weight_stats(w, len(theta)))
    return stats
