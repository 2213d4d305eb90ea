"""The verdict on a run that ended, from its metrics rows.

Where the problem has a reference posterior (the rows hold ``std_ratio``), the stress
contract's outcome (`falcon_lite.core.diagnostics.classify_outcome`): ``calibrated``,
``exploded``, ``miscalibrated`` or ``diverged``. Otherwise the explosion alarm's verdict
(`falcon_lite.core.alarm`): ``alarm_raised`` if it fired at any step, ``alarm_quiet`` if it
watched and never fired; None for a run with no row that says either.
"""

from __future__ import annotations

import numpy as np
from sqlalchemy.orm import Session

from falcon_lite.core.diagnostics import classify_outcome
from falcon_lite.store import runs

NAMES = ("std_ratio", "abs_bias_over_sigma", "alarm")


def verdict(rows: list[dict]) -> str | None:
    """The outcome of metrics rows ``{"step": n, name: value | None}`` (see the module doc)."""
    judged = [r for r in rows if "std_ratio" in r]
    if judged:
        nan = float("nan")
        steps = [r["step"] for r in judged]
        ratio = [nan if r["std_ratio"] is None else r["std_ratio"] for r in judged]
        bias = [nan if r.get("abs_bias_over_sigma") is None else r["abs_bias_over_sigma"] for r in judged]
        return classify_outcome(np.array(steps), np.array(ratio), np.array(bias))[0]
    alarms = [r["alarm"] for r in rows if r.get("alarm") is not None]
    if not alarms:
        return None
    return "alarm_raised" if any(a >= 1.0 for a in alarms) else "alarm_quiet"


def judge(session: Session, run_id: int) -> str | None:
    """The verdict on run `run_id` from its stored metrics rows."""
    return verdict(runs.metrics_since(session, run_id, names=NAMES, limit=None))
