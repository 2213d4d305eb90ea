"""Adam as one call of torch's fused kernel, without `torch.optim`'s wrappers.

`torch.optim.Adam(fused=True)` runs the same kernel, but building one imports
`torch._dynamo` (and sympy with it: ~1 s and ~70 MB in every trainer process), and each
`step()` passes through profiler, grad-mode and dynamo wrappers that cost about as much as
the kernel on the seed's small networks. `FusedAdam` keeps the update rule, the numbers
(bit for bit) and the `state_dict` format of `torch.optim.Adam(fused=True)`, so checkpoints
load in either (one written by a non-fused Adam loads too, and goes on with the fused
kernel: the same update rule, not the same last bits); `make_optimizer` (core/training.py)
falls back to `torch.optim.Adam` where the kernel is missing or the parameters do not suit
it. Weight decay and `maximize` are passed to the kernel; amsgrad and AdamW's decoupled
decay are not supported.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import torch

# The keys (and defaults) of a torch.optim.Adam parameter group, so that state dicts match.
GROUP_DEFAULTS = {
    "betas": (0.9, 0.999),
    "eps": 1e-8,
    "weight_decay": 0.0,
    "amsgrad": False,
    "maximize": False,
    "foreach": None,
    "capturable": False,
    "differentiable": False,
    "fused": True,
    "decoupled_weight_decay": False,
}


def fused_kernel_supports(params: list[torch.Tensor]) -> bool:
    """Whether `FusedAdam` can take these parameters: the kernel works in this torch and
    they are floating-point CPU tensors of one dtype (one kernel call a step)."""
    return (
        len(params) > 0
        and all(p.device.type == "cpu" and p.dtype in (torch.float32, torch.float64) for p in params)
        and len({p.dtype for p in params}) == 1
        and kernel_works()
    )


@functools.cache
def kernel_works() -> bool:
    """One Adam step through the kernel on a scalar: it exists in this torch, takes the
    arguments `FusedAdam.step` passes (a private op, whose signature a later torch may
    change) and moves the parameter by -lr, as Adam's first step does."""
    if not hasattr(torch, "_fused_adam_"):
        return False
    p, grad, avg, sq = (torch.full((1,), v, dtype=torch.float64) for v in (0.0, 1.0, 0.0, 0.0))
    try:
        _kernel([p], [grad], [avg], [sq], [torch.zeros((), dtype=torch.float32)], lr=0.5, betas=(0.9, 0.999), eps=1e-8)
    except (RuntimeError, TypeError):
        return False
    return abs(float(p[0]) + 0.5) < 1e-6


def _kernel(params, grads, avgs, sqs, steps, lr: float, betas: tuple[float, float], eps: float,
            weight_decay: float = 0.0, maximize: bool = False) -> None:
    """Count the step and apply Adam in place, as torch.optim.Adam(fused=True) does on CPU."""
    torch._foreach_add_(steps, 1)
    torch._fused_adam_(params, grads, avgs, sqs, [], steps, amsgrad=False, lr=lr, beta1=betas[0],
                       beta2=betas[1], weight_decay=weight_decay, eps=eps, maximize=maximize)


def _refuse_unsupported(group: dict) -> None:
    if group.get("amsgrad") or group.get("decoupled_weight_decay"):
        raise ValueError("FusedAdam does not do amsgrad or AdamW's decoupled weight decay")


class FusedAdam:
    """Adam (L2 weight decay and maximize as torch has them; no amsgrad, no AdamW) over one
    group of CPU parameters of one dtype."""

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        params = list(params)
        if not fused_kernel_supports(params):
            raise ValueError("FusedAdam needs a working torch._fused_adam_ and CPU float32/float64 parameters of one dtype")
        if not lr >= 0.0:
            raise ValueError(f"invalid learning rate: {lr}")
        if not weight_decay >= 0.0:
            raise ValueError(f"invalid weight decay: {weight_decay}")
        self.param_groups = [{"params": params, "lr": lr, **GROUP_DEFAULTS, "betas": tuple(betas), "eps": eps,
                              "weight_decay": float(weight_decay)}]
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.param_groups[0]["params"]:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        group = self.param_groups[0]
        _refuse_unsupported(group)
        params, grads, avgs, sqs, steps = [], [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state.get(p)
            if state is None:  # as torch.optim.Adam's lazy init (fused: a float32 step on the device)
                state = self.state[p] = {
                    "step": torch.zeros((), dtype=torch.float32, device=p.device),
                    "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                    "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                }
            params.append(p)
            grads.append(p.grad)
            avgs.append(state["exp_avg"])
            sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        if params:
            _kernel(params, grads, avgs, sqs, steps, group["lr"], group["betas"], group["eps"],
                    group["weight_decay"], group["maximize"])

    def state_dict(self) -> dict:
        """The format of `torch.optim.Adam.state_dict()`: parameters by their index."""
        group = self.param_groups[0]
        index = {id(p): i for i, p in enumerate(group["params"])}
        return {
            "state": {index[id(p)]: dict(s) for p, s in self.state.items()},
            "param_groups": [{**{k: v for k, v in group.items() if k != "params"},
                              "params": list(range(len(group["params"])))}],
        }

    def load_state_dict(self, saved: dict) -> None:
        """Load a state dict of this class or of `torch.optim.Adam` (one group, the same
        parameters, moments of their shapes); the moments are copied, in the parameters' dtype."""
        groups = saved.get("param_groups", [])
        params = self.param_groups[0]["params"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(params):
            raise ValueError(f"optimizer state for {[len(g['params']) for g in groups]} parameters in "
                             f"{len(groups)} groups does not fit one group of {len(params)}")
        group = groups[0]
        _refuse_unsupported(group)
        for i, p in zip(group["params"], params):
            s = saved["state"].get(i)
            if s is not None and (s["exp_avg"].shape != p.shape or s["exp_avg_sq"].shape != p.shape):
                raise ValueError(f"optimizer state for parameter {i} has shape {tuple(s['exp_avg'].shape)}, "
                                 f"the parameter {tuple(p.shape)}")
        self.param_groups[0].update({k: v for k, v in group.items() if k in GROUP_DEFAULTS or k == "lr"})
        self.param_groups[0].update(fused=True, foreach=None, capturable=False)
        self.state = {}
        for i, p in zip(group["params"], params):
            s = saved["state"].get(i)
            if s is not None:
                self.state[p] = {
                    "step": s["step"].detach().to(dtype=torch.float32, device=p.device, copy=True),
                    "exp_avg": s["exp_avg"].detach().to(dtype=p.dtype, device=p.device, copy=True),
                    "exp_avg_sq": s["exp_avg_sq"].detach().to(dtype=p.dtype, device=p.device, copy=True),
                }
