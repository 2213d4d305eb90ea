"""Regime changes with hysteresis (falcon_lite/core/regime.py) and the events the Recorder
writes from them: a flickering flag gives a few events, not one per crossing."""

from __future__ import annotations

import numpy as np
import pytest

from falcon_lite.config import RunConfig
from falcon_lite.core.regime import RegimeTracker
from falcon_lite.store import runs
from falcon_lite.store.db import make_engine, migrate, session_factory


def flickering(seed: int = 0) -> list[float]:
    """constant_regime flags shaped like the seed's run: constant during warm-up, then mostly
    identity with a growing share of constant rows, then mostly constant after the explosion."""
    rng = np.random.default_rng(seed)
    p = np.concatenate([np.ones(1000), np.full(1000, 0.02), np.linspace(0.02, 0.4, 2500), np.full(1500, 0.95)])
    return (rng.random(p.size) < p).astype(float).tolist()


def test_tracker_announces_each_lasting_change_once():
    flags = flickering()
    assert sum(a != b for a, b in zip(flags, flags[1:])) > 300  # the raw flag flickers
    tracker = RegimeTracker()
    changes = [(step, r) for step, flag in enumerate(flags) if (r := tracker.update(flag))]
    assert [r for _, r in changes] == ["identity", "constant"]
    assert 1000 <= changes[0][0] < 1100 and 4500 <= changes[1][0] < 4600


def test_tracker_first_row_sets_the_regime_and_nan_counts_as_constant():
    tracker = RegimeTracker()
    assert tracker.update(0.0) is None and tracker.regime == "identity"
    changes = [tracker.update(float("nan")) for _ in range(100)]
    assert [c for c in changes if c] == ["constant"]


@pytest.fixture
def engine(tmp_path):
    url = f"sqlite:///{tmp_path / 'regime.db'}"
    migrate(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


def test_recorder_writes_regime_changes_with_hysteresis(engine):
    from falcon_lite.engine.recorder import Recorder

    with session_factory(engine).begin() as s:
        run_id = runs.create_run(s, RunConfig(name="flicker")).id
    recorder = Recorder(engine, run_id, max_seconds=3600)
    for step, flag in enumerate(flickering()):
        recorder.add({"step": step, "loss": 1.0, "constant_regime": flag}, step + 1)
    recorder.flush(6000)
    with session_factory(engine).begin() as s:
        events = [e.data for e in runs.events_since(s, run_id, 0, 100_000) if e.kind == "regime"]
    assert [e["regime"] for e in events] == ["identity", "constant"]
    assert all(isinstance(e["step"], int) for e in events)
