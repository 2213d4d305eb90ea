"""FusedAdam (core/adam.py) against torch.optim.Adam(fused=True): the same numbers bit for
bit, the same state dict (checkpoints load either way), clear refusals, the fallback, and
no torch._dynamo import on a run's path."""

import copy
import subprocess
import sys

import pytest
import torch

from falcon_lite.config import EstimatorConfig, PriorConfig
from falcon_lite.core import adam
from falcon_lite.core.adam import FusedAdam
from falcon_lite.core.estimators import make_estimator
from falcon_lite.core.priors import make_prior
from falcon_lite.core.training import make_optimizer, set_lr

torch.set_num_threads(1)


def estimator(loss: str = "mse", dtype: str = "float64", hidden=(16, 16)):
    """The seed's NPE on a 3-D problem (with a trained log-variance parameter under nll)."""
    prior = make_prior(PriorConfig(), 3)
    return make_estimator(EstimatorConfig(hidden=list(hidden), loss=loss, dtype=dtype), 3, prior,
                          generator=torch.Generator().manual_seed(0))


def train(est, opt, steps: int, seed: int = 1, frozen_until: int = 0) -> None:
    """`steps` Adam steps on fresh batches; the output layer's weight gets no gradient
    before step `frozen_until` (its optimizer state starts later)."""
    g = torch.Generator().manual_seed(seed)
    for i in range(steps):
        if i == steps // 2:
            set_lr(opt, 3e-3)  # the warm-up's rate change, mid-way
        theta = torch.randn(32, 3, generator=g, dtype=est.head.dtype)
        x = theta + 0.1 * torch.randn(32, 3, generator=g, dtype=est.head.dtype)
        loss, _ = est.head.loss(x, theta)
        opt.zero_grad()
        loss.backward()
        if i < frozen_until:
            est.head.net[-1].weight.grad = None
        opt.step()


def same_params(a, b) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize(("loss", "dtype", "options", "frozen_until"), [
    ("mse", "float64", {}, 0),
    ("nll", "float64", {}, 0),
    ("mse", "float32", {}, 0),
    ("mse", "float64", {}, 7),  # one parameter without a gradient (nor state) for 7 steps
    ("mse", "float64", {"weight_decay": 0.1, "betas": (0.8, 0.99), "eps": 1e-6}, 0),
    ("mse", "float64", {"maximize": True}, 0),
])
def test_same_numbers_and_state_dict_as_torch_fused_adam(loss, dtype, options, frozen_until):
    ours, theirs = estimator(loss, dtype), estimator(loss, dtype)
    opt_ours = make_optimizer(ours, 1e-2)
    opt_ours.param_groups[0].update(options)
    opt_theirs = torch.optim.Adam(theirs.parameters(), lr=1e-2, fused=True, **options)
    assert isinstance(opt_ours, FusedAdam)
    train(ours, opt_ours, 40, frozen_until=frozen_until)
    train(theirs, opt_theirs, 40, frozen_until=frozen_until)
    assert same_params(ours, theirs)
    mine, torchs = opt_ours.state_dict(), opt_theirs.state_dict()
    assert mine["param_groups"] == torchs["param_groups"]
    assert mine["state"].keys() == torchs["state"].keys()
    for i, state in torchs["state"].items():
        assert mine["state"][i].keys() == state.keys()
        for key, value in state.items():
            assert mine["state"][i][key].dtype == value.dtype
            assert torch.equal(mine["state"][i][key], value)



def test_make_optimizer_passes_weight_decay_to_either_adam():
    """`make_optimizer(..., weight_decay)` (training.weight_decay): FusedAdam and the fallback
    both get it, with torch.optim.Adam(weight_decay=...)'s numbers; a negative one is refused."""
    ours, theirs = estimator(), estimator()
    opt_ours = make_optimizer(ours, 1e-2, weight_decay=0.05)
    assert isinstance(opt_ours, FusedAdam) and opt_ours.param_groups[0]["weight_decay"] == 0.05
    train(ours, opt_ours, 20)
    train(theirs, torch.optim.Adam(theirs.parameters(), lr=1e-2, weight_decay=0.05, fused=True), 20)
    assert same_params(ours, theirs)
    mixed = torch.nn.Sequential(torch.nn.Linear(2, 2, dtype=torch.float64), torch.nn.Linear(2, 2, dtype=torch.float32))
    assert make_optimizer(mixed, 1e-3, weight_decay=0.05).param_groups[0]["weight_decay"] == 0.05
    with pytest.raises(ValueError, match="weight decay"):
        FusedAdam(estimator().parameters(), weight_decay=-1.0)

def test_a_parameter_without_a_gradient_has_no_state_yet():
    ours, theirs = estimator(), estimator()
    opt_ours, opt_theirs = make_optimizer(ours, 1e-2), torch.optim.Adam(theirs.parameters(), lr=1e-2, fused=True)
    train(ours, opt_ours, 3, frozen_until=7)
    train(theirs, opt_theirs, 3, frozen_until=7)
    assert sorted(opt_ours.state_dict()["state"]) == sorted(opt_theirs.state_dict()["state"]) == [0, 1, 2, 3, 5]


def test_checkpoints_load_either_way_and_go_on_alike():
    a, b = estimator(), estimator()
    opt_a, opt_b = make_optimizer(a, 1e-2), torch.optim.Adam(b.parameters(), lr=1e-2, fused=True)
    train(a, opt_a, 10)
    train(b, opt_b, 10)
    # swap: each optimizer class continues from the other's state dict (as a checkpoint would)
    a2, b2 = copy.deepcopy(b), copy.deepcopy(a)
    ours = make_optimizer(a2, 1e-2)
    ours.load_state_dict(copy.deepcopy(opt_b.state_dict()))
    torchs = torch.optim.Adam(b2.parameters(), lr=1e-2, fused=True)
    torchs.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    train(a2, ours, 10, seed=2)
    train(b2, torchs, 10, seed=2)
    train(a, opt_a, 10, seed=2)
    assert same_params(a2, b2) and same_params(a, a2)
    assert ours.state_dict()["state"][0]["step"].item() == 20


def test_loaded_state_is_a_copy():
    """A rollback snapshot stays as it was while the optimizer trains on."""
    est = estimator()
    opt = make_optimizer(est, 1e-2)
    train(est, opt, 5)
    snapshot = opt.state_dict()
    kept = copy.deepcopy(snapshot)
    opt.load_state_dict(snapshot)
    train(est, opt, 5)
    assert torch.equal(snapshot["state"][0]["exp_avg"], kept["state"][0]["exp_avg"])


def test_refuses_a_state_that_does_not_fit():
    opt = make_optimizer(estimator(), 1e-2)
    other = torch.optim.Adam(torch.nn.Linear(2, 2, dtype=torch.float64).parameters(), lr=1e-2)
    with pytest.raises(ValueError, match="does not fit one group"):
        opt.load_state_dict(other.state_dict())
    amsgrad = torch.optim.Adam(estimator().parameters(), lr=1e-2, amsgrad=True)
    with pytest.raises(ValueError, match="amsgrad"):
        opt.load_state_dict(amsgrad.state_dict())
    narrow = estimator(hidden=(8, 8))  # as many parameters, other shapes
    narrow_opt = make_optimizer(narrow, 1e-2)
    train(narrow, narrow_opt, 1)
    with pytest.raises(ValueError, match=r"parameter 0 has shape \(8, 3\), the parameter \(16, 3\)"):
        opt.load_state_dict(narrow_opt.state_dict())
    opt.param_groups[0]["amsgrad"] = True
    with pytest.raises(ValueError, match="amsgrad"):
        opt.step()
    with pytest.raises(ValueError, match="CPU float32/float64"):
        FusedAdam([torch.nn.Parameter(torch.zeros(2, dtype=torch.float64)),
                   torch.nn.Parameter(torch.zeros(2, dtype=torch.float32))])
    with pytest.raises(ValueError, match="learning rate"):
        FusedAdam(estimator().parameters(), lr=-1.0)


def test_falls_back_to_torch_adam_for_mixed_dtypes():
    mixed = torch.nn.Sequential(torch.nn.Linear(2, 2, dtype=torch.float64), torch.nn.Linear(2, 2, dtype=torch.float32))
    assert isinstance(make_optimizer(mixed, 1e-3), torch.optim.Adam)


def test_falls_back_to_torch_adam_when_the_private_kernel_changes(monkeypatch):
    """`torch._fused_adam_` is private: a torch whose kernel takes other arguments (or has
    none) gets torch.optim.Adam instead of a run that fails at its first step."""
    assert adam.kernel_works()

    def renamed_argument(*args, lr, beta1, beta2, weight_decay, epsilon, amsgrad, maximize):
        raise AssertionError("not reached")

    for kernel in (renamed_argument, None):
        adam.kernel_works.cache_clear()
        if kernel is None:
            monkeypatch.delattr(torch, "_fused_adam_")
        else:
            monkeypatch.setattr(torch, "_fused_adam_", kernel)
        try:
            assert not adam.kernel_works()
            assert isinstance(make_optimizer(estimator(), 1e-3), torch.optim.Adam)
        finally:
            monkeypatch.undo()
            adam.kernel_works.cache_clear()
    assert isinstance(make_optimizer(estimator(), 1e-3), FusedAdam)


def test_a_run_does_not_import_dynamo(tmp_path):
    """torch.optim.Adam's constructor imports torch._dynamo and sympy (~1 s, ~70 MB per
    process): an inline run, its checkpoints and a resume from one do not (fresh process)."""
    code = f"""
import sys
from falcon_lite.config import RunConfig, with_overrides
from falcon_lite.engine.inline import run_inline
from falcon_lite.engine.resume import load_state
from falcon_lite.store import runs
from falcon_lite.store.db import make_engine, migrate, session_factory
url = "sqlite:///{tmp_path}/run.db"
migrate(url)
engine = make_engine(url)
config = with_overrides(RunConfig(), {{"training.steps": 30, "training.warmup_steps": 5, "training.checkpoint_every": 10}})
with session_factory(engine).begin() as s:
    run_id = runs.create_run(s, config).id
run_inline(engine, run_id)
assert load_state(engine, run_id).step == 30
print(sorted(m for m in sys.modules if m.startswith(("torch._dynamo", "sympy")))[:3])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
