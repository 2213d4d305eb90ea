"""The engine on a real SQLite file (and PostgreSQL): config, determinism, resume, stress output."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from pydantic import ValidationError

from falcon_lite.config import RunConfig, with_overrides
from falcon_lite.core.estimators import ESTIMATORS
from falcon_lite.engine.inline import run_inline
from falcon_lite.engine.stress import run_stress
from falcon_lite.store import runs
from falcon_lite.store.db import make_engine, session_factory
from falcon_lite.store.buffer import SampleStore
from falcon_lite.engine.loop import sizes_of
from falcon_lite.engine.state import new_state

SMALL = {
    "estimator.hidden": [16, 16],
    "training.steps": 60,
    "training.warmup_steps": 20,
    "training.checkpoint_every": 25,
    "buffer.simulations_per_step": 32,
    "buffer.min_training": 32,
    "buffer.max_training": 32,
    "training.batch_size": 32,
}


@pytest.fixture
def sqlite_url(tmp_path):
    from falcon_lite.store.db import migrate

    url = f"sqlite:///{tmp_path / 'engine.db'}"
    migrate(url)
    return url


def small(**overrides) -> RunConfig:
    return with_overrides(RunConfig(), {**SMALL, **overrides})


# -- config ------------------------------------------------------------------------------
def test_bare_config_is_the_seed_scenario():
    c = RunConfig()
    assert c.simulator.name == "gaussian" and c.simulator.sigma_obs == 1e-6 and c.simulator.x_obs == [0.3]
    assert (c.prior.loc, c.prior.scale) == (0.0, 1.0)
    assert c.estimator.hidden == [64, 64] and c.estimator.dtype == "float64" and c.estimator.ema_momentum == 0.01
    assert (c.training.lr, c.training.warmup_steps, c.training.lr_after_warmup) == (1e-2, 1000, 1e-3)
    assert (c.proposal.temperature, c.training.batch_size, c.training.steps) == (2.0, 128, 10_000)
    # one fresh batch of simulations per step, trained once
    assert c.buffer.simulations_per_step == c.buffer.max_training == c.buffer.min_training == c.training.batch_size
    assert c.buffer.validation_size == 0


def test_rolling_buffer_is_expressible():
    c = with_overrides(RunConfig(), {"buffer.min_training": 1024, "buffer.max_training": 1024,
                                     "buffer.validation_size": 256, "buffer.simulations_per_step": 128})
    assert c.buffer.max_training == 1024


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"buffer": {"prior_fraction": 1.5}}, "prior_fraction"),
        ({"buffer": {"min_training": 10, "max_training": 5}}, "min_training"),
        ({"training": {"steps": 0}}, "steps"),
        ({"simulator": {"name": "os.system"}}, "name"),
        ({"estimator": {"color": "red"}}, "color"),
        ({"simulator": {"sigma_obs": -1}}, "sigma_obs"),
        ({"prior": {"name": "uniform", "low": 1, "high": 0}}, "low < high"),
    ],
)
def test_bad_config_names_the_field(data, field):
    with pytest.raises(ValidationError) as info:
        RunConfig.model_validate(data)
    assert field in str(info.value)


def test_unknown_override_key_is_named():
    with pytest.raises(KeyError, match="buffer.nope"):
        with_overrides(RunConfig(), {"buffer.nope": 1})


# -- the inline runtime ------------------------------------------------------------------
def _run(url: str, config: RunConfig, **kwargs) -> tuple[int, list[dict]]:
    engine = make_engine(url)
    with session_factory(engine).begin() as s:
        run_id = runs.create_run(s, config).id
    run_inline(engine, run_id, **kwargs)
    with session_factory(engine).begin() as s:
        rows = runs.metrics_since(s, run_id, limit=None)
    engine.dispose()
    return run_id, rows


def test_inline_runtime_is_deterministic(sqlite_url):
    _, a = _run(sqlite_url, small())
    _, b = _run(sqlite_url, small())
    _, c = _run(sqlite_url, small(**{"training.seed": 7}))
    assert len(a) == 60 and [r["step"] for r in a] == list(range(60))
    assert a == b
    assert [r["loss"] for r in a] != [r["loss"] for r in c]


def test_every_simulated_sample_is_stored_and_accounted(db_url):
    config = small(**{"buffer.prior_fraction": 0.25})
    engine = make_engine(db_url)
    with session_factory(engine).begin() as s:
        run_id = runs.create_run(s, config).id
    state = run_inline(engine, run_id)
    comp = SampleStore(engine, run_id, sizes_of(state), 1).composition()
    assert comp.total == 60 * 32  # nothing lost: every simulation is a row, live or purged
    with session_factory(engine).begin() as s:
        run = runs.get_run(s, run_id)
        assert (run.status, run.step) == ("completed", 60)
        rows = runs.metrics_since(s, run_id, limit=None)
    # after warm-up every batch carries ceil(0.25 * 32) = 8 fresh prior samples
    assert all(r["trainable_prior"] >= 8 for r in rows)
    assert all(np.isfinite(r["std_ratio"]) for r in rows)
    engine.dispose()


def _stopped_at_37_and_resumed(engine, config: RunConfig) -> int:
    """A new run of `config` stopped after 37 steps (checked), then resumed to its end; its id."""
    with session_factory(engine).begin() as s:
        run_id = runs.create_run(s, config).id
    seen = []
    run_inline(engine, run_id, should_stop=lambda: len(seen) >= 37, on_step=lambda step, row: seen.append(step))
    with session_factory(engine).begin() as s:
        run = runs.get_run(s, run_id)
        assert (run.status, run.step) == ("stopped", 37)
    run_inline(engine, run_id)
    return run_id


@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
def test_stop_and_resume_continue_exactly(sqlite_url, estimator):
    """A run stopped at step 37 and resumed gives the same numbers as one never stopped, with
    every registered estimator."""
    config = small(**{"estimator.name": estimator})
    _, straight = _run(sqlite_url, config)
    engine = make_engine(sqlite_url)
    run_id = _stopped_at_37_and_resumed(engine, config)
    with session_factory(engine).begin() as s:
        assert runs.get_run(s, run_id).status == "completed"
        resumed = runs.metrics_since(s, run_id, limit=None)
    engine.dispose()
    assert [r["step"] for r in resumed] == list(range(60))
    assert resumed == straight


def test_k_steps_per_batch_inline_simulate_a_batch_every_k_steps_and_resume_exactly(sqlite_url):
    """runtime.steps_per_batch = 4 inline: batches at steps 0, 4, ..., 56 (15 of them), and a run
    stopped mid-batch (step 37) resumes to the numbers of one never stopped."""
    config = small(**{"runtime.steps_per_batch": 4})
    straight_id, straight = _run(sqlite_url, config)
    engine = make_engine(sqlite_url)
    run_id = _stopped_at_37_and_resumed(engine, config)
    with session_factory(engine).begin() as s:
        resumed = runs.metrics_since(s, run_id, limit=None)
        assert runs.last_sample_step(s, straight_id) == runs.last_sample_step(s, run_id) == 56
        assert runs.get_run(s, run_id).appended == runs.get_run(s, straight_id).appended == 15 * 32
    engine.dispose()
    assert [r["step"] for r in straight] == list(range(60))
    assert resumed == straight
    lock_step = _run(sqlite_url, small())[1]
    assert [r["loss"] for r in straight[:4]] != [r["loss"] for r in lock_step[:4]]  # steps 1-3 reuse batch 0


def test_cosine_lr_decay_falls_from_lr_after_warmup_to_zero(sqlite_url):
    config = small(**{"training.lr_decay": "cosine", "training.lr": 1e-2, "training.lr_after_warmup": 1e-3})
    rows = _run(sqlite_url, config)[1]
    lrs = np.array([r["lr"] for r in rows])
    assert np.all(lrs[:20] == 1e-2)  # the warm-up keeps training.lr
    after = lrs[20:]
    assert after[0] == pytest.approx(1e-3) and np.all(np.diff(after) < 0)
    assert after[-1] == pytest.approx(1e-3 * 0.5 * (1 + np.cos(np.pi * 39 / 40)))
    assert [r["lr"] for r in _run(sqlite_url, small())[1]][20:] == [1e-3] * 40



def test_weight_decay_reaches_the_optimizer_changes_the_numbers_and_resumes_exactly(sqlite_url):
    """training.weight_decay is Adam's L2 penalty: a run with it trains other numbers than one
    without, and stopped at 37 it resumes to the numbers of one never stopped."""
    config = small(**{"estimator.name": "flow", "training.weight_decay": 0.1})
    assert new_state(config).optimizer.param_groups[0]["weight_decay"] == 0.1
    straight = _run(sqlite_url, config)[1]
    engine = make_engine(sqlite_url)
    run_id = _stopped_at_37_and_resumed(engine, config)
    with session_factory(engine).begin() as s:
        assert runs.metrics_since(s, run_id, limit=None) == straight
    engine.dispose()
    plain = _run(sqlite_url, small(**{"estimator.name": "flow"}))[1]
    assert plain[0]["loss"] == straight[0]["loss"]  # the same start: the decay acts from the first update
    assert all(a["loss"] != b["loss"] for a, b in zip(plain[1:], straight[1:], strict=True))
    with pytest.raises(ValidationError, match="weight_decay"):
        small(**{"training.weight_decay": -0.1})

_KILLED_MID_RUN = """
import sys
from falcon_lite.engine import inline
from falcon_lite.store.db import make_engine

# only checkpoints and purges commit (no time-based commit, metrics flush or heartbeat)
inline.GROUP_COMMIT_S = inline.FLUSH_EVERY_S = inline.HEARTBEAT_S = 3600.0


def on_step(step, row):
    if step == 151:  # step 150's purge committed everything up to it; step 151's batch is held
        print("holding", flush=True)
        sys.stdin.read()  # killed here


inline.run_inline(make_engine(sys.argv[1]), int(sys.argv[2]), on_step=on_step)
"""


def test_a_run_killed_mid_group_resumes_without_losing_or_repeating_a_batch(sqlite_url):
    """kill -9 while the inline runtime holds uncommitted batches: the committed ones stay,
    the held one is simply not there, and the resumed run simulates every later step once."""
    config = small(**{"training.steps": 200, "training.checkpoint_every": 50})
    engine = make_engine(sqlite_url)
    with session_factory(engine).begin() as s:
        run_id = runs.create_run(s, config).id
    child = subprocess.Popen([sys.executable, "-c", _KILLED_MID_RUN, sqlite_url, str(run_id)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "holding"
    finally:
        child.kill()
        child.wait()
    with session_factory(engine).begin() as s:
        assert runs.last_sample_step(s, run_id) == 150  # step 151's batch was never committed
        assert runs.latest_checkpoint(s, run_id)[0] == 150
    run_inline(engine, run_id)  # resumes from the checkpoint; the database is not left locked
    with session_factory(engine).begin() as s:
        run = runs.get_run(s, run_id)
        last = runs.last_sample_step(s, run_id)
        rows = runs.metrics_since(s, run_id, limit=None)
    assert (run.status, run.step) == ("completed", 200)
    # every stored batch is whole and stored once: the batches are steps 0..last, 32 rows each
    assert run.appended == run.next_seq == (last + 1) * 32
    assert SampleStore(engine, run_id, sizes_of(new_state(config)), 1).composition().total == run.appended
    assert [r["step"] for r in rows] == list(range(200))
    engine.dispose()


def test_checkpoint_round_trip_restores_the_estimate():
    from falcon_lite.engine.state import restore

    config = small()
    state = new_state(config)
    state.step = 12
    again = restore(config, state.to_bytes())
    assert again.step == 12
    m1, v1 = state.estimator.posterior(state.simulator.x_obs)
    m2, v2 = again.estimator.posterior(again.simulator.x_obs)
    np.testing.assert_array_equal(m1, m2)
    np.testing.assert_array_equal(v1, v2)


# -- stress ------------------------------------------------------------------------------
RESULT_KEYS = {"overrides", "seed", "outcome", "converged_step", "explosion_step", "final_std_ratio",
               "final_abs_bias_over_sigma", "max_std_ratio_after_convergence", "steps", "wall_seconds"}


def test_stress_writes_the_contract(tmp_path):
    base = small(**{"training.steps": 40})
    doc = run_stress({"buffer.prior_fraction": [0.0, 0.5]}, seeds=2, steps=40, out_dir=tmp_path, workers=2, base=base)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["runs"] == doc["runs"] and len(saved["runs"]) == 4 and saved["complete"] is True
    for row in saved["runs"]:
        assert RESULT_KEYS <= set(row)
        assert row["outcome"] in {"calibrated", "exploded", "miscalibrated", "diverged"}
        assert row["steps"] == 40
    assert [(r["overrides"]["buffer.prior_fraction"], r["seed"]) for r in saved["runs"]] == [
        (0.0, 0), (0.0, 1), (0.5, 0), (0.5, 1)]
    report = (tmp_path / "report.md").read_text()
    assert "buffer.prior_fraction=0.0" in report and "buffer.prior_fraction=0.5" in report
    for png in ("std_ratio.png", "bias_over_sigma.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_policies_share_draws_during_warm_up(tmp_path):
    """Same seed, different prior fraction: warm-up is all prior, so the numbers agree exactly."""
    base = small(**{"training.steps": 15})
    run_stress({"buffer.prior_fraction": [0.0, 0.5]}, seeds=1, steps=15, out_dir=tmp_path, base=base)
    series = json.loads((tmp_path / "series.json").read_text())
    assert series[0]["std_ratio"] == series[1]["std_ratio"]


def test_interrupted_stress_keeps_the_runs_that_finished(tmp_path):
    """Ctrl-C or a cancelled job: results.json (``"complete": false``) and the report of what finished."""
    base = small(**{"training.steps": 10})

    def interrupt_after_the_first(done: int, total: int) -> None:
        if done == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_stress({"buffer.prior_fraction": [0.0, 0.5]}, seeds=1, steps=10, out_dir=tmp_path, base=base,
                   progress=interrupt_after_the_first)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["complete"] is False
    assert [(r["overrides"], r["seed"], r["steps"]) for r in saved["runs"]] == [({"buffer.prior_fraction": 0.0}, 0, 10)]
    assert len(json.loads((tmp_path / "series.json").read_text())) == 1
    assert "1 runs" in (tmp_path / "report.md").read_text()


def test_stress_rejects_a_bad_grid_up_front(tmp_path):
    with pytest.raises(KeyError, match="buffer.bogus"):
        run_stress({"buffer.bogus": [1]}, seeds=1, steps=5, out_dir=tmp_path)
    with pytest.raises(ValidationError, match="prior_fraction"):
        run_stress({"buffer.prior_fraction": [2.0]}, seeds=1, steps=5, out_dir=tmp_path)
    assert not (tmp_path / "results.json").exists()


def test_calibrated_preset_sets_its_options_and_refuses_a_contradiction():
    c = with_overrides(RunConfig(), {"estimator.preset": "calibrated"})
    assert (c.estimator.residual, c.estimator.normalize) == (True, True)
    # stays applied through dump / re-validate and further overrides
    again = with_overrides(RunConfig.model_validate(c.model_dump(mode="json")), {"buffer.prior_fraction": 0.2})
    assert (again.estimator.residual, again.estimator.normalize) == (True, True)
    with pytest.raises(ValidationError, match="preset 'calibrated' sets residual=True"):
        RunConfig.model_validate({"estimator": {"preset": "calibrated", "residual": False}})
    with pytest.raises(ValidationError, match="preset"):
        RunConfig.model_validate({"estimator": {"preset": "fastest"}})


# -- the adaptive quota ------------------------------------------------------------------
def test_adaptive_quota_config_is_validated():
    c = RunConfig.model_validate({"buffer": {"prior_fraction": "adaptive", "adaptive": {"low": 0.05, "high": 0.4}}})
    assert c.buffer.initial_fraction == 0.05
    for bad, field in (({"prior_fraction": "sometimes"}, "prior_fraction"),
                       ({"prior_fraction": "adaptive", "adaptive": {"low": 0.5, "high": 0.2}}, "low must not exceed high"),
                       ({"adaptive": {"half_life": 0}}, "half_life")):
        with pytest.raises(ValidationError, match=field):
            RunConfig.model_validate({"buffer": bad})


def test_adaptive_quota_follows_the_alarm_and_is_checkpointed():
    """Raised alarm -> the next batch draws the high share; the quota survives a checkpoint."""
    from falcon_lite.core.policy import Origin
    from falcon_lite.core.samples import Samples
    from falcon_lite.engine.loop import held_out, propose_from
    from falcon_lite.engine.state import restore

    config = small(**{"buffer.prior_fraction": "adaptive", "buffer.adaptive.low": 0.0,
                      "buffer.adaptive.high": 0.5, "buffer.adaptive.half_life": 2})
    state = new_state(config)
    posterior = (np.array([0.3]), np.array([1e-12]))

    def prior_rows(step: int) -> int:  # drawn under the quota in force
        proposed = propose_from(state.config, state.prior, step, posterior, state.prior_fraction)
        return np.count_nonzero(proposed.origin == Origin.PRIOR)

    assert prior_rows(30) == 0  # base: 0 %
    state.alarm.armed = True  # a run that was healthy long enough; now fresh residuals far off
    theta = np.full((32, 1), 0.3) + np.linspace(-1e-6, 1e-6, 32)[:, None]
    x = theta + 1.0  # the estimate (untrained: mu(x) ~ 0) is off by far more than the spread
    batch = Samples(theta, x, np.full(32, Origin.PROPOSAL), np.zeros(32), np.zeros(32), step=30)
    for _ in range(40):  # the alarm's moving average climbs past its threshold
        checks = held_out(state, batch)
    assert checks["alarm"] == 1.0 and state.prior_fraction == 0.5
    assert prior_rows(31) == 16
    again = restore(config, state.to_bytes())
    assert again.prior_fraction == 0.5
    state.alarm.armed = False  # cleared: the excess halves every half_life observations
    held_out(state, batch)
    held_out(state, batch)
    assert state.prior_fraction == pytest.approx(0.25)


def test_adaptive_rollback_restores_the_last_sound_state():
    """Healthy residuals arm the alarm and snapshot the estimator; after a drift the alarm
    fires and the estimator, optimizer and alarm go back to that snapshot (checkpointed)."""
    import torch

    from falcon_lite.core.policy import Origin
    from falcon_lite.core.samples import Samples
    from falcon_lite.engine.loop import SOUND_EVERY, held_out
    from falcon_lite.engine.state import restore

    config = small(**{"buffer.prior_fraction": "adaptive"})  # defaults: share 0 -> 0, rollback, lr x 0.1
    state = new_state(config)
    lr = state.lr(100)
    x = np.linspace(-1.0, 1.0, 32)[:, None]
    mean, _ = state.estimator.posterior_batch(x)
    offsets = np.where(np.arange(32) % 2 == 0, 1e-3, -1e-3)[:, None]  # residual mean 0: z = 0
    healthy = Samples(mean + offsets, x, np.full(32, Origin.PROPOSAL), np.zeros(32), np.zeros(32), step=30)
    for step in range(150):  # armed after 100 healthy batches; a snapshot when first sound
        state.step = step
        assert held_out(state, healthy)["rollbacks"] == 0.0
    assert state.alarm.sound and state.sound is not None
    kept_step = state.sound["step"]
    assert 100 <= kept_step and state.step - kept_step < SOUND_EVERY
    kept = {k: v.clone() for k, v in state.estimator.state_dict().items()}

    with torch.no_grad():  # the drift: the network's output moves by far more than the spread
        for p in state.estimator.parameters():
            p.add_(0.05)
    state.optimizer.state.clear()
    drifted = Samples(mean + offsets, x, np.full(32, Origin.PROPOSAL), np.zeros(32), np.zeros(32), step=31)
    for step in range(150, 400):
        state.step = step
        checks = held_out(state, drifted)
        if checks["rollbacks"]:
            break
    assert checks["alarm"] == 1.0 and state.rollbacks == 1
    for k, v in state.estimator.state_dict().items():
        assert torch.equal(v, kept[k]), k
    assert state.alarm.ema < 0.5 and state.alarm.armed  # the snapshot's alarm: not raised again at once
    assert state.alarm.healthy == 0  # and no new snapshot before a full healthy stretch
    assert state.lr(100) == pytest.approx(0.1 * lr) and state.prior_fraction == 0.0  # cooled, no prior share
    again = restore(config, state.to_bytes())
    assert again.rollbacks == 1 and again.sound["step"] == kept_step and again.lr(100) == pytest.approx(0.1 * lr)


def test_rollback_needs_a_snapshot_and_can_be_off():
    """An alarm before any sound snapshot, or with rollback off, leaves the estimator and lr as they are."""
    from falcon_lite.engine.loop import respond

    state = new_state(small(**{"buffer.prior_fraction": "adaptive"}))
    respond(state, raised=True)
    assert state.rollbacks == 0 and state.sound is None and state.lr_scale == 1.0
    state = new_state(small(**{"buffer.prior_fraction": "adaptive", "buffer.adaptive.rollback": False}))
    state.alarm.armed, state.alarm.healthy, state.alarm.ema = True, 500, 0.1
    respond(state, raised=False)
    assert state.sound is None  # no snapshots kept
    with pytest.raises(ValidationError, match="lr_factor"):
        RunConfig.model_validate({"buffer": {"adaptive": {"lr_factor": 0}}})


def test_adaptive_run_records_its_quota_and_share(sqlite_url):
    _, rows = _run(sqlite_url, small(**{"buffer.prior_fraction": "adaptive", "buffer.adaptive.low": 0.25,
                                      "buffer.adaptive.high": 0.5}))
    assert {r["prior_fraction"] for r in rows} == {0.25}  # no alarm in a short healthy run
    # 20 warm-up batches all prior, then 8 of 32 per batch: the cumulative share drawn
    assert rows[-1]["prior_drawn_share"] == pytest.approx((20 * 32 + 40 * 8) / (60 * 32))


def test_recorder_raises_an_event_per_rollback_and_none_on_resume(sqlite_url):
    """A resumed run's first row sets the baseline; each later increase is one `rollback` event."""
    from falcon_lite.engine.recorder import Recorder

    engine = make_engine(sqlite_url)
    with session_factory(engine).begin() as s:
        run_id = runs.create_run(s, small()).id
    recorder = Recorder(engine, run_id)
    for step, n in enumerate([2, 2, 3, 3, 5]):  # resumed with 2 rollbacks taken before
        recorder.add({"step": step, "rollbacks": float(n), "lr": 1e-4}, step)
    recorder.flush(5)
    with session_factory(engine).begin() as s:
        rolled = [e.data for e in runs.events_since(s, run_id) if e.kind == "rollback"]
    engine.dispose()
    assert rolled == [{"step": 2, "rollbacks": 3, "lr": 1e-4}, {"step": 4, "rollbacks": 5, "lr": 1e-4}]


def test_recorder_writes_the_first_row_at_once_then_every_max_seconds(sqlite_url):
    """A watcher sees the first step as soon as it is trained; later rows wait for the
    flush interval (or a checkpoint)."""
    from falcon_lite.engine.recorder import Recorder

    engine = make_engine(sqlite_url)
    with session_factory(engine).begin() as s:
        run_id = runs.create_run(s, small()).id

    def stored() -> tuple[int, list[int]]:
        with session_factory(engine).begin() as s:
            rows = runs.metrics_since(s, run_id, since_step=-1, limit=None)
            return runs.get_run(s, run_id).step, [r["step"] for r in rows]

    recorder = Recorder(engine, run_id, max_seconds=3600)
    recorder.add({"step": 0, "loss": 1.0}, 1)
    assert stored() == (1, [0])
    recorder.add({"step": 1, "loss": 0.5}, 2)
    assert stored() == (1, [0])
    recorder.flush(2)
    assert stored() == (2, [0, 1])
    engine.dispose()


# -- verdicts (issue 18, item 5) -----------------------------------------------------------

def test_every_run_that_ends_gets_a_verdict_and_a_resumed_one_loses_it_until_it_ends(sqlite_url):
    engine = make_engine(sqlite_url)
    with session_factory(engine).begin() as s:
        run_id = runs.create_run(s, small()).id
    seen = []
    run_inline(engine, run_id, should_stop=lambda: len(seen) >= 20, on_step=lambda step, row: seen.append(step))
    with session_factory(engine).begin() as s:
        run = runs.get_run(s, run_id)
        assert run.status == "stopped" and run.outcome == "miscalibrated"  # 20 warm-up steps: far too wide
        stopped = runs.events_since(s, run_id)[-1].data
        assert stopped["status"] == "stopped" and stopped["outcome"] == "miscalibrated"
        runs.set_status(s, run_id, "running")
        assert runs.get_run(s, run_id).outcome is None
        runs.set_status(s, run_id, "stopped")
    run_inline(engine, run_id)
    with session_factory(engine).begin() as s:
        run = runs.get_run(s, run_id)
        assert run.status == "completed" and run.outcome in ("calibrated", "miscalibrated", "exploded")
    engine.dispose()


def test_the_verdict_reads_the_reference_metrics_or_else_the_alarm():
    from falcon_lite.engine.verdict import verdict

    calibrated = [{"step": s, "std_ratio": 1.0, "abs_bias_over_sigma": 0.1, "alarm": 0.0} for s in range(5)]
    assert verdict(calibrated) == "calibrated"
    exploded = [*calibrated, {"step": 5, "std_ratio": 50.0, "abs_bias_over_sigma": 9.0}]
    assert verdict(exploded) == "exploded"
    assert verdict([*calibrated, {"step": 5, "std_ratio": None, "abs_bias_over_sigma": None}]) == "diverged"
    assert verdict([{"step": 0, "alarm": 0.0}, {"step": 1, "alarm": 1.0}, {"step": 2, "alarm": 0.0}]) == "alarm_raised"
    assert verdict([{"step": 0, "alarm": 0.0}, {"step": 1, "alarm": 0.0}]) == "alarm_quiet"
    assert verdict([{"step": 0, "loss": 1.0}]) is None


@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
def test_a_float32_estimator_runs_on_samples_stored_as_simulated(sqlite_url, estimator):
    """The store keeps theta and x as drawn and simulated (float64); a float32 estimator trains
    on them (before, its run failed at the first append: 'theta must have dtype float32')."""
    overrides = {"estimator.name": estimator, "estimator.dtype": "float32"}
    if estimator == "flow":
        overrides["estimator.normalize"] = True
    run_id, rows = _run(sqlite_url, small(**overrides))
    assert [r["step"] for r in rows] == list(range(60)) and all(r["loss"] is not None for r in rows)
