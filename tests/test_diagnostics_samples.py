"""The sample-based diagnostics (core/diagnostics_samples.py) against answers known in advance:
C2ST of one distribution ~ 0.5 and of well-separated ones ~ 1; TARP and HPD coverage of the
exact posterior of a conjugate Gaussian model ~ nominal, of a too-narrow one below it."""

import numpy as np
import pytest
import torch

from falcon_lite.core import diagnostics_samples as ds

SIGMA = 0.5  # x = theta + SIGMA * eps, theta ~ N(0, 1): posterior N(x / (1 + s^2), s^2 / (1 + s^2))


def conjugate(n_pairs, n_draws, dim, seed, width=1.0):
    """Held-out pairs, draws from the exact posterior widened by `width`, and the log densities."""
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=(n_pairs, dim))
    x = theta + SIGMA * rng.normal(size=theta.shape)
    mean, std = x / (1 + SIGMA**2), width * SIGMA / np.sqrt(1 + SIGMA**2)
    draws = mean[:, None, :] + std * rng.normal(size=(n_pairs, n_draws, dim))

    def log_q(t):  # (N, ..., D) -> (N, ...), the (widened) Gaussian's density
        z = (t - (mean if t.ndim == 2 else mean[:, None, :])) / std
        return -0.5 * (z * z).sum(-1) - dim * np.log(std)

    return theta, draws, log_q(draws), log_q(theta)


def test_c2st_of_one_distribution_is_chance():
    rng = np.random.default_rng(0)
    assert ds.c2st(rng.normal(size=(500, 2)), rng.normal(size=(500, 2)), seed=1) == pytest.approx(0.5, abs=0.06)


def test_c2st_of_separated_distributions_is_one():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(300, 2)), rng.normal(size=(300, 2)) + [6.0, 0.0]
    assert ds.c2st(a, b, seed=1) > 0.98
    shifted = ds.c2st(a, rng.normal(size=(300, 2)) + [1.0, 0.0], seed=1)  # overlapping: in between
    assert 0.6 < shifted < 0.9


def test_c2st_is_deterministic_for_a_seed_and_checks_shapes():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(200, 1)), rng.normal(size=(200, 1)) + 0.5
    assert ds.c2st(a, b, seed=3) == ds.c2st(a, b, seed=3)
    with pytest.raises(ValueError, match="two samples"):
        ds.c2st(a, np.zeros((10, 2)))


@pytest.mark.parametrize("dim", [1, 3])
def test_tarp_of_the_exact_posterior_is_nominal(dim):
    theta, draws, _, _ = conjugate(1000, 200, dim, seed=dim)
    curve = ds.tarp_coverage(draws, theta, seed=0)
    assert curve["ecp"].shape == curve["levels"].shape == ds.LEVELS.shape
    assert curve["tarp_error"] < 0.06


@pytest.mark.parametrize("dim", [1, 3])
def test_tarp_finds_a_too_narrow_posterior(dim):
    theta, draws, _, _ = conjugate(1000, 200, dim, seed=dim, width=0.4)
    assert ds.tarp_coverage(draws, theta, seed=0)["tarp_error"] > 0.15


def test_hpd_coverage_is_nominal_when_calibrated_and_low_when_narrow():
    theta, draws, log_q_draws, log_q_true = conjugate(1000, 200, 2, seed=5)
    calibrated = ds.hpd_coverage(log_q_draws, log_q_true)
    assert calibrated["tarp_error"] < 0.06
    theta, draws, log_q_draws, log_q_true = conjugate(1000, 200, 2, seed=5, width=0.5)
    narrow = ds.hpd_coverage(log_q_draws, log_q_true)
    level = int(np.argmin(np.abs(ds.LEVELS - 0.7)))
    assert narrow["ecp"][level] < 0.4  # the 70 % region holds the truth far less often


def test_marginals_integrate_to_one_and_match_a_known_density():
    samples = np.random.default_rng(0).normal(size=(200_000, 2)) * [1.0, 2.0]
    out = ds.marginals(samples, bins=80, bounds=[[-6, 6], [-12, 12]])
    assert out["edges"].shape == (2, 81) and out["density"].shape == (2, 80)
    widths = np.diff(out["edges"], axis=1)
    np.testing.assert_allclose((out["density"] * widths).sum(1), 1.0, atol=1e-3)
    centres = 0.5 * (out["edges"][:, 1:] + out["edges"][:, :-1])
    normal = np.exp(-0.5 * (centres / [[1.0], [2.0]]) ** 2) / (np.sqrt(2 * np.pi) * np.array([[1.0], [2.0]]))
    assert np.max(np.abs(out["density"] - normal)) < 0.02


def test_posterior_draws_asks_the_estimator_at_each_row():
    class Shifted:  # a posterior N(x, 1)
        def sample(self, x_obs, n, generator):
            return x_obs + torch.randn((n, len(x_obs)), generator=generator, dtype=torch.float64).numpy()

    x = np.array([[0.0, 10.0], [-5.0, 3.0], [1.0, 1.0]])
    draws = ds.posterior_draws(Shifted(), x, 4000, torch.Generator().manual_seed(0))
    assert draws.shape == (3, 4000, 2)
    np.testing.assert_allclose(draws.mean(1), x, atol=0.1)
