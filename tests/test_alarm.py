"""The ground-truth-free explosion alarm on hand-checkable inputs."""

from __future__ import annotations

import numpy as np
import pytest

from falcon_lite.core.alarm import THRESHOLD, residual_z, smooth


def test_residual_z_by_hand():
    theta = np.array([[1.0, 0.0], [3.0, 0.0], [5.0, 2.0]])
    pred = np.zeros_like(theta)
    # dim 0: r = 1, 3, 5 -> mean 3, population std sqrt(8/3); dim 1: r = 0, 0, 2 -> mean 2/3, std sqrt(8/9)
    np.testing.assert_allclose(residual_z(theta, pred), [3 / np.sqrt(8 / 3), (2 / 3) / np.sqrt(8 / 9)])


def test_residual_z_degenerate_inputs():
    assert np.isnan(residual_z(np.ones((1, 1)), np.zeros((1, 1)))).all()  # one row: no spread
    assert residual_z(np.ones((3, 1)), np.zeros((3, 1)))[0] == np.inf  # constant offset, no noise


@pytest.mark.parametrize("bias_over_sigma", [0.1, 0.5, 2.0, 20.0])
def test_identity_model_with_bias_reads_bias_over_sigma(bias_over_sigma):
    """mu(x) = x + b on x = theta + noise: z estimates |b| / sigma, the seed's threshold quantity."""
    rng = np.random.default_rng(0)
    sigma = 1e-6
    theta = 0.3 + 3 * sigma * rng.standard_normal((200_000, 1))
    x = theta + sigma * rng.standard_normal(theta.shape)
    z = residual_z(theta, x + bias_over_sigma * sigma)
    np.testing.assert_allclose(z, [bias_over_sigma], rtol=0.02)
    assert (z[0] > THRESHOLD) == (bias_over_sigma > 1)


def test_constant_model_is_seen_through_the_spread():
    """mu(x) = const: residuals spread over the proposal width, z stays small."""
    rng = np.random.default_rng(1)
    theta = 0.3 + 1e-3 * rng.standard_normal((10_000, 1))
    assert residual_z(theta, np.full_like(theta, 0.3))[0] < 0.05


def test_smooth_starts_on_the_first_finite_value_and_averages():
    assert smooth(None, float("nan")) != smooth(None, float("nan"))  # still nothing: nan
    assert smooth(None, 2.0) == 2.0
    assert smooth(2.0, 4.0, momentum=0.25) == pytest.approx(2.5)
    assert smooth(2.0, float("inf")) == 2.0  # a non-finite reading does not poison the average


def test_alarm_fires_only_after_a_healthy_stretch():
    from falcon_lite.core.alarm import ARM_STEPS, Alarm, first_alarm

    # never healthy (a run that never converged): stays silent however large z is
    assert first_alarm(range(1000), [50.0] * 1000) is None
    # healthy for ARM_STEPS steps, then the average crosses 1: fires at that step
    ema = [0.2] * ARM_STEPS + [0.9, 1.0, 3.0]
    assert first_alarm(range(len(ema)), ema) == ARM_STEPS + 1
    # one step short of arming: silent
    assert first_alarm(range(ARM_STEPS + 1), [0.2] * (ARM_STEPS - 1) + [2.0, 2.0]) is None
    # raised while above, cleared below, and it is part of the checkpoint
    alarm = Alarm()
    raised = [alarm.observe_ema(v) for v in [0.1] * ARM_STEPS + [2.0, 0.5]]
    assert raised[-2:] == [True, False]
    assert Alarm(**alarm.to_dict()) == alarm


def test_recorded_alarm_matches_the_rule_over_its_series():
    """The engine's online alarm and `first_alarm` over the recorded series are one rule."""
    from falcon_lite.core.alarm import Alarm, first_alarm

    rng = np.random.default_rng(3)
    zs = np.concatenate([rng.uniform(0, 0.5, 300), rng.uniform(1.5, 3, 50)])
    alarm, online, emas = Alarm(), None, []
    for step, z in enumerate(zs):
        if alarm.observe(z) and online is None:
            online = step
        emas.append(alarm.ema)
    assert online is not None and online == first_alarm(range(len(zs)), emas)
