"""The flow estimator's invariants (core/estimators/flow.py), NSF and MAF, float64 and float32:
shapes; gradients reach every parameter; log q integrates to 1 (1-D, by quadrature); samples
follow log q (1-D by a KS test, 2-D by cell masses); the checkpoint round trip is bit for bit
and training goes on identically; the seed alone decides the weights; a short NPE training on
x = theta + 0.1 eps reaches the exact posterior (moments, C2ST, TARP and HPD coverage); the config rejects what a flow does not use;
and a run of the engine with it stops and resumes exactly; it computes with subnormal floats
flushed to zero, and only it."""

import copy
import io
import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from falcon_lite.config import EstimatorConfig, PriorConfig, RunConfig, with_overrides
from falcon_lite.core import diagnostics_samples as ds
from falcon_lite.core import subnormals
from falcon_lite.core.estimators import FlowPosterior, make_estimator
from falcon_lite.core.priors import make_prior
from falcon_lite.core.protocols import DensityEstimator, Estimator
from falcon_lite.core.training import iw_weights, make_optimizer, set_lr, train_step

torch.set_num_threads(1)

KINDS = ["nsf", "maf"]
DTYPES = {"float64": torch.float64, "float32": torch.float32}


class Rows:
    """The duck-typed batch train_step takes."""

    def __init__(self, theta, x, log_q=None, log_prior=None, origin=None):
        n = len(theta)
        self.theta, self.x = theta, x
        self.log_prior = np.zeros(n) if log_prior is None else log_prior
        self.log_q = self.log_prior if log_q is None else log_q
        self.origin = np.zeros(n, np.int8) if origin is None else origin


def flow(kind="nsf", dim=1, seed=0, x_dim=None, **options):
    cfg = EstimatorConfig(name="flow", flow=kind, hidden=[16, 16], normalize=True, **options)
    return FlowPosterior(cfg, dim, make_prior(PriorConfig(), dim), torch.Generator().manual_seed(seed), x_dim=x_dim)


def toy(n, dim, rng, x_dim=None, sigma=0.1):
    """theta ~ N(0, 1) (shifted by 2 and scaled by 3 in dim 0, so that standardising matters),
    x = theta + sigma eps (repeated up to x_dim features)."""
    theta = rng.normal(size=(n, dim))
    theta[:, 0] = 2.0 + 3.0 * theta[:, 0]
    x = theta + sigma * rng.normal(size=theta.shape)
    if x_dim is not None:
        x = np.concatenate([x, rng.normal(size=(n, x_dim - dim))], axis=1)
    return Rows(theta, x)


def trained(est, steps=5, seed=0, lr=1e-2, **batch):
    opt = make_optimizer(est, lr)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        stats = train_step(est, opt, toy(64, est.dim, rng, **batch))
    return est, opt, stats


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("dim, x_dim", [(1, None), (3, None), (2, 5)])
def test_shapes(kind, dtype, dim, x_dim):
    est, _, stats = trained(flow(kind, dim, x_dim=x_dim, dtype=dtype), x_dim=x_dim)
    assert isinstance(est, Estimator) and isinstance(est, DensityEstimator) and est.amortized
    assert {"loss", "ess", "w_max"} <= set(stats) and np.isfinite(stats["loss"])
    n_x = dim if x_dim is None else x_dim
    assert all(p.dtype == DTYPES[dtype] for p in est.parameters())
    x_obs = np.linspace(-1, 1, n_x)
    mean, var = est.posterior(x_obs)
    assert mean.shape == var.shape == (dim,) and mean.dtype == var.dtype == np.float64 and np.all(var > 0)
    m_b, v_b = est.posterior_batch(np.stack([x_obs] * 4))
    assert m_b.shape == v_b.shape == (4, dim) and m_b.dtype == np.float64
    draws = est.sample(x_obs, 7, torch.Generator().manual_seed(0))
    assert draws.shape == (7, dim) and draws.dtype == np.float64 and np.all(np.isfinite(draws))
    log_q = est.log_prob(draws, np.stack([x_obs] * 7))
    assert log_q.shape == (7,) and log_q.dtype == DTYPES[dtype] and torch.isfinite(log_q).all()


def test_x_of_any_shape_is_taken_flattened():
    cfg = EstimatorConfig(name="flow", hidden=[8], normalize=True)
    est = FlowPosterior(cfg, 2, make_prior(PriorConfig(), 2), torch.Generator().manual_seed(0), x_shape=(2, 3))
    assert est.x_dim == 6
    rng = np.random.default_rng(0)
    theta = rng.normal(size=(32, 2))
    x = np.repeat(theta[:, :, None], 3, axis=2) + 0.1 * rng.normal(size=(32, 2, 3))
    stats = train_step(est, make_optimizer(est, 1e-3), Rows(theta, x))
    assert np.isfinite(stats["loss"])
    assert est.sample(x[0], 5, torch.Generator().manual_seed(0)).shape == (5, 2)
    assert est.posterior_batch(x[:4])[0].shape == (4, 2) and est.log_prob(theta, x).shape == (32,)
    with pytest.raises(ValueError, match="disagree"):
        FlowPosterior(cfg, 2, None, x_dim=5, x_shape=(2, 3))


class PoolPairs(torch.nn.Module):
    """A plugin embedding for the test: (n, 2, 3) -> (n, 2), each row's mean, through a weight."""

    def __init__(self, x_shape):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.scale * x.mean(-1)


@pytest.mark.parametrize("embedding", [{"name": "mlp", "features": 4, "hidden": [8]},
                                       {"name": "cnn1d", "features": 4, "channels": [2], "kernel": 3},
                                       {"name": "pool_pairs"}])
def test_the_flow_conditions_on_an_embedding_trained_with_it(embedding):
    """x of shape (2, 3) through a built-in or plugin embedding: the embedding's weights get
    gradients, are in the checkpoint, and draws/log q use them."""
    cfg = EstimatorConfig(name="flow", hidden=[8], transforms=2, normalize=True, embedding=embedding)
    plugin = PoolPairs if embedding["name"] == "pool_pairs" else None
    est = FlowPosterior(cfg, 2, None, torch.Generator().manual_seed(0), x_shape=(2, 3), embedding_plugin=plugin)
    assert not isinstance(est.embedding, torch.nn.Identity) and list(est.embedding.parameters())
    rng = np.random.default_rng(0)
    theta = rng.normal(size=(32, 2))
    x = np.repeat(theta[:, :, None], 3, axis=2) + 0.1 * rng.normal(size=(32, 2, 3))
    t, xt = torch.as_tensor(theta), torch.as_tensor(x.reshape(32, 6))
    est.observe(t, xt)
    est.loss(t, xt).backward()
    for name, p in est.embedding.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches embedding.{name}"
    assert any(k.startswith("embedding.") for k in est.state_dict())
    other = FlowPosterior(cfg, 2, None, torch.Generator().manual_seed(1), x_shape=(2, 3), embedding_plugin=plugin)
    other.load_state_dict(est.state_dict())
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    np.testing.assert_array_equal(est.sample(x[0], 6, gen()), other.sample(x[0], 6, gen()))
    with torch.no_grad():
        for p in est.embedding.parameters():
            p.add_(1.0)  # the embedding moves: so do the flow's draws at the same x
    assert not np.array_equal(est.sample(x[0], 6, gen()), other.sample(x[0], 6, gen()))


def test_the_identity_embedding_leaves_the_flow_as_it_was():
    """x itself (the default): no embedding weights, and the flow's weights are what the
    generator gave the flow alone, so runs and checkpoints from before embeddings keep their numbers."""
    from falcon_lite.core.estimators.flow import build_flow

    cfg = EstimatorConfig(name="flow", hidden=[8], transforms=2)
    est = FlowPosterior(cfg, 2, None, torch.Generator().manual_seed(4))
    bare = build_flow("nsf", 2, 2, 2, [8], cfg.activation, cfg.bins, torch.float64, torch.Generator().manual_seed(4))
    assert not list(est.embedding.parameters())
    assert all(torch.equal(a, b) for a, b in zip(est.flow.parameters(), bare.parameters()))


@pytest.mark.parametrize("passes", [None, 2])
@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_the_nsf_is_zukos_with_its_knots_built_faster(passes, dtype):
    """`flow = "nsf"` builds zuko's NSF with our `Spline`: the same weights from the same generator
    (so stored checkpoints load and mean what they meant), and the same log q and draws as
    zuko's own NSF with those weights, to rounding, on trained weights whose splines bend."""
    import zuko

    from falcon_lite.core.estimators.flow import build_flow

    dt = DTYPES[dtype]
    ours = build_flow("nsf", 3, 4, 3, [16, 16], "relu", 10, dt, torch.Generator().manual_seed(1), passes)
    theirs = zuko.flows.NSF(3, 4, transforms=3, hidden_features=[16, 16], activation=torch.nn.ReLU, bins=10,
                            **({} if passes is None else {"passes": passes})).to(dt)
    theirs.load_state_dict(ours.state_dict())  # zuko's class takes our state dict as it is
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dt))
    theirs.load_state_dict(ours.state_dict())
    theta, x = 2 * torch.randn(500, 3, generator=gen, dtype=dt), torch.randn(500, 4, generator=gen, dtype=dt)
    z = torch.randn(500, 3, generator=gen, dtype=dt)
    tol = {"float64": 1e-10, "float32": 1e-3}[dtype]
    with torch.no_grad():
        ours_log_q, theirs_log_q = ours(x).log_prob(theta), theirs(x).log_prob(theta)
        assert theirs_log_q.std() > 1.0  # a flow far from the identity
        torch.testing.assert_close(ours_log_q, theirs_log_q, rtol=0, atol=tol)
        torch.testing.assert_close(ours(x).transform.inv(z), theirs(x).transform.inv(z), rtol=0, atol=tol)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_draws_come_with_their_log_prob(kind, dtype):
    """`sample_and_log_prob` (a truncated proposal's region): `sample`'s draws for the same
    generator, with log q equal to `log_prob` of them."""
    est, _, _ = trained(flow(kind, 3, dtype=dtype), steps=20)
    x_obs = np.array([2.5, 0.3, -0.4])
    theta, log_q = est.sample_and_log_prob(x_obs, 2000, torch.Generator().manual_seed(5))
    assert theta.shape == (2000, 3) and log_q.shape == (2000,) and theta.dtype == log_q.dtype == np.float64
    np.testing.assert_array_equal(theta, est.sample(x_obs, 2000, torch.Generator().manual_seed(5)))
    with torch.no_grad():
        expected = est.log_prob(theta, np.tile(x_obs, (2000, 1))).double().numpy()
    assert np.ptp(expected) > 1.0
    np.testing.assert_allclose(log_q, expected, rtol=0, atol={"float64": 1e-10, "float32": 1e-3}[dtype])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dim", [1, 3])
def test_gradients_reach_every_parameter(kind, dim):
    est = flow(kind, dim)
    batch = toy(64, dim, np.random.default_rng(1))
    theta, x = torch.as_tensor(batch.theta), torch.as_tensor(batch.x)
    est.observe(theta, x)
    est.loss(theta, x).backward()
    params = dict(est.named_parameters())
    assert params
    for name, p in params.items():
        assert p.grad is not None, f"no gradient reaches {name}"
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"zero/non-finite gradient at {name}"


@pytest.mark.parametrize("kind", KINDS)
def test_log_prob_integrates_to_one(kind):
    est, _, _ = trained(flow(kind, 1), steps=20)
    assert float(est.theta_std[0]) > 2.0  # the standardisation is in force (its Jacobian counts)
    grid = np.linspace(-60.0, 60.0, 60_001)
    for x in (-1.0, 2.0, 5.0):
        with torch.no_grad():
            density = torch.exp(est.log_prob(grid[:, None], np.full((len(grid), 1), x))).numpy()
        assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=1e-4)


def _cdf(est, x, grid):
    with torch.no_grad():
        density = torch.exp(est.log_prob(grid[:, None], np.full((len(grid), 1), x))).numpy()
    return np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(grid))])


@pytest.mark.parametrize("kind", KINDS)
def test_samples_follow_log_prob_1d(kind):
    """Kolmogorov-Smirnov: the empirical CDF of 20 000 draws against the CDF of exp(log q)."""
    est, _, _ = trained(flow(kind, 1), steps=20)
    grid = np.linspace(-60.0, 60.0, 60_001)
    n = 20_000
    for x in (0.0, 3.0):
        draws = np.sort(est.sample(np.array([x]), n, torch.Generator().manual_seed(3))[:, 0])
        cdf = np.interp(draws, grid, _cdf(est, x, grid))
        ks = max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n))
        assert ks < 1.63 / math.sqrt(n)  # the 1 % critical value


@pytest.mark.parametrize("kind", KINDS)
def test_samples_follow_log_prob_2d(kind):
    """The share of 40 000 draws in each cell of a 6 x 6 grid against the cell's mass under exp(log q)
    (the midpoint rule on a 400 x 400 lattice whose lines include the cells' edges)."""
    est, _, _ = trained(flow(kind, 2), steps=20)
    x = np.array([1.0, -0.5])
    draws = est.sample(x, 40_000, torch.Generator().manual_seed(4))
    lines = [np.linspace(draws[:, d].min() - 1.0, draws[:, d].max() + 1.0, 401) for d in range(2)]
    mids = [0.5 * (a[1:] + a[:-1]) for a in lines]
    g0, g1 = np.meshgrid(*mids, indexing="ij")
    with torch.no_grad():
        density = torch.exp(est.log_prob(np.stack([g0.ravel(), g1.ravel()], axis=1),
                                         np.tile(x, (g0.size, 1)))).numpy().reshape(g0.shape)
    mass = density * np.outer(np.diff(lines[0]), np.diff(lines[1]))
    assert mass.sum() == pytest.approx(1.0, abs=2e-3)
    # cells of about equal share: edges at the draws' sextiles, moved onto lattice lines
    cuts = [np.searchsorted(lines[d], np.quantile(draws[:, d], np.linspace(0, 1, 7)[1:-1])) for d in range(2)]
    edges = [lines[d][np.concatenate([[0], cuts[d], [400]])] for d in range(2)]
    counts = np.histogram2d(draws[:, 0], draws[:, 1], bins=edges)[0] / len(draws)
    bounds = [np.concatenate([[0], cuts[d], [400]]) for d in range(2)]
    cell_mass = np.array([[mass[bounds[0][i]:bounds[0][i + 1], bounds[1][j]:bounds[1][j + 1]].sum()
                           for j in range(6)] for i in range(6)])
    tolerance = 4 * np.sqrt(cell_mass * (1 - cell_mass) / len(draws)) + 1e-3
    assert np.all(np.abs(counts - cell_mass) < tolerance), np.abs(counts - cell_mass) / tolerance


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_checkpoint_round_trip_is_bit_for_bit(kind, dtype):
    est, opt, _ = trained(flow(kind, 2, seed=0, dtype=dtype, importance_weighting=True), steps=4)
    buf = io.BytesIO()
    torch.save({"estimator": est.state_dict(), "optimizer": opt.state_dict()}, buf)
    saved = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)

    other = flow(kind, 2, seed=99, dtype=dtype, importance_weighting=True)  # other initial weights
    assert not all(torch.equal(a, b) for a, b in zip(est.parameters(), other.parameters()))
    other_opt = make_optimizer(other, 1e-3)
    other.load_state_dict(saved["estimator"])
    other_opt.load_state_dict(saved["optimizer"])
    for key, value in est.state_dict().items():
        assert torch.equal(value, other.state_dict()[key]), key

    x = np.array([0.5, -0.2])
    theta = toy(50, 2, np.random.default_rng(7)).theta
    with torch.no_grad():
        assert torch.equal(est.log_prob(theta, np.tile(x, (50, 1))), other.log_prob(theta, np.tile(x, (50, 1))))
    for a, b in zip(est.posterior(x), other.posterior(x)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(est.sample(x, 20, torch.Generator().manual_seed(5)),
                                  other.sample(x, 20, torch.Generator().manual_seed(5)))
    rng_a, rng_b = np.random.default_rng(8), np.random.default_rng(8)
    for _ in range(3):  # training goes on identically
        assert train_step(est, opt, toy(64, 2, rng_a)) == train_step(other, other_opt, toy(64, 2, rng_b))
    for key, value in est.state_dict().items():
        assert torch.equal(value, other.state_dict()[key]), key


@pytest.mark.parametrize("kind", KINDS)
def test_the_generator_alone_decides_the_weights(kind):
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, b, c = flow(kind, 2, seed=7), flow(kind, 2, seed=7), flow(kind, 2, seed=8)
    assert torch.equal(torch.random.get_rng_state(), before)  # the global generator is left alone
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(next(a.parameters()), next(c.parameters()))
    np.testing.assert_array_equal(a.posterior(np.zeros(2))[1], b.posterior(np.zeros(2))[1])


def test_importance_weighted_loss_by_hand():
    est = flow("nsf", 1, importance_weighting=True)
    rng = np.random.default_rng(2)
    batch = toy(64, 1, rng)
    batch.log_prior, batch.log_q = rng.normal(size=64), rng.normal(size=64)
    w = iw_weights(batch.log_prior, batch.log_q)
    expected_state = copy.deepcopy(est)
    expected_state.observe(torch.as_tensor(batch.theta), torch.as_tensor(batch.x))
    with torch.no_grad():
        expected = -(torch.as_tensor(w) * expected_state.log_prob(batch.theta, batch.x)).sum()
    stats = train_step(est, make_optimizer(est, 1e-3), batch)
    assert stats["loss"] == pytest.approx(float(expected), rel=1e-12)
    assert stats["ess"] == pytest.approx(1.0 / (64 * float((w * w).sum())), rel=1e-12)
    assert stats["w_max"] == pytest.approx(64 * w.max(), rel=1e-12)


def test_npe_training_reaches_the_exact_posterior():
    """theta ~ N(0, 1), x = theta + 0.1 eps: q(theta | x) -> N(x / 1.01, 0.01 / 1.01)."""
    sigma = 0.1
    est = FlowPosterior(EstimatorConfig(name="flow", hidden=[32, 32], normalize=True, ema_momentum=0.05), 1,
                        make_prior(PriorConfig(), 1), torch.Generator().manual_seed(0))
    opt = make_optimizer(est, 3e-3)
    rng = np.random.default_rng(0)
    for step in range(600):
        if step == 400:
            set_lr(opt, 1e-3)
        theta = rng.normal(size=(256, 1))
        train_step(est, opt, Rows(theta, theta + sigma * rng.normal(size=theta.shape)))
    true_std = sigma / math.sqrt(1 + sigma**2)
    for x in (-1.0, 0.3, 1.5):
        mean, var = est.posterior(np.array([x]))
        assert abs(mean[0] - x / (1 + sigma**2)) < 0.25 * true_std
        assert math.sqrt(var[0]) / true_std == pytest.approx(1.0, abs=0.15)
    # the sample diagnostics on it: C2ST against exact posterior draws at x_obs, and the
    # ground-truth-free coverage on held-out pairs (TARP; HPD from the flow's own log q)
    generator = torch.Generator().manual_seed(11)
    x_obs = np.array([0.3])
    reference = x_obs / (1 + sigma**2) + true_std * rng.normal(size=(1000, 1))
    assert ds.c2st(est.sample(x_obs, 1000, generator), reference, seed=1) < 0.58
    theta = rng.normal(size=(300, 1))
    x = theta + sigma * rng.normal(size=theta.shape)
    draws = ds.posterior_draws(est, x, 200, generator)  # (300, 200, 1)
    assert ds.tarp_coverage(draws, theta)["tarp_error"] < 0.1
    with torch.no_grad():
        log_q_draws = est.log_prob(draws.reshape(-1, 1), np.repeat(x, 200, axis=0)).reshape(300, 200).numpy()
        log_q_true = est.log_prob(theta, x).numpy()
    assert ds.hpd_coverage(log_q_draws, log_q_true)["tarp_error"] < 0.1


@pytest.mark.parametrize(
    "options, message",
    [
        ({"residual": True}, "does not use residual"),
        ({"loss": "nll"}, "does not use loss"),
        ({"variance_source": "validation"}, "does not use variance_source"),
        ({"center_output": False}, "does not use center_output"),
        ({"preset": "calibrated"}, "does not use residual"),
    ],
)
def test_config_rejects_what_a_flow_does_not_use(options, message):
    with pytest.raises(ValidationError, match=message):
        EstimatorConfig(name="flow", **options)


def test_config_flow_fields_are_for_the_flow_only():
    assert EstimatorConfig().model_dump() == {**EstimatorConfig().model_dump(), "flow": "nsf", "transforms": 3, "bins": 8,
                                               "passes": None}
    with pytest.raises(ValidationError, match="applies to estimator 'flow' only"):
        EstimatorConfig(name="gaussian_ema", bins=4)
    cfg = EstimatorConfig(name="flow", flow="maf", transforms=2)
    est = make_estimator(cfg, 2, make_prior(PriorConfig(), 2), torch.Generator().manual_seed(0))
    assert isinstance(est, FlowPosterior)



@pytest.mark.parametrize("kind", KINDS)
def test_a_coupling_flow_conditions_half_the_parameters_on_the_other_half_and_inverts(kind):
    """estimator.passes = 2: each transform's output i depends on the inputs of the other half
    only (its Jacobian in u is zero within a half, where the fully autoregressive one's is not),
    so its inverse takes two passes; draws map back to their noise, and the option is the flow's."""
    x = torch.tensor([[0.3, -0.2, 0.1, 0.5]], dtype=torch.float64)
    u = torch.tensor([0.1, -0.4, 0.7, 0.2], dtype=torch.float64)
    jacobians = {}
    for passes in (None, 2):
        est, _, _ = trained(flow(kind, 4, transforms=1, passes=passes, dtype="float64"), steps=3)
        transform = est.flow(est._context(x)).transform
        jacobians[passes] = torch.autograd.functional.jacobian(lambda v: transform(v.unsqueeze(0))[0], u)
        z = torch.randn(64, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        assert torch.allclose(transform(transform.inv(z)), z, atol=1e-8)
    coupled = jacobians[2].abs() > 0
    assert coupled.diagonal().all() and coupled.sum() == 4 + 4  # the diagonal and one 2 x 2 block
    assert (jacobians[None].abs() > 0).sum() == 4 + 6  # the diagonal and every pair on one side
    with pytest.raises(ValidationError, match="applies to estimator 'flow' only"):
        EstimatorConfig(name="gaussian_ema", passes=2)
    with pytest.raises(ValidationError, match="passes"):
        EstimatorConfig(name="flow", passes=1)

@pytest.mark.parametrize("decay", [0.0, "adaptive", "early stop"])
def test_inline_run_with_a_flow_stops_and_resumes_exactly(tmp_path, decay):
    """A 300-step run (100 prior-only warm-up steps) stopped at step 150 and resumed equals one
    never stopped; with the adaptive weight decay too (its state is in the checkpoint), and with
    the early stop at 4 steps per batch beside a fixed decay (a resume in the middle of a batch)."""
    from falcon_lite.engine.inline import run_inline
    from falcon_lite.store import runs
    from falcon_lite.store.db import make_engine, migrate, session_factory

    url = f"sqlite:///{tmp_path / 'flow.db'}"
    migrate(url)
    config = with_overrides(RunConfig(), {
        "estimator.name": "flow", "estimator.hidden": [16, 16], "estimator.normalize": True,
        "estimator.flow": "maf", "simulator.sigma_obs": 0.1,
        "training.steps": 300, "training.warmup_steps": 100, "training.checkpoint_every": 50,
        "buffer.simulations_per_step": 32, "buffer.min_training": 32, "buffer.max_training": 32,
        "training.batch_size": 32, "training.weight_decay": 0.1 if decay == "early stop" else decay,
    })
    if decay == "early stop":  # beside a fixed decay; a limit low enough that this run passes steps over
        config = with_overrides(config, {"training.early_stop": {"limit": 0.01, "min_share": 0.25},
                                         "runtime.steps_per_batch": 4})
    engine = make_engine(url)

    def run(stop_at=None):
        with session_factory(engine).begin() as s:
            run_id = runs.create_run(s, config).id
        if stop_at is None:
            run_inline(engine, run_id)
        else:
            seen = []
            run_inline(engine, run_id, should_stop=lambda: len(seen) >= stop_at,
                       on_step=lambda step, row: seen.append(step))
            with session_factory(engine).begin() as s:
                assert (runs.get_run(s, run_id).status, runs.get_run(s, run_id).step) == ("stopped", stop_at)
            run_inline(engine, run_id)
        with session_factory(engine).begin() as s:
            assert runs.get_run(s, run_id).status == "completed"
            return runs.metrics_since(s, run_id, limit=None)

    straight, resumed = run(), run(stop_at=150)
    engine.dispose()
    assert [r["step"] for r in straight] == list(range(300))
    assert resumed == straight
    assert all(np.isfinite(r["std_ratio"]) for r in straight)
    if decay == "early stop":  # a fresh batch every 4 steps; a count of the steps passed over in every row
        assert [r["step"] for r in straight if "held_out_loss" in r] == list(range(0, 300, 4))
        assert "coverage_68" in straight[-4]
        passed = [r["passed_steps"] for r in straight]
        assert passed == sorted(passed) and 0 < passed[-1] <= 225 and passed[:4] == [0.0] * 4
        assert all("weight_decay" not in r for r in straight)  # the fixed decay stays as it is
        return
    assert "coverage_68" in straight[-1]  # the held-out checks ran on the flow's posterior_batch
    assert "passed_steps" not in straight[-1]
    assert all(np.isfinite(r["held_out_loss"]) for r in straight)  # every step took a fresh batch in
    decays = [r.get("weight_decay") for r in straight]
    if decay == "adaptive":  # set from the first batch after a step on
        assert decays[0] is None and all(d is not None and 0 <= d <= 0.2 for d in decays[1:]) and max(decays[1:]) > 0
    else:
        assert decays == [None] * 300


def test_the_adaptive_decay_follows_the_gap_by_hand():
    """core/decay.py's rule on numbers checked by hand: nothing before the first step; the
    training loss averaged per step, the gap per batch; the decay in proportion to the gap up to
    the ceiling, never below zero."""
    from falcon_lite.core.decay import DecayControl

    control = DecayControl(ceiling=0.2, scale=2.0)
    assert control.observe_held_out(5.0) is None and control.gap is None
    control.observe_step(1.0)
    control.observe_step(float("nan"))  # passed over
    control.observe_step(2.0)  # train = 0.9 * 1 + 0.1 * 2 = 1.1
    assert control.train == pytest.approx(1.1)
    assert control.observe_held_out(2.1) == pytest.approx(0.1)  # gap 1.0: half the ceiling
    assert control.observe_held_out(11.1) == pytest.approx(0.2)  # gap 0.8 * 1 + 0.2 * 10 = 2.8: the ceiling
    assert control.gap == pytest.approx(2.8)
    for _ in range(30):
        last = control.observe_held_out(-20.0)  # rows it has not seen score better: no decay
    assert last == 0.0
    assert DecayControl(**control.to_dict()) == control


def test_the_early_stop_takes_fewer_of_a_batchs_steps_as_the_gap_widens_by_hand():
    """core/decay.py's `steps_to_take` on numbers checked by hand: every step while the gap is
    unknown or within the limit; k * limit / gap rounded above it, down to k * min_share, and
    never none. A followed gap with a fixed decay sets no decay."""
    from falcon_lite.core.decay import DecayControl

    control = DecayControl(ceiling=None, scale=2.0)
    assert control.steps_to_take(5, 1.0, 0.2) == 5  # no gap yet
    control.observe_step(1.0)
    assert control.observe_held_out(1.5) is None and control.gap == pytest.approx(0.5)  # a fixed decay: unchanged
    assert control.steps_to_take(5, 1.0, 0.2) == 5  # within the limit
    control.gap = 2.0
    assert control.steps_to_take(5, 1.0, 0.2) == 2  # 5 * 1 / 2 = 2.5, rounded to even
    assert control.steps_to_take(10, 1.0, 0.2) == 5
    control.gap = 4.0
    assert control.steps_to_take(5, 1.0, 0.2) == 1  # 1.25
    assert control.steps_to_take(5, 1.0, 0.5) == 2  # min_share: 2.5
    control.gap = 100.0
    assert control.steps_to_take(10, 1.0, 0.2) == 2
    assert control.steps_to_take(2, 1.0, 0.1) == 1  # never none
    assert DecayControl(**control.to_dict()) == control
    old = {"ceiling": 0.2, "scale": 2.0, "train": 1.0, "gap": 0.5}  # a checkpoint from before the early stop
    assert DecayControl(**old).passed == 0


def test_the_early_stop_is_for_a_density_trained_k_steps_a_batch():
    from falcon_lite.engine.problem import ConfigError, check_config

    early = {"training.early_stop": {"limit": 1.0}, "runtime.steps_per_batch": 5}
    with pytest.raises(ConfigError, match="follows the held-out loss") as err:
        check_config(with_overrides(RunConfig(), early))
    assert err.value.loc == ("training", "early_stop")
    flow = {**early, "estimator.name": "flow"}
    with pytest.raises(ConfigError, match="needs runtime.steps_per_batch = k"):
        check_config(with_overrides(RunConfig(), {**flow, "runtime.steps_per_batch": None}))
    check_config(with_overrides(RunConfig(), flow))
    for bad in ({"limit": 0.0}, {"min_share": 0.0}, {"min_share": 1.5}, {"min_share": float("nan")}, {"gap": 1.0}):
        with pytest.raises(ValidationError, match="early_stop"):
            with_overrides(RunConfig(), {"training.early_stop": bad})


def test_without_the_batch_checks_a_run_learns_the_same_flow_with_no_alarm_or_coverage(tmp_path):
    """`training.batch_checks = false`: no alarm and no expected coverage on the fresh batches (a
    flow's posterior at each row is draws), and nothing else changes: the same metrics otherwise,
    the held-out loss included, to the last bit, and the same weights at the end."""
    from falcon_lite.engine.inline import run_inline
    from falcon_lite.store import runs
    from falcon_lite.store.db import make_engine, migrate, session_factory

    url = f"sqlite:///{tmp_path / 'checks.db'}"
    migrate(url)
    engine = make_engine(url)
    base = with_overrides(RunConfig(), {
        "estimator.name": "flow", "estimator.hidden": [16, 16], "estimator.normalize": True,
        "simulator.sigma_obs": 0.1, "training.steps": 120, "training.warmup_steps": 40,
        "buffer.simulations_per_step": 32, "buffer.min_training": 32, "buffer.max_training": 64,
        "training.batch_size": 32, "training.weight_decay": "adaptive", "training.checkpoint_every": 120,
    })

    def run(checks: bool):
        with session_factory(engine).begin() as s:
            run_id = runs.create_run(s, with_overrides(base, {"training.batch_checks": checks})).id
        state = run_inline(engine, run_id)
        with session_factory(engine).begin() as s:
            return runs.metrics_since(s, run_id, limit=None), state.estimator.state_dict()

    (checked, weights), (unchecked, same_weights) = run(True), run(False)
    engine.dispose()
    checks = {name for row in checked for name in row if name.startswith(("alarm", "coverage"))}
    assert {"alarm", "alarm_z", "alarm_ema", "coverage_68", "coverage_95"} <= checks
    assert all(not name.startswith(("alarm", "coverage")) for row in unchecked for name in row)
    assert unchecked == [{k: v for k, v in row.items() if k not in checks} for row in checked]
    assert all(np.isfinite(row["held_out_loss"]) for row in unchecked)
    assert all(torch.equal(weights[name], same_weights[name]) for name in weights)


def test_the_adaptive_quota_needs_the_batch_checks():
    from falcon_lite.engine.problem import ConfigError, check_config

    adaptive = {"buffer.prior_fraction": "adaptive", "training.batch_checks": False}
    with pytest.raises(ConfigError, match="follows the explosion alarm") as err:
        check_config(with_overrides(RunConfig(), adaptive))
    assert err.value.loc == ("training", "batch_checks")
    check_config(with_overrides(RunConfig(), {**adaptive, "buffer.prior_fraction": 0.2}))
    check_config(with_overrides(RunConfig(), {**adaptive, "training.batch_checks": True}))


def test_the_adaptive_decay_is_for_an_estimator_with_a_density():
    from falcon_lite.engine.problem import ConfigError, check_config

    with pytest.raises(ConfigError, match="follows the held-out loss") as err:
        check_config(with_overrides(RunConfig(), {"training.weight_decay": "adaptive"}))
    assert err.value.loc == ("training", "weight_decay")
    check_config(with_overrides(RunConfig(), {"training.weight_decay": "adaptive", "estimator.name": "flow"}))
    for bad in ("sometimes", -0.1, float("nan")):
        with pytest.raises(ValidationError, match='must be a number >= 0 or "adaptive"'):
            with_overrides(RunConfig(), {"training.weight_decay": bad})


@pytest.mark.parametrize("weighted", [False, True])
def test_a_fresh_batch_is_scored_by_the_weights_that_have_not_seen_it(weighted):
    """`held_out_loss`: the flow's own loss on a fresh batch's rows with finite x (weighted as
    its training is), with the weights as they are; a step on that batch lowers it, which is
    why the engine takes it before any step has seen the batch (Driver.ingest)."""
    from falcon_lite.core.policy import Origin
    from falcon_lite.core.samples import Samples
    from falcon_lite.engine.loop import held_out
    from falcon_lite.engine.state import new_state

    config = with_overrides(RunConfig(), {"estimator.name": "flow", "estimator.hidden": [16, 16],
                                          "estimator.importance_weighting": weighted, "simulator.sigma_obs": 0.1})
    state = new_state(config)
    rng = np.random.default_rng(3)
    theta = rng.normal(0.3, 0.2, (40, 1))
    x = theta + 0.1 * rng.standard_normal((40, 1))
    x[7] = np.nan  # a failed simulation: not scored
    log_q, log_prior = rng.normal(0, 1, 40), rng.normal(0, 1, 40)
    batch = Samples(theta, x, np.full(40, Origin.PROPOSAL), log_q, log_prior, step=5)

    def by_hand() -> float:
        keep = np.arange(40) != 7
        with torch.no_grad():
            log_q_rows = state.estimator.log_prob(theta[keep], x[keep]).double().numpy()
        w = iw_weights(log_prior[keep], log_q[keep]) if weighted else np.full(39, 1 / 39)
        return float(-(w * log_q_rows).sum())

    before = held_out(state, batch)["held_out_loss"]
    assert before == pytest.approx(by_hand(), rel=1e-5)
    fine = batch.take(np.arange(40) != 7)
    for _ in range(20):
        train_step(state.estimator, state.optimizer, fine)
    after = held_out(state, batch)["held_out_loss"]
    assert after == pytest.approx(by_hand(), rel=1e-5) and after < before - 0.1
    gaussian = new_state(with_overrides(RunConfig(), {"simulator.sigma_obs": 0.1}))
    assert "held_out_loss" not in held_out(gaussian, batch)  # its loss is not a density's


@pytest.fixture
def flushable():
    """Skips where the CPU has no flush-to-zero mode that torch can set; the flag starts off."""
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU has no flush-to-zero mode that torch can set")
    torch.set_flush_denormal(False)
    assert not subnormals.flushing() and np.float32(1e-39) * np.float32(1.0) > 0
    yield
    torch.set_flush_denormal(False)


def test_subnormals_are_flushed_for_the_block_and_the_flag_put_back_as_found(flushable):
    with subnormals.subnormals_flushed():
        assert subnormals.flushing()
        assert (torch.tensor([1e-39]) * 1).item() == 0.0 and np.float32(1e-39) * np.float32(1.0) == 0
    assert not subnormals.flushing()
    with pytest.raises(RuntimeError), subnormals.subnormals_flushed():
        raise RuntimeError("a step that fails")
    assert not subnormals.flushing()
    torch.set_flush_denormal(True)  # a caller that flushes for its whole thread (bench/sbibm.py) keeps it
    with subnormals.subnormals_flushed():
        assert subnormals.flushing()
    assert subnormals.flushing()


def test_the_flow_computes_with_subnormals_flushed_and_the_simulator_without(flushable):
    """Weight decay pulls unused weights into float32's subnormal range, where an x86 CPU
    multiplies many times slower: a training step, the flow's draws and its log q flush them to
    zero (seen from inside the network), and leave the thread as they found it, so that the
    user's simulator, called after them in the same thread, computes with them kept."""
    from falcon_lite.engine import loop
    from tests.test_chunks import proposed

    est = flow("nsf", dim=2, x_dim=2)
    seen = []
    est.flow.register_forward_hook(lambda module, args, out: seen.append(subnormals.flushing()))
    backward = []
    next(est.flow.parameters()).register_hook(lambda grad: backward.append(subnormals.flushing()))
    opt = make_optimizer(est, 1e-3, weight_decay=0.1)
    train_step(est, opt, toy(64, 2, np.random.default_rng(0)))
    est.sample(np.zeros(2), 10, torch.Generator().manual_seed(0))
    est.sample_and_log_prob(np.zeros(2), 10, torch.Generator().manual_seed(0))
    est.log_prob(np.zeros((3, 2)), np.zeros((3, 2)))
    assert seen == [True] * 4 and backward == [True] and not subnormals.flushing()

    simulator, batch = proposed()
    kept = []

    def simulate(theta, stream):
        kept.append(float(np.float32(1e-39) * np.float32(1.0)))
        return simulator(theta, stream)

    loop.simulate(simulate, batch, seed=11, chunk=8)
    assert len(kept) == 4 and min(kept) > 0  # float32's nearest to 1e-39, not zero
