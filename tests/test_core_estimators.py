"""The invariants of every registered estimator, x simulator x option: the engine's protocol,
shapes, gradients reach every parameter, train and eval modes agree, checkpoints round-trip,
determinism (a resumed run equal to a straight one: tests/test_engine.py, per estimator too);
and the numerics with known answers (the fixed identity model, EMA and IW by hand, NLE's
Laplace fit). A new estimator joins by being registered in ``ESTIMATORS``."""

import copy
import math

import numpy as np
import pytest
import torch

from pydantic import ValidationError

from falcon_lite.config import EstimatorConfig, PriorConfig, SimulatorConfig
from falcon_lite.core import diagnostics as dg
from falcon_lite.core.estimators import ESTIMATORS, make_estimator
from falcon_lite.core.priors import make_prior
from falcon_lite.core.proposal import TemperedProposal, draw_parameters
from falcon_lite.core.protocols import DensityEstimator, Estimator, Prior, Simulator
from falcon_lite.core.simulators import make_simulator
from falcon_lite.core.training import iw_weights, make_optimizer, set_lr, train_step

torch.set_num_threads(1)


class Rows:
    """The duck-typed batch train_step takes (the store's Batch has the same fields)."""

    def __init__(self, theta, x, log_q, log_prior, origin):
        self.theta, self.x, self.log_q, self.log_prior, self.origin = theta, x, log_q, log_prior, origin


PROBLEMS = {
    "gaussian1": SimulatorConfig(name="gaussian", x_obs=[0.3]),
    "gaussian3": SimulatorConfig(name="gaussian", x_obs=[0.3, -0.5, 1.0]),
    "exp_noise": SimulatorConfig(name="exp_noise"),
}
OPTIONS = {
    "default": {},
    "normalize": {"normalize": True},
    "residual": {"residual": True},
    "nll": {"loss": "nll"},
    "iw": {"importance_weighting": True},
    "validation": {"variance_source": "validation"},
    "normalize+residual+iw": {"normalize": True, "residual": True, "importance_weighting": True},
    "float32": {"dtype": "float32"},
}


def build(name, problem, options, seed=0, hidden=(16, 16)):
    sim = make_simulator(PROBLEMS[problem])
    prior = make_prior(PriorConfig(), sim.dim)
    cfg = EstimatorConfig(name=name, hidden=list(hidden), **options)
    est = make_estimator(cfg, sim.dim, prior, torch.Generator().manual_seed(seed))
    return sim, prior, est


def mixed_batch(sim, prior, seed, n=64, n_prior=16):
    """A batch with prior rows and rows from a proposal around x_obs's posterior."""
    mean, _ = sim.true_posterior(prior)
    q = TemperedProposal(mean, np.full(sim.dim, 0.01), 2.0)
    rng = np.random.default_rng(seed)
    theta, origin, log_q, log_prior = draw_parameters(prior, q, n, n_prior, rng, rng)
    return Rows(theta, sim(theta, rng), log_q, log_prior, origin)


def train(est, opt, sim, prior, steps, seed):
    stats = None
    for k in range(steps):
        batch = mixed_batch(sim, prior, seed * 1000 + k)
        stats = train_step(est, opt, batch, mixed_batch(sim, prior, seed * 1000 + k + 500, n=32))
    return stats


def _case(name, problem, option):
    """The case, or the case skipped with the config's own reason where the estimator does not
    take the option (a flow has no residual, EMA variance or loss choice)."""
    try:
        EstimatorConfig(name=name, **OPTIONS[option])
    except ValidationError as error:
        reason = error.errors()[0]["msg"]
        return pytest.param(name, problem, option, marks=pytest.mark.skip(reason=f"{name} rejects {option}: {reason}"))
    return (name, problem, option)


CASES = [_case(e, p, o) for e in sorted(ESTIMATORS) for p in PROBLEMS for o in OPTIONS]


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
@pytest.mark.parametrize("problem", sorted(PROBLEMS))
def test_what_the_engine_calls_is_there(name, problem):
    sim, prior, est = build(name, problem, {})
    assert isinstance(est, Estimator) and isinstance(sim, Simulator) and isinstance(prior, Prior)
    assert isinstance(type(est).amortized, bool)


@pytest.mark.parametrize("name, problem, option", CASES)
def test_train_and_eval_modes_agree(name, problem, option):
    sim, prior, est = build(name, problem, OPTIONS[option])
    train(est, make_optimizer(est, 1e-3), sim, prior, 2, seed=5)
    x = mixed_batch(sim, prior, 6).x
    est.train()
    trained = (est.posterior(sim.x_obs), est.posterior_batch(x))
    est.eval()
    evaluated = (est.posterior(sim.x_obs), est.posterior_batch(x))
    for a, b in zip(np.concatenate([np.ravel(v) for pair in trained for v in pair]),
                    np.concatenate([np.ravel(v) for pair in evaluated for v in pair])):
        assert a == b


@pytest.mark.parametrize("name, problem, option", CASES)
def test_shapes_and_finite_outputs(name, problem, option):
    sim, prior, est = build(name, problem, OPTIONS[option])
    opt = make_optimizer(est, 1e-3)
    stats = train(est, opt, sim, prior, 3, seed=1)
    d = sim.dim
    mean, var = est.posterior(sim.x_obs)
    assert mean.shape == (d,) and var.shape == (d,) and mean.dtype == np.float64
    assert np.all(np.isfinite(mean)) and np.all(var > 0)
    draws = est.sample(sim.x_obs, 50, torch.Generator().manual_seed(0))
    assert draws.shape == (50, d) and np.all(np.isfinite(draws))
    m_b, v_b = est.posterior_batch(np.stack([sim.x_obs] * 3))
    assert m_b.shape == (3, d) and v_b.shape == (3, d)
    assert np.isfinite(stats["loss"]) and 0 < stats["ess"] <= 1
    if not isinstance(est, DensityEstimator):  # a Gaussian head's variance update
        assert len(stats["batch_log_var"]) == d
        assert stats["variance_source_used"] == ("validation" if option == "validation" else "batch")


@pytest.mark.parametrize("name, problem, option", CASES)
def test_gradients_reach_every_parameter(name, problem, option):
    sim, prior, est = build(name, problem, OPTIONS[option])
    batch = mixed_batch(sim, prior, 3)
    if isinstance(est, DensityEstimator):  # trained on its own loss
        theta, x = torch.as_tensor(batch.theta, dtype=est.dtype), torch.as_tensor(batch.x, dtype=est.dtype)
        est.observe(theta, x)
        loss = est.loss(theta, x)
    else:
        theta = torch.as_tensor(batch.theta, dtype=est.head.dtype)
        x = torch.as_tensor(batch.x, dtype=est.head.dtype)
        inp, out = est.pair(theta, x)
        est.head.observe(inp, out)
        loss, _ = est.head.loss(inp, out)
    loss.backward()
    params = dict(est.named_parameters())
    assert params, "estimator has no parameters"
    for pname, p in params.items():
        assert p.grad is not None, f"no gradient reaches {pname}"
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"zero/non-finite gradient at {pname}"
    assert ("head.log_var" in params) == (option == "nll")


@pytest.mark.parametrize("name, problem, option", CASES)
def test_checkpoint_round_trip_resumes_exactly(name, problem, option):
    sim, prior, est = build(name, problem, OPTIONS[option], seed=0)
    opt = make_optimizer(est, 1e-3)
    train(est, opt, sim, prior, 4, seed=2)
    est.posterior(sim.x_obs)  # NLE: sets the MAP warm start, which must travel too
    blob = copy.deepcopy((est.state_dict(), opt.state_dict()))

    _, _, other = build(name, problem, OPTIONS[option], seed=99)  # different initial weights
    other_opt = make_optimizer(other, 1e-2)
    other.load_state_dict(blob[0])
    other_opt.load_state_dict(blob[1])
    for key, value in est.state_dict().items():
        assert torch.equal(value, other.state_dict()[key]), key

    a = train(est, opt, sim, prior, 3, seed=3)
    b = train(other, other_opt, sim, prior, 3, seed=3)
    assert a == b
    for x_obs in (sim.x_obs, sim.x_obs * 1.01):
        np.testing.assert_array_equal(est.posterior(x_obs)[0], other.posterior(x_obs)[0])
        np.testing.assert_array_equal(est.posterior(x_obs)[1], other.posterior(x_obs)[1])


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
@pytest.mark.parametrize("problem", sorted(PROBLEMS))
def test_determinism_for_a_seed(name, problem):
    results = []
    for _ in range(2):
        sim, prior, est = build(name, problem, {"normalize": True}, seed=7)
        opt = make_optimizer(est, 1e-3)
        stats = train(est, opt, sim, prior, 5, seed=4)
        draws = est.sample(sim.x_obs, 10, torch.Generator().manual_seed(1))
        results.append((stats, draws))
    assert results[0][0] == results[1][0]
    np.testing.assert_array_equal(results[0][1], results[1][1])
    _, _, est_other = build(name, problem, {"normalize": True}, seed=8)
    _, _, est_seven = build(name, problem, {"normalize": True}, seed=7)
    assert not torch.equal(next(est_other.parameters()), next(est_seven.parameters()))


def test_unknown_estimator_named():
    cfg = EstimatorConfig().model_copy(update={"name": "nope"})
    with pytest.raises(ValueError, match="unknown estimator 'nope'"):
        make_estimator(cfg, 1, make_prior(PriorConfig(), 1))


# --- numerics with known answers ---------------------------------------------------------------

def identity_model(sigma=1e-6, dim=1):
    """gaussian_ema with mu(x) = x exactly (residual head, r = 0) and lr 0: only the EMA learns."""
    sim = make_simulator(SimulatorConfig(sigma_obs=sigma, x_obs=[0.3] * dim))
    prior = make_prior(PriorConfig(), dim)
    est = make_estimator(EstimatorConfig(residual=True), dim, prior, torch.Generator().manual_seed(0))
    with torch.no_grad():
        est.head.net[-1].weight.zero_()
        est.head.net[-1].bias.zero_()
    return sim, prior, est


def test_fixed_identity_model_std_ratio_goes_to_one():
    """The seed's proof: with mu(x) = x exactly, the EMA variance converges to sigma_obs^2."""
    sim, prior, est = identity_model(sigma=1e-6, dim=3)
    opt = make_optimizer(est, 0.0)
    rng = np.random.default_rng(0)
    truth_mean, truth_std = sim.true_posterior(prior)
    ratios = []
    for step in range(2000):
        mean, var = est.posterior(sim.x_obs)
        q = TemperedProposal(mean, var, 2.0) if step >= 200 else None
        theta, origin, log_q, log_prior = draw_parameters(prior, q, 128, 0, rng, rng)
        train_step(est, opt, Rows(theta, sim(theta, rng), log_q, log_prior, origin))
        ratios.append(dg.std_ratio(est.posterior(sim.x_obs)[1], truth_std))
    np.testing.assert_array_equal(est.posterior(sim.x_obs)[0], sim.x_obs)  # mean untouched
    assert ratios[0].min() > 100  # log_var starts at 0: std 1 vs 1e-6
    np.testing.assert_allclose(ratios[-1], 1.0, atol=0.05)
    outcome = dg.classify_outcome(np.arange(2000), ratios, np.zeros((2000, 3)))
    assert outcome[0] == "calibrated"


def test_ema_update_by_hand():
    """log_var <- (1 - m) log_var + m log(mean (theta - mu(x))^2), with mu before the step."""
    sim, prior, est = build("gaussian_ema", "gaussian3", {}, seed=0)
    opt = make_optimizer(est, 1e-2)
    batch = mixed_batch(sim, prior, 0)
    with torch.no_grad():
        r = torch.as_tensor(batch.theta) - est.head.mean(torch.as_tensor(batch.x))
    expected = torch.log((r * r).mean(0))
    before = est.head.log_var.clone()
    stats = train_step(est, opt, batch)
    np.testing.assert_allclose(stats["batch_log_var"], expected.numpy(), rtol=1e-12)
    np.testing.assert_allclose(est.head.log_var.numpy(), 0.99 * before.numpy() + 0.01 * expected.numpy(), rtol=1e-12)
    assert stats["log_var"] == est.head.log_var.tolist()


def test_validation_variance_source_uses_updated_model_on_validation_rows():
    sim, prior, est = build("gaussian_ema", "gaussian1", {"variance_source": "validation"}, seed=0)
    opt = make_optimizer(est, 1e-2)
    batch, validation = mixed_batch(sim, prior, 0), mixed_batch(sim, prior, 1, n=20)
    stats = train_step(est, opt, batch, validation)
    with torch.no_grad():
        r = torch.as_tensor(validation.theta) - est.head.mean(torch.as_tensor(validation.x))
    np.testing.assert_allclose(stats["batch_log_var"], torch.log((r * r).mean(0)).numpy(), rtol=1e-12)
    empty = Rows(*(a[:0] for a in (validation.theta, validation.x, validation.log_q,
                                   validation.log_prior, validation.origin)))
    assert train_step(est, opt, batch, empty)["variance_source_used"] == "batch"


def test_proposal_variance_source_uses_the_proposal_rows_of_the_batch_only():
    sim, prior, est = build("gaussian_ema", "gaussian1", {"variance_source": "proposal"}, seed=0)
    opt = make_optimizer(est, 1e-2)
    batch = mixed_batch(sim, prior, 0)
    with torch.no_grad():
        r = torch.as_tensor(batch.theta) - est.head.mean(torch.as_tensor(batch.x))  # before the step
    stats = train_step(est, opt, batch)
    rows = torch.as_tensor(batch.origin == 1)
    assert stats["variance_source_used"] == "proposal"
    np.testing.assert_allclose(stats["batch_log_var"], torch.log((r[rows] ** 2).mean(0)).numpy(), rtol=1e-10)
    all_prior = Rows(batch.theta, batch.x, batch.log_q, batch.log_prior, np.zeros_like(batch.origin))
    assert train_step(est, opt, all_prior)["variance_source_used"] == "batch"  # none to use: all rows


def test_log_residual_base_starts_near_the_log():
    _, _, est = build("gaussian_ema", "exp_noise", {"residual": True, "residual_base": "log"}, seed=0)
    x = torch.tensor([[math.exp(-5.0), 1.0, math.exp(5.0)]], dtype=torch.float64)
    with torch.no_grad():
        r = (est.head.mean(x) - torch.log(x)) * x  # the residual, in its unit dx / x
    assert r.abs().max() < 1e-2
    with pytest.raises(ValueError, match="residual_base"):
        build("gaussian_ema", "exp_noise", {"residual": True, "residual_base": "sqrt"})


def test_iw_weights_self_normalised_by_hand():
    w = iw_weights(log_prior=np.log([1.0, 1.0, 2.0]) - 50.0, log_q=np.zeros(3) - 50.0)
    np.testing.assert_allclose(w, [0.25, 0.25, 0.5], rtol=1e-14)
    assert w.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="finite"):
        iw_weights(np.array([0.0, -np.inf]), np.array([0.0, 0.0]))


def test_iw_prior_rows_equal_weight_and_loss_and_ess():
    sim, prior, est = build("gaussian_ema", "gaussian1", {"importance_weighting": True}, seed=0)
    batch = mixed_batch(sim, prior, 5, n=64, n_prior=16)
    w = iw_weights(batch.log_prior, batch.log_q)
    prior_rows = batch.origin == 0
    np.testing.assert_allclose(w[prior_rows], w[prior_rows][0], rtol=1e-12)  # all raw weight 1
    assert np.median(w[~prior_rows]) < w[prior_rows][0]  # proposal rows: mostly q > prior near x_obs
    with torch.no_grad():
        r = torch.as_tensor(batch.theta) - est.head.mean(torch.as_tensor(batch.x))
    expected_loss = float((torch.as_tensor(w) * (r * r).mean(-1)).sum())
    expected_var = float(torch.log((torch.as_tensor(w)[:, None] * r * r).sum(0))[0])
    stats = train_step(est, make_optimizer(est, 1e-3), batch)
    assert stats["loss"] == pytest.approx(expected_loss, rel=1e-12)
    assert stats["batch_log_var"][0] == pytest.approx(expected_var, rel=1e-12)
    assert stats["ess"] == pytest.approx(dg.ess_fraction(batch.log_prior - batch.log_q), rel=1e-12)
    all_prior = mixed_batch(sim, prior, 6, n=32, n_prior=32)
    assert train_step(est, make_optimizer(est, 1e-3), all_prior)["ess"] == pytest.approx(1.0)


def test_nll_loss_by_hand():
    sim, prior, est = build("gaussian_ema", "gaussian1", {"loss": "nll"}, seed=0)
    with torch.no_grad():
        est.head.log_var.fill_(math.log(0.25))
    batch = mixed_batch(sim, prior, 0)
    theta, x = torch.as_tensor(batch.theta), torch.as_tensor(batch.x)
    loss, r = est.head.loss(x, theta)
    expected = (0.5 * (r * r / 0.25 + math.log(0.25))).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    before = est.head.log_var.clone()
    est.head.update_variance(r)  # no EMA under nll
    assert torch.equal(est.head.log_var.detach(), before)


def test_normalize_statistics_track_batches():
    sim, prior, est = build("gaussian_ema", "gaussian1", {"normalize": True}, seed=0)
    batch = mixed_batch(sim, prior, 0, n=64, n_prior=64)
    x, theta = torch.as_tensor(batch.x), torch.as_tensor(batch.theta)
    est.head.observe(x, theta)  # first batch sets the statistics directly
    assert torch.allclose(est.head.in_mean, x.mean(0)) and torch.allclose(est.head.out_std, theta.std(0, unbiased=False))
    est.head.observe(x + 1.0, theta)
    assert torch.allclose(est.head.in_mean, x.mean(0) + 0.01)  # EMA with momentum 0.01
    assert int(est.head.norm_count) == 2


def test_residual_starts_near_identity():
    _, _, est = build("gaussian_ema", "gaussian3", {"residual": True}, seed=0)
    x = torch.linspace(-2, 2, 30, dtype=torch.float64).reshape(10, 3)
    with torch.no_grad():
        assert (est.head.mean(x) - x).abs().max() < 1e-2


def test_nle_laplace_posterior_on_gaussian_problem():
    """NLE after a short fit: MAP ~ the conjugate posterior mean, Laplace var ~ sigma^2."""
    sigma = 0.05
    sim = make_simulator(SimulatorConfig(sigma_obs=sigma, x_obs=[0.3]))
    prior = make_prior(PriorConfig(), 1)
    est = make_estimator(EstimatorConfig(name="gaussian_nle", ema_momentum=0.02), 1, prior,
                         torch.Generator().manual_seed(0))
    opt = make_optimizer(est, 1e-2)
    rng = np.random.default_rng(0)
    for step in range(1500):
        if step == 1000:
            set_lr(opt, 1e-3)
        theta = prior.sample(128, rng)
        lp = prior.log_prob(theta)
        train_step(est, opt, Rows(theta, sim(theta, rng), lp, lp, np.zeros(128, np.int8)))
    true_mean, true_std = sim.true_posterior(prior)
    mean, var = est.posterior(sim.x_obs)
    assert abs(mean[0] - true_mean[0]) < 0.1 * true_std[0] + 0.005
    assert math.sqrt(var[0]) / true_std[0] == pytest.approx(1.0, abs=0.15)
    assert math.exp(est.head.log_var[0]) == pytest.approx(sigma**2, rel=0.3)
    # the MAP is the warm start of the next call and is part of the state
    assert bool(est.has_map) and float(est.map_theta[0]) == mean[0]
    again, _ = est.posterior(sim.x_obs)
    assert again[0] == pytest.approx(mean[0], abs=1e-9)


def test_nle_map_by_hand_with_a_known_likelihood():
    """With g(theta) = theta exactly and var fixed, the Laplace fit is the conjugate posterior."""
    prior = make_prior(PriorConfig(loc=1.0, scale=2.0), 2)
    est = make_estimator(EstimatorConfig(name="gaussian_nle", residual=True), 2, prior,
                         torch.Generator().manual_seed(0))
    with torch.no_grad():
        est.head.net[-1].weight.zero_()
        est.head.net[-1].bias.zero_()
        est.head.log_var.fill_(0.0)  # sigma = 1
    mean, var = est.posterior(np.array([3.0, -1.0]))
    # precision 1/4 + 1 = 1.25; mean (1/4 + x) / 1.25
    np.testing.assert_allclose(mean, [(0.25 + 3.0) / 1.25, (0.25 - 1.0) / 1.25], rtol=1e-10)
    np.testing.assert_allclose(var, [0.8, 0.8], rtol=1e-10)


def test_expected_coverage_of_the_identity_model_matches_levels():
    sim, prior, est = identity_model(sigma=0.1, dim=2)
    with torch.no_grad():
        est.head.log_var.fill_(math.log(0.01))
    rng = np.random.default_rng(0)
    theta = prior.sample(20000, rng)
    cov = dg.expected_coverage(est, theta, sim(theta, rng))
    for level in (50, 68, 95):
        assert cov[f"coverage_{level}"] == pytest.approx(level / 100, abs=0.01)
    with torch.no_grad():
        est.head.log_var.fill_(math.log(0.0025))  # too narrow by 2x: under-covers
    assert dg.expected_coverage(est, theta, sim(theta, rng))["coverage_68"] < 0.45
