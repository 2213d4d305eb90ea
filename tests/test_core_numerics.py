"""Simulators, priors, proposal and diagnostics on inputs with hand-computed answers (float64)."""

import math

import numpy as np
import pytest
import torch

from falcon_lite.config import PriorConfig, SimulatorConfig
from falcon_lite.core import diagnostics as dg
from falcon_lite.core.policy import Origin
from falcon_lite.core.priors import make_prior
from falcon_lite.core.proposal import TemperedProposal, disfavour_mask, draw_parameters
from falcon_lite.core.simulators import SIMULATORS, make_simulator


# --- simulators -------------------------------------------------------------------------------

def test_gaussian_conjugate_posterior_by_hand():
    sim = make_simulator(SimulatorConfig(name="gaussian", sigma_obs=1.0, x_obs=[3.0]))
    prior = make_prior(PriorConfig(name="normal", loc=1.0, scale=2.0), 1)
    mean, std = sim.true_posterior(prior)
    # precision 1/4 + 1 = 1.25; mean (1/4 + 3) / 1.25 = 2.6; std sqrt(1 / 1.25)
    assert mean == pytest.approx([2.6], rel=1e-14)
    assert std == pytest.approx([math.sqrt(0.8)], rel=1e-14)


def test_gaussian_seed_default_posterior_is_x_obs_and_sigma():
    sim = make_simulator(SimulatorConfig())
    mean, std = sim.true_posterior(make_prior(PriorConfig(), 1))
    assert mean == pytest.approx([0.3 * 1e12 / (1e12 + 1)], rel=1e-15)
    assert std == pytest.approx([1e-6], rel=1e-11)


def test_gaussian_uniform_prior_posterior_and_error():
    sim = make_simulator(SimulatorConfig(name="gaussian", sigma_obs=0.01, x_obs=[0.3, -2.0]))
    mean, std = sim.true_posterior(make_prior(PriorConfig(name="uniform", low=-5, high=5), 2))
    np.testing.assert_array_equal(mean, [0.3, -2.0])
    np.testing.assert_array_equal(std, [0.01, 0.01])
    with pytest.raises(ValueError, match="well inside"):
        sim.true_posterior(make_prior(PriorConfig(name="uniform", low=0.0, high=0.3), 2))


def test_exp_noise_delta_method_posterior():
    sim = make_simulator(SimulatorConfig(name="exp_noise"))
    assert sim.dim == 3
    mean, std = sim.true_posterior(make_prior(PriorConfig(), 3))
    np.testing.assert_allclose(mean, [-5.0, 0.0, 5.0], atol=1e-12)
    np.testing.assert_allclose(std, 1e-6 * np.exp([5.0, 0.0, -5.0]), rtol=1e-12)


@pytest.mark.parametrize("name", sorted(SIMULATORS))
def test_simulator_noise_has_sigma_and_follows_the_generator(name):
    cfg = SimulatorConfig(name=name, sigma_obs=0.5, x_obs=[1.0, 2.0, 3.0])
    sim = make_simulator(cfg)
    theta = np.full((20000, 3), 0.25)
    x = sim(theta, np.random.default_rng(7))
    clean = theta if name == "gaussian" else np.exp(theta)
    assert x.shape == (20000, 3)
    assert np.std(x - clean) == pytest.approx(0.5, rel=0.02)
    np.testing.assert_array_equal(x, sim(theta, np.random.default_rng(7)))
    assert not np.array_equal(x, sim(theta, np.random.default_rng(8)))


def test_unknown_simulator_named():
    cfg = SimulatorConfig().model_copy(update={"name": "nope"})
    with pytest.raises(ValueError, match="unknown simulator 'nope'"):
        make_simulator(cfg)


# --- priors -----------------------------------------------------------------------------------

def test_normal_prior_log_prob_by_hand():
    prior = make_prior(PriorConfig(name="normal", loc=1.0, scale=2.0), 2)
    # at theta = (1, 3): -0.5 * (0 + 1) - 2 * (log 2 + 0.5 log 2pi)
    expected = -0.5 - 2 * (math.log(2.0) + 0.5 * math.log(2 * math.pi))
    assert prior.log_prob(np.array([[1.0, 3.0]])) == pytest.approx([expected], rel=1e-14)
    t = torch.tensor([[1.0, 3.0]], dtype=torch.float64)
    assert prior.log_prob_t(t).item() == pytest.approx(expected, rel=1e-14)


def test_uniform_prior_support_and_density():
    prior = make_prior(PriorConfig(name="uniform", low=-1.0, high=3.0), 2)
    lp = prior.log_prob(np.array([[0.0, 2.9], [0.0, 3.1], [-1.5, 0.0]]))
    assert lp[0] == pytest.approx(-2 * math.log(4.0))
    assert np.isneginf(lp[1]) and np.isneginf(lp[2])
    draws = prior.sample(5000, np.random.default_rng(0))
    assert draws.shape == (5000, 2) and draws.min() >= -1.0 and draws.max() <= 3.0
    np.testing.assert_allclose(prior.mean, [1.0, 1.0])


def test_prior_sample_moments_and_determinism():
    prior = make_prior(PriorConfig(name="normal", loc=0.5, scale=3.0), 3)
    draws = prior.sample(50000, np.random.default_rng(1))
    np.testing.assert_allclose(draws.mean(0), 0.5, atol=0.05)
    np.testing.assert_allclose(draws.std(0), 3.0, rtol=0.02)
    np.testing.assert_array_equal(draws[:10], prior.sample(10, np.random.default_rng(1)))


# --- proposal ---------------------------------------------------------------------------------

def test_tempered_proposal_log_prob_by_hand():
    q = TemperedProposal([0.0, 1.0], [1.0, 0.5], temperature=2.0)
    # widths sqrt(2) and 1; at (0, 2): -0.5 * (0 + 1) - log sqrt(2) - log 1 - log 2pi
    expected = -0.5 - 0.5 * math.log(2.0) - math.log(2 * math.pi)
    assert q.log_prob(np.array([[0.0, 2.0]])) == pytest.approx([expected], rel=1e-14)
    draws = q.sample(40000, np.random.default_rng(0))
    np.testing.assert_allclose(draws.std(0), [math.sqrt(2.0), 1.0], rtol=0.02)


def test_tempered_proposal_rejects_bad_variance():
    with pytest.raises(ValueError, match="finite positive variance"):
        TemperedProposal([0.0], [0.0], 2.0)
    with pytest.raises(ValueError, match="temperature"):
        TemperedProposal([0.0], [1.0], 0.0)


def test_draw_parameters_layout_and_log_densities():
    prior = make_prior(PriorConfig(), 2)
    q = TemperedProposal([0.3, -0.3], [1e-4, 1e-4], 2.0)
    theta, origin, log_q, log_prior = draw_parameters(
        prior, q, 10, 3, np.random.default_rng(0), np.random.default_rng(1))
    assert theta.shape == (10, 2)
    np.testing.assert_array_equal(origin, [Origin.PRIOR] * 3 + [Origin.PROPOSAL] * 7)
    np.testing.assert_array_equal(log_prior, prior.log_prob(theta))
    np.testing.assert_array_equal(log_q[:3], log_prior[:3])
    np.testing.assert_array_equal(log_q[3:], q.log_prob(theta[3:]))
    assert np.all(np.abs(theta[3:] - [0.3, -0.3]) < 0.1)


def test_draw_parameters_warmup_is_all_prior():
    prior = make_prior(PriorConfig(), 1)
    theta, origin, log_q, log_prior = draw_parameters(
        prior, None, 8, 0, np.random.default_rng(0), np.random.default_rng(1))
    assert np.all(origin == Origin.PRIOR)
    np.testing.assert_array_equal(theta, prior.sample(8, np.random.default_rng(0)))
    np.testing.assert_array_equal(log_q, log_prior)


def test_draw_parameters_share_draws_across_prior_fractions():
    prior = make_prior(PriorConfig(), 1)
    q = TemperedProposal([0.3], [1e-6], 2.0)
    a = draw_parameters(prior, q, 128, 0, np.random.default_rng(5), np.random.default_rng(6))[0]
    b = draw_parameters(prior, q, 128, 26, np.random.default_rng(5), np.random.default_rng(6))[0]
    c = draw_parameters(prior, q, 128, 64, np.random.default_rng(5), np.random.default_rng(6))[0]
    np.testing.assert_array_equal(b[26:], a[:102])  # same proposal draws
    np.testing.assert_array_equal(c[64:], a[:64])
    np.testing.assert_array_equal(c[:26], b[:26])  # same prior draws


def test_draw_parameters_rejects_bad_count():
    with pytest.raises(ValueError, match="n_prior"):
        draw_parameters(make_prior(PriorConfig(), 1), None, 4, 5,
                        np.random.default_rng(0), np.random.default_rng(0))


def test_disfavour_mask_by_hand():
    drawn = np.array([-1.0, -1.0, -1.0, -1.0])
    now = np.array([-1.0, -4.0, -3.0, -10.0])
    np.testing.assert_array_equal(disfavour_mask(drawn, now, -2.5), [False, True, False, True])
    origin = np.array([1, 1, 1, 0])
    np.testing.assert_array_equal(disfavour_mask(drawn, now, -2.5, origin), [False, True, False, False])


# --- diagnostics ------------------------------------------------------------------------------

def test_std_ratio_and_bias_by_hand():
    np.testing.assert_allclose(dg.std_ratio([4e-12, 1e-12], [1e-6, 2e-6]), [2.0, 0.5], rtol=1e-12)
    np.testing.assert_allclose(dg.bias_over_sigma([0.3 + 3e-6], [0.3], [1e-6]), [3.0], rtol=1e-9)
    np.testing.assert_allclose(dg.bias_over_sigma([1.0, -1.0], [0.0, 0.0], [2.0, 4.0]), [0.5, -0.25])


def test_ess_fraction_by_hand():
    assert dg.ess_fraction([0.0, 0.0, 0.0, 0.0]) == pytest.approx(1.0)
    assert dg.ess_fraction(np.log([1.0, 1.0, 2.0])) == pytest.approx(16 / 18)
    assert dg.ess_fraction([0.0, -np.inf, -np.inf, -np.inf]) == pytest.approx(0.25)
    assert dg.ess_fraction(np.log([1.0, 1.0, 2.0]) + 800.0) == pytest.approx(16 / 18)  # stable


def test_regime():
    assert dg.regime([0.5e-6, -0.9e-6], 1e-6) == "identity"
    assert dg.regime([0.5e-6, -1.1e-6], 1e-6) == "constant"


def test_summarize_worst_dims():
    row = dg.summarize(mean=[0.0 - 5.0, 1.0 + 2.0], var=[0.25, 9.0], truth_mean=[0.0, 1.0],
                       truth_std=[1.0, 1.0], temperature=2.0)
    # std ratios 0.5 and 3: 3 is farther from 1 in log; biases -5 and 2: -5 is largest
    assert row["std_ratio"] == pytest.approx(3.0)
    assert row["std_ratio_0"] == pytest.approx(0.5) and row["std_ratio_1"] == pytest.approx(3.0)
    assert row["bias_over_sigma"] == pytest.approx(-5.0)
    assert row["abs_bias_over_sigma"] == pytest.approx(5.0)
    assert row["bias_over_sigma_1"] == pytest.approx(2.0)
    assert row["regime"] == "constant"
    assert row["learned_var"] == pytest.approx(9.0)
    assert row["proposal_width"] == pytest.approx(math.sqrt(18.0))
    calm = dg.summarize([0.3], [1e-12], [0.3], [1e-6])
    assert calm["regime"] == "identity" and calm["std_ratio"] == pytest.approx(1.0)


STEPS = np.arange(6)


@pytest.mark.parametrize(
    "ratios, biases, expected",
    [
        # converges at step 2 and stays: calibrated
        ([50, 5, 1.05, 0.95, 1.2, 1.0], [9, 3, 0.5, 0.2, 0.1, 0.3], ("calibrated", 2, None, 1.2)),
        # converges at step 1, exceeds 10 at step 3: exploded (even though it ends at 1)
        ([50, 1.0, 3, 20, 900, 1.0], [9, 0.1, 0.5, 30, 40, 0.1], ("exploded", 1, 3, 900.0)),
        # the seed's "stable" rows: std_ratio ~1000, never near 1
        ([2000, 1500, 1100, 1000, 1200, 1135], [1] * 6, ("miscalibrated", None, None, None)),
        # calibrated width but biased at the end
        ([5, 1.0, 1.0, 1.0, 1.0, 1.0], [0, 0, 0, 0, 0, 1.5], ("miscalibrated", 1, None, 1.0)),
        # ends at 1.3: outside [0.8, 1.25]
        ([5, 1.0, 1.0, 1.0, 1.0, 1.3], [0] * 6, ("miscalibrated", 1, None, 1.3)),
        # exactly on the closed calibration bounds
        ([5, 1.0, 1.0, 1.0, 1.0, 1.25], [0] * 6, ("calibrated", 1, None, 1.25)),
        # 0.9 and 1.1 are not "reached" (open interval); > 10 before convergence is no explosion
        ([20, 0.9, 1.1, 1.09, 11, 1.0], [0] * 6, ("exploded", 3, 4, 11.0)),
        # non-finite anywhere: diverged (the finite prefix still reports its convergence)
        ([5, 1.0, 2, np.inf, np.nan, np.nan], [0] * 6, ("diverged", 1, None, 2.0)),
        ([5, 5, 5, 5, 5, 5], [0, 0, np.nan, 0, 0, 0], ("diverged", None, None, None)),
    ],
)
def test_classify_outcome_by_hand(ratios, biases, expected):
    assert dg.classify_outcome(STEPS * 10, ratios, biases) == (
        expected[0],
        None if expected[1] is None else expected[1] * 10,
        None if expected[2] is None else expected[2] * 10,
        expected[3],
    )


def test_classify_outcome_per_dim_series():
    ratios = np.array([[5, 5], [1.0, 1.05], [1.0, 12.0], [1.0, 1.0]])
    biases = np.zeros((4, 2))
    assert dg.classify_outcome([0, 1, 2, 3], ratios, biases) == ("exploded", 1, 2, 12.0)
    ratios[2, 1] = 1.0
    assert dg.classify_outcome([0, 1, 2, 3], ratios, biases) == ("calibrated", 1, None, 1.05)
    ratios[1, 0] = 2.0  # one dim outside (0.9, 1.1): not converged at step 1
    assert dg.classify_outcome([0, 1, 2, 3], ratios, biases)[1] == 2


class FixedPosterior:
    """A stand-in posterior with mean x and unit variance (a data object, not our code)."""

    def posterior_batch(self, x):
        x = np.asarray(x, dtype=np.float64)
        return x.copy(), np.ones_like(x)


def test_expected_coverage_by_hand():
    x = np.zeros((4, 1))
    theta = np.array([[0.1], [-0.5], [1.0], [2.0]])  # |z| = 0.1, 0.5, 1.0, 2.0
    cov = dg.expected_coverage(FixedPosterior(), theta, x)
    # thresholds: 0.674 (50%), 0.994 (68%), 1.960 (95%)
    assert cov["coverage_50"] == 0.5 and cov["coverage_68"] == 0.5 and cov["coverage_95"] == 0.75
    assert cov["coverage_95_0"] == 0.75
