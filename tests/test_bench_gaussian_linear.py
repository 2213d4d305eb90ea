"""bench/gaussian_linear_kl.py's scores against the exact posterior, on Gaussians whose answers
are known in closed form: the KL, the best classifier's accuracy, and the moments."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from flow_overfit import DIM, best_accuracy, exact_posterior, kl_exact_to  # noqa: E402
from gaussian_linear_kl import moments_against  # noqa: E402

X_OBS = np.linspace(-1.0, 1.0, DIM)


def shifted(p: torch.distributions.MultivariateNormal, by: float):
    """log q of p moved by `by` of its own standard deviations along the first parameter."""
    move = torch.zeros(DIM, dtype=torch.float64)
    move[0] = by * p.covariance_matrix[0, 0].sqrt()
    q = torch.distributions.MultivariateNormal(p.loc + move, p.covariance_matrix)
    return q.log_prob


def test_the_exact_posterior_scores_as_itself():
    p = exact_posterior(X_OBS)
    assert kl_exact_to(p.log_prob, p) == 0.0
    assert best_accuracy(p.log_prob, p) == 0.5


@pytest.mark.parametrize("by", [0.5, 2.0])
def test_a_shifted_posterior_scores_its_closed_form(by):
    p = exact_posterior(X_OBS)
    # KL between Gaussians of one covariance: by^2 / 2; TV: 2 Phi(by / 2) - 1
    assert kl_exact_to(shifted(p, by), p) == pytest.approx(by**2 / 2, rel=0.05)
    tv = math.erf(by / 2 / math.sqrt(2))
    assert best_accuracy(shifted(p, by), p) == pytest.approx(0.5 + tv / 2, abs=0.01)


def test_the_moments_say_how_far_and_which_way():
    p = exact_posterior(X_OBS)
    sd = float(p.covariance_matrix[0, 0].sqrt())
    z = torch.randn(20_000, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    draws = (p.loc + z @ p.scale_tril.T).numpy()
    right = moments_against(draws, p)
    assert right["mean_shift"] < 0.05 and right["width_ratio"] == pytest.approx(1.0, abs=0.02)
    pulled = moments_against(draws * 0.8, p)  # every mean a fifth of the way to the prior's, 0
    assert pulled["toward_prior"] == pytest.approx(1.0, abs=0.01)
    expected = 0.2 * np.linalg.norm(X_OBS / 2) / sd
    assert pulled["mean_shift"] == pytest.approx(expected, rel=0.05)
    assert pulled["width_ratio"] == pytest.approx(0.8, abs=0.02)
    away = moments_against(draws - draws.mean(axis=0) + X_OBS, p)  # moved away from the prior's mean
    assert away["toward_prior"] == pytest.approx(-1.0, abs=0.01)
