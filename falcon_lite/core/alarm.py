"""A ground-truth-free explosion alarm, from the residuals of fresh proposal samples.

Take the newest batch of proposal-origin samples *before* training on it, and its
residuals r = theta - mu(x) under the current estimate. In the identity regime the
learned mean is mu(x) ~ x + b near x_obs (EXPLOSION_NOTES.md), so r ~ -b - noise:

    mean(r) ~ -b,    std(r) ~ sigma_obs    =>    z = |mean(r)| / std(r) ~ |b| / sigma_obs.

z estimates |bias|/sigma, the quantity whose crossing 1 starts the runaway, without
knowing the true posterior; the same holds per dimension for x = f(z) + noise with a
smooth invertible f (std(r) is then the posterior width).

The alarm smooths z (max over dimensions) with an exponential moving average and fires
when that average crosses THRESHOLD *after the run has been healthy* (below it) for
ARM_STEPS steps in a row. An explosion is the loss of a converged identity regime, so a
run that never reached it (e.g. prior-mixed runs whose width stays ~1000 sigma) does not
arm the alarm: their z stays far above 1 from the start, which is a different finding
(never calibrated), not an imminent explosion.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

THRESHOLD = 1.0
MOMENTUM = 0.05
ARM_STEPS = 100
SOUND = THRESHOLD / 2  # an armed run whose average is below this is a safe point to roll back to


def residual_z(theta: np.ndarray, mean_pred: np.ndarray) -> np.ndarray:
    """|mean(r)| / std(r) per dimension for residuals r = theta - mean_pred, both (n, D).

    >>> residual_z(np.array([[1.0], [3.0]]), np.array([[0.0], [0.0]]))
    array([2.])
    """
    r = np.asarray(theta, dtype=np.float64) - np.asarray(mean_pred, dtype=np.float64)
    if len(r) < 2:
        return np.full(r.shape[1], np.nan)
    std = r.std(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(std > 0, np.abs(r.mean(axis=0)) / std, np.inf)


def smooth(previous: float | None, value: float, momentum: float = MOMENTUM) -> float:
    """The alarm's moving average; the first finite value starts it."""
    if not np.isfinite(value):
        return previous if previous is not None else float("nan")
    if previous is None or not np.isfinite(previous):
        return float(value)
    return (1.0 - momentum) * previous + momentum * float(value)


@dataclass
class Alarm:
    """The alarm's running state (part of a run's checkpoint)."""

    ema: float | None = None
    healthy: int = 0  # consecutive steps with ema below the threshold
    armed: bool = False

    def observe_ema(self, ema: float) -> bool:
        """Take the next smoothed value; return whether the alarm is raised."""
        self.ema = ema
        if not np.isfinite(ema):
            return False
        if ema < THRESHOLD:
            self.healthy += 1
            self.armed = self.armed or self.healthy >= ARM_STEPS
            return False
        self.healthy = 0
        return self.armed

    def observe(self, z: float) -> bool:
        """Take the next raw z; return whether the alarm is raised."""
        return self.observe_ema(smooth(self.ema, z))

    @property
    def sound(self) -> bool:
        """Armed, and its average well below the threshold: a state worth keeping to roll back to."""
        return self.armed and self.ema is not None and self.ema < SOUND

    def to_dict(self) -> dict:
        return asdict(self)


def first_alarm(steps, ema_series) -> int | None:
    """The step at which the alarm first fires over a recorded series of its moving average.

    >>> first_alarm(range(6), [5, 0.5, 0.5, 2, 2, 2]) is None  # healthy too briefly to arm
    True
    """
    alarm = Alarm()
    for step, ema in zip(steps, ema_series):
        if alarm.observe_ema(float("nan") if ema is None else float(ema)):
            return int(step)
    return None
