"""The example problem plugins (examples/problems, installed by `make venv`): registered, valid
with their defaults, deterministic given the generator, references that match what they
should, and each one run briefly by the inline engine."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from falcon_lite import plugins
from falcon_lite.config import RunConfig
from falcon_lite.core.problems import Problem, ProductPrior
from falcon_lite.engine.inline import run_inline
from falcon_lite.engine.loop import sizes_of
from falcon_lite.store import runs
from falcon_lite.store.buffer import SampleStore
from falcon_lite.store.db import make_engine, migrate, session_factory

falcon_lite_examples = pytest.importorskip(
    "falcon_lite_examples", reason="examples/problems is not installed (make venv installs it)")
from falcon_lite_examples import gaussian_linear, signal, slcp, slow, two_moons  # noqa: E402
from falcon_lite_examples._smc import smc  # noqa: E402

EXAMPLES = ["flaky", "gaussian_linear", "signal", "slcp", "slow", "two_moons"]
SHAPES = {"gaussian_linear": (10, (10,)), "two_moons": (2, (2,)), "slcp": (5, (8,)), "signal": (3, (1000,)),
          "slow": (2, (2,)), "flaky": (2, (2,))}
FAST = {"slow": {"ms_per_simulation": 0.2}}  # what the quick tests pass to the factories


def make(name: str, **params) -> Problem:
    return plugins.bind(plugins.PROBLEMS, name, {**FAST.get(name, {}), **params})()


def outcome(problem: Problem, theta: np.ndarray, seed: int):
    """What one call gives: x, or the error it raised (as text)."""
    try:
        return problem.simulate(theta, np.random.default_rng(seed))
    except Exception as exc:  # noqa: BLE001 - the flaky simulator raises by design
        return f"{type(exc).__name__}: {exc}"


def same(a, b) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return np.array_equal(a, b, equal_nan=True)


# -- every example -----------------------------------------------------------------------
def test_every_example_is_registered():
    plugins.refresh()
    assert set(EXAMPLES) <= set(plugins.names(plugins.PROBLEMS))


@pytest.mark.parametrize("name", EXAMPLES)
def test_factory_builds_a_valid_problem_with_defaults(name):
    problem = plugins.bind(plugins.PROBLEMS, name, {})()
    d, x_shape = SHAPES[name]
    assert isinstance(problem, Problem) and problem.name == name
    assert (problem.dim, problem.x_shape) == (d, x_shape)
    assert list(problem.observations) == ["1", "2", "3"]
    for x_obs in problem.observations.values():
        assert x_obs.shape == x_shape and np.isfinite(x_obs).all()
    assert problem.observation(None)[0] == "1"  # {"problem": {"name": ...}} is a complete run
    assert plugins.schema(plugins.PROBLEMS, name)["required"] == []  # every parameter has a default
    assert problem.describe()["reference"] == ["exact"]


@pytest.mark.parametrize("name", EXAMPLES)
def test_simulate_has_the_right_shape_and_is_deterministic_given_the_generator(name):
    problem = make(name)
    theta = problem.prior.sample(7, np.random.default_rng(0))
    assert theta.shape == (7, problem.dim) and problem.prior.inside(theta).all()
    seen = [outcome(problem, theta, seed) for seed in range(20)]
    assert all(same(a, outcome(problem, theta, seed)) for seed, a in enumerate(seen))
    arrays = [x for x in seen if not isinstance(x, str)]
    assert len(arrays) >= 10 and all(x.shape == (7, *problem.x_shape) for x in arrays)
    assert not same(arrays[0], arrays[1])  # the noise comes from the generator


@pytest.mark.parametrize("name", EXAMPLES)
def test_references_at_every_observation(name):
    problem = make(name)
    for key, x_obs in problem.observations.items():
        ref = problem.reference_at(key, x_obs)
        assert ref.mean.shape == ref.std.shape == (problem.dim,)
        assert np.isfinite(ref.mean).all() and (ref.std > 0).all()
        assert ref.samples is not None and ref.samples.shape == (10_000, problem.dim)
        assert problem.prior.inside(ref.samples).all()


# -- each reference against what it should be --------------------------------------------
def importance(problem_prior, log_likelihood, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Brute force: prior draws weighted by the likelihood; (mean, std, ESS)."""
    theta = problem_prior.sample(n, np.random.default_rng(seed))
    log_w = log_likelihood(theta)
    w = np.exp(log_w - log_w.max())
    w /= w.sum()
    mean = w @ theta
    return mean, np.sqrt(w @ (theta - mean) ** 2), 1.0 / float(w @ w)


def gaussian_log_likelihood(x_obs, noise_var):
    return lambda theta: -0.5 * ((theta - x_obs) ** 2).sum(axis=1) / noise_var


def test_gaussian_linear_exact_posterior_matches_brute_force():
    problem = gaussian_linear.make(dim=2)
    x_obs = problem.observations["1"]
    mean, cov = gaussian_linear.posterior(x_obs)
    np.testing.assert_allclose(mean, x_obs / 2)
    np.testing.assert_allclose(cov, 0.05 * np.eye(2))
    ref = problem.reference(x_obs)
    np.testing.assert_allclose(ref.std, math.sqrt(0.05))
    np.testing.assert_allclose(ref.samples.mean(axis=0), mean, atol=0.01)
    is_mean, is_std, ess = importance(problem.prior, gaussian_log_likelihood(x_obs, 0.1), 400_000, seed=1)
    assert ess > 50_000
    np.testing.assert_allclose(is_mean, mean, atol=0.005)
    np.testing.assert_allclose(is_std, np.sqrt(np.diag(cov)), rtol=0.02)


def test_the_smc_sampler_matches_a_closed_form():
    """The sampler behind slcp's reference, on gaussian_linear (3 parameters), where the
    posterior is known."""
    problem = gaussian_linear.make(dim=3)
    x_obs = problem.observations["2"]
    mean, cov = gaussian_linear.posterior(x_obs)
    draws = smc(gaussian_log_likelihood(x_obs, 0.1), problem.prior, 5000, np.random.default_rng(3))
    np.testing.assert_allclose(draws.mean(axis=0), mean, atol=0.02)
    np.testing.assert_allclose(np.cov(draws, rowvar=False), cov, atol=0.006)


def test_two_moons_reference_lies_where_the_simulator_puts_x_obs_and_is_bimodal():
    problem = two_moons.make()
    x_obs = problem.observations["1"]  # theta* = (0.3, 0.4)
    samples = problem.reference(x_obs).samples
    # x_obs - g(theta) must be a point of the simulator's half ring p (radius 0.1 +- 0.01 around (0.25, 0))
    s, d = samples.sum(axis=1), samples[:, 1] - samples[:, 0]
    p = x_obs - np.stack([-np.abs(s) / math.sqrt(2), d / math.sqrt(2)], axis=1)
    radius = np.hypot(p[:, 0] - 0.25, p[:, 1])
    assert (p[:, 0] >= 0.25 - 1e-12).all() and (np.abs(radius - 0.1) < 0.06).all()
    assert abs(radius.mean() - 0.1) < 0.002 and abs(radius.std() - 0.01) < 0.002
    # two moons, one on each side of theta1 + theta2 = 0, of equal mass (both inside the box here)
    assert abs(np.mean(s > 0) - 0.5) < 0.02
    for side in (s > 0, s < 0):
        assert np.abs(samples[side].mean(axis=0) - samples.mean(axis=0)).min() > 0.2
    # against rejection ABC from the prior: E|theta1 + theta2| and E[theta2 - theta1]
    rng = np.random.default_rng(4)
    theta = problem.prior.sample(2_000_000, rng)
    kept = theta[np.linalg.norm(two_moons.simulate(theta, rng) - x_obs, axis=1) < 0.02]
    assert len(kept) > 500
    assert abs(np.abs(kept.sum(axis=1)).mean() - np.abs(s).mean()) < 0.02
    assert abs((kept[:, 1] - kept[:, 0]).mean() - d.mean()) < 0.02
    assert abs(np.mean(kept.sum(axis=1) > 0) - 0.5) < 0.1


def test_slcp_reference_matches_importance_sampling_and_what_is_known_exactly():
    problem = slcp.make()
    x_obs = problem.observations["3"]  # theta* = (1.5, 0.5, -0.8, 1.1, 0.3)
    samples = problem.reference(x_obs).samples
    # brute force: millions of prior draws weighted by the exact likelihood
    is_mean, is_std, ess = importance(ProductPrior(slcp.PARAMETERS), lambda t: slcp.log_likelihood(t, x_obs),
                                      3_000_000, seed=5)
    assert ess > 2000
    np.testing.assert_allclose(samples.mean(axis=0), is_mean, atol=0.08)
    np.testing.assert_allclose(samples.std(axis=0), is_std, rtol=0.08)
    # the signs of theta3 and theta4 are not identified: four mirror modes of equal mass
    assert np.all(np.abs(np.mean(samples[:, 2:4] > 0, axis=0) - 0.5) < 0.02)
    # exactly: E[m | x] is the mean of the four draws where the box does not cut the posterior
    # of m (observation 2: posterior std of m about 0.5, 3 std from the box; at observation 3
    # m2's std is 1 and the box shifts its mean by 0.09, as importance sampling agrees)
    x_2 = problem.observations["2"]
    m = problem.reference(x_2).samples[:, :2]
    np.testing.assert_allclose(m.mean(axis=0), x_2.reshape(4, 2).mean(axis=0), atol=0.05)
    # the likelihood's Sigma is the simulator's: the covariance of its draws at theta*
    theta = np.array(slcp.TRUE_THETA["3"])[None]
    x = slcp.simulate(np.repeat(theta, 2000, axis=0), np.random.default_rng(6)).reshape(-1, 4, 2)
    cov = np.cov(x.reshape(-1, 2), rowvar=False)
    s1, s2, rho = theta[0, 2] ** 2, theta[0, 3] ** 2, math.tanh(theta[0, 4])
    np.testing.assert_allclose(cov, [[s1**2, rho * s1 * s2], [rho * s1 * s2, s2**2]], rtol=0.05, atol=0.01)


def test_signal_posterior_is_the_least_squares_solution():
    problem = signal.make()
    x_obs = problem.observations["2"]  # theta* = (0.5, -1.0, 2.0)
    mean, cov = signal.posterior(x_obs)
    # the posterior is least squares on the data stacked with the prior as pseudo-observations
    design = signal.design()
    a = np.vstack([design / 1.0, np.diag(1.0 / signal.PRIOR_STD)])
    b = np.concatenate([x_obs / 1.0, signal.PRIOR_MEAN / signal.PRIOR_STD])
    solution, *_ = np.linalg.lstsq(a, b, rcond=None)
    np.testing.assert_allclose(mean, solution, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(cov, np.linalg.inv(a.T @ a), rtol=1e-9, atol=1e-12)
    assert np.all(np.abs(mean - signal.TRUE_THETA["2"]) < 4 * np.sqrt(np.diag(cov)))
    ref = problem.reference(x_obs)
    np.testing.assert_allclose(ref.std, np.sqrt(np.diag(cov)))
    np.testing.assert_allclose(np.cov(ref.samples, rowvar=False), cov, rtol=0.05, atol=1e-4)


def test_slow_takes_its_time_and_gives_what_a_fast_one_gives():
    theta = np.zeros((20, 2))
    quick = slow.make(ms_per_simulation=0.0).simulate(theta, np.random.default_rng(7))
    started = time.perf_counter()
    x = slow.make(ms_per_simulation=5.0, cpu_share=0.5).simulate(theta, np.random.default_rng(7))
    assert time.perf_counter() - started >= 0.1  # 20 rows x 5 ms
    np.testing.assert_array_equal(x, quick)


def test_flaky_raises_and_returns_nan_rows_now_and_then():
    problem = make("flaky", fail_share=0.3, nan_share=0.2)
    theta = np.zeros((50, 2))
    seen = [outcome(problem, theta, seed) for seed in range(100)]
    failed = [x for x in seen if isinstance(x, str)]
    assert 15 <= len(failed) <= 45 and all(x.startswith("SimulationFailed") for x in failed)
    nan_rows = np.concatenate([np.isnan(x).any(axis=1) for x in seen if not isinstance(x, str)])
    assert 0.1 < nan_rows.mean() < 0.3 and np.isnan(np.stack([x for x in seen if not isinstance(x, str)])).any()


# -- every example in the engine ---------------------------------------------------------
STEPS, PER_STEP = 40, 32
RUNS = {
    "gaussian_linear": {}, "two_moons": {}, "slcp": {}, "slow": {},
    "flaky": {"problem": {"params": {"fail_share": 0.2, "nan_share": 0.2}}},
    "signal-mlp": {"estimator": {"embedding": {"name": "mlp"}}},
    "signal-cnn1d": {"estimator": {"embedding": {"name": "cnn1d"}}},
    "signal-flow": {"estimator": {"name": "flow", "transforms": 2, "embedding": {"name": "cnn1d"}}},
    "two_moons-observation-2": {"problem": {"observation": "2"}},
}


def config_for(case: str) -> RunConfig:
    name = case.split("-")[0]
    extra = RUNS[case]
    return RunConfig.model_validate({
        "problem": {"name": name, "params": FAST.get(name, {}), **extra.get("problem", {})},
        "estimator": {"hidden": [16, 16], **extra.get("estimator", {})},
        "training": {"steps": STEPS, "warmup_steps": 10, "batch_size": 32, "checkpoint_every": 20},
        "buffer": {"simulations_per_step": PER_STEP, "min_training": 32, "max_training": 64},
    })


def test_a_problem_run_config_survives_its_own_dump():
    """What the store keeps of a run (model_dump) validates again (load_state reads it)."""
    config = config_for("two_moons-observation-2")
    assert RunConfig.model_validate(config.model_dump(mode="json")) == config


def run_case(tmp_path, case: str):
    """Run `case` inline to its end; (state, the stored trainable samples, the composition)."""
    url = f"sqlite:///{tmp_path / 'examples.db'}"
    migrate(url)
    engine = make_engine(url)
    try:
        with session_factory(engine).begin() as s:
            run_id = runs.create_run(s, config_for(case)).id
        state = run_inline(engine, run_id)
        with session_factory(engine).begin() as s:
            run = runs.get_run(s, run_id)
            assert (run.status, run.step) == ("completed", STEPS)
            rows = runs.metrics_since(s, run_id, limit=None)
        assert [r["step"] for r in rows] == list(range(STEPS)) and all(np.isfinite(r["loss"]) for r in rows)
        problem = state.simulator.problem
        store = SampleStore(engine, run_id, sizes_of(state), problem.dim, x_shape=problem.x_shape)
        with store.mirror("test") as mirror:
            mirror.sync()
            stored = mirror.trainable()
        return state, stored, store.composition()
    finally:
        engine.dispose()


@pytest.mark.parametrize("case", sorted(RUNS))
def test_every_example_runs_inline_and_stores_samples_of_its_shapes(tmp_path, case):
    state, stored, composition = run_case(tmp_path, case)
    problem = state.simulator.problem
    assert state.simulator.observation == RUNS[case].get("problem", {}).get("observation", "1")
    n = len(stored.theta)
    assert n > 0 and stored.theta.shape == (n, problem.dim) and stored.x.shape == (n, *problem.x_shape)
    assert np.isfinite(stored.theta).all() and np.isfinite(stored.x).all()
    assert composition.total + composition.rejected == STEPS * PER_STEP  # every simulation accounted for
    assert (composition.rejected > 0) == case.startswith("flaky")  # the failed calls and NaN rows


@pytest.mark.parametrize("case", ["slcp", "two_moons"])
def test_proposals_stay_inside_a_bounded_prior(tmp_path, case):
    state, stored, _ = run_case(tmp_path, case)
    assert state.simulator.problem.prior.inside(stored.theta).all()
    assert np.isfinite(stored.log_prior).all()
