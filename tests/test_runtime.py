"""The Ray runtime on a real local Ray (one per test session) and both databases."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest
import sqlalchemy as sa

from falcon_lite.config import RunConfig, with_overrides
from falcon_lite.runtime.control import RunControl
from falcon_lite.settings import Settings
from falcon_lite.store import runs
from falcon_lite.store.models import Sample

pytestmark = pytest.mark.ray

SMALL = {
    "estimator.hidden": [16, 16],
    "training.warmup_steps": 20,
    "training.checkpoint_every": 20,
    "buffer.simulations_per_step": 32,
    "buffer.min_training": 32,
    "buffer.max_training": 32,
    "training.batch_size": 32,
    "runtime.simulators": 2,
}


def config(steps: int, **overrides) -> RunConfig:
    return with_overrides(RunConfig(), {**SMALL, "training.steps": steps, **overrides})


@pytest.fixture
def control(ray_address, db_url):
    c = RunControl(Settings(ray_address=ray_address), database_url=db_url)
    yield c
    c.close()


def only(backend: str):
    """Run a test on one database: the end-to-end test covers both, the rest split between them."""
    return pytest.mark.parametrize("raw_db_url", [backend], indirect=True)


def run_row(control: RunControl, run_id: int):
    with control.sessions.begin() as s:
        run = runs.get_run(s, run_id)
        return run.status, run.step, run.rejected, run.reason


# A pool large enough that nothing is ever evicted (so nothing is purged): every stored row
# stays in the table, and rows per simulated step can be counted to find a lost or a
# duplicated batch.
KEEP_ALL = {"buffer.max_training": 1 << 20}


def per_step_counts(control: RunControl, run_id: int) -> dict[int, int]:
    """How many rows each simulated step left in the table (all of them under KEEP_ALL)."""
    with control.engine.connect() as conn:
        rows = conn.execute(
            sa.select(Sample.step, sa.func.count()).where(Sample.run_id == run_id).group_by(Sample.step)
        ).all()
    return dict(rows)


def wait_step(control: RunControl, run_id: int, step: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while run_row(control, run_id)[1] < step:
        assert time.monotonic() < deadline, f"run {run_id} did not reach step {step}: {run_row(control, run_id)}"
        time.sleep(0.2)


def test_run_end_to_end(control):
    run_id = control.create(config(60, **{"buffer.prior_fraction": 0.25}))
    assert control.wait(run_id, timeout=180) == "completed"
    status, step, rejected, _ = run_row(control, run_id)
    assert (step, rejected) == (60, 0)
    composition = control_composition(control, run_id)
    # one batch per step; on PostgreSQL the writer may also store the few batches still in
    # flight when the last step is taken (at most runtime.in_flight, never trained on)
    extra = composition["total"] - 60 * 32
    assert extra % 32 == 0 and 0 <= extra <= (0 if "sqlite" in control.database_url else 4 * 32)
    assert composition["purged"] > 0  # tombstones no reader holds are purged as the run goes
    with control.sessions.begin() as s:
        rows = runs.metrics_since(s, run_id, limit=None)
    assert len(rows) == 60 and all(r["trainable_prior"] >= 8 for r in rows if r["step"] >= 20)
    supervisor_ends(control, run_id)


def test_adaptive_quota_runs_on_ray(control):
    """The adaptive policy through the actors: the sampler draws, the store (the trainer on
    SQLite, the writer on PostgreSQL) retains and the batches mix by the quota in force, and
    every row records that quota and the alarm the trainer computed from fresh batches."""
    adaptive = {"buffer.prior_fraction": "adaptive", "buffer.adaptive.low": 0.25, "buffer.adaptive.high": 0.5}
    run_id = control.create(config(60, **adaptive))
    assert control.wait(run_id, timeout=180) == "completed"
    with control.sessions.begin() as s:
        rows = runs.metrics_since(s, run_id, limit=None)
    assert [r["step"] for r in rows] == list(range(60))
    after_warm_up = [r for r in rows if r["step"] >= 20]
    assert all(r["prior_fraction"] == 0.25 and r["trainable_prior"] >= 8 for r in after_warm_up)
    checked = [r for r in after_warm_up if "alarm" in r]
    assert checked and all(r["alarm"] == 0.0 and r["rollbacks"] == 0.0 for r in checked)
    supervisor_ends(control, run_id)


@only("sqlite")
def test_adaptive_rollback_on_ray(control):
    """A run whose learning rate is high enough to drift soon after it converges: the
    trainer's alarm fires, the adaptive policy rolls the estimator back and cools the
    learning rate, and the run goes on to completion."""
    fast_drift = {
        "buffer.prior_fraction": "adaptive", "training.warmup_steps": 300, "training.lr_after_warmup": 1e-2,
        "buffer.simulations_per_step": 128, "buffer.min_training": 128, "buffer.max_training": 128,
        "training.batch_size": 128, "training.checkpoint_every": 500,
    }
    run_id = control.create(config(1500, **fast_drift))
    assert control.wait(run_id, timeout=300) == "completed"
    with control.sessions.begin() as s:
        rows = runs.metrics_since(s, run_id, limit=None)
        events = [e.data for e in runs.events_since(s, run_id, limit=100_000) if e.kind == "rollback"]
    assert rows[-1]["rollbacks"] >= 1 and len(events) == rows[-1]["rollbacks"]
    first = events[0]["step"]
    assert all(r["lr"] == pytest.approx(1e-3) for r in rows if first < r["step"] < first + 50)


def supervisor_ends(control: RunControl, run_id: int, timeout: float = 30.0) -> None:
    """A run's detached supervisor ends itself once the run's status is written: a run
    leaves no process behind."""
    import ray

    deadline = time.monotonic() + timeout
    while True:
        try:
            ray.get_actor(control.supervisor_name(run_id), namespace="falcon-lite")
        except ValueError:
            return
        assert time.monotonic() < deadline, f"run {run_id}'s supervisor is still there {timeout} s after its end"
        time.sleep(0.2)


def control_composition(control, run_id):
    from dataclasses import asdict

    from falcon_lite.engine.loop import sizes_of
    from falcon_lite.engine.resume import load_state
    from falcon_lite.store.buffer import SampleStore

    state = load_state(control.engine, run_id)
    return asdict(SampleStore(control.engine, run_id, sizes_of(state), 1).composition())


@only("sqlite")
def test_stop_and_resume_keep_the_step_count(control):
    run_id = control.create(config(4000, **KEEP_ALL))
    wait_step(control, run_id, 150)
    control.stop(run_id)
    control.stop(run_id)  # idempotent
    assert control.wait(run_id, timeout=60) == "stopped"
    _, stopped_at, _, _ = run_row(control, run_id)
    with control.sessions.begin() as s:
        loss_before = runs.metrics_since(s, run_id, since_step=stopped_at - 20, limit=None)
    control.resume(run_id)
    wait_step(control, run_id, stopped_at + 30)
    control.stop(run_id)
    assert control.wait(run_id, timeout=60) == "stopped"
    supervisor_ends(control, run_id)
    with control.sessions.begin() as s:
        after = runs.metrics_since(s, run_id, since_step=stopped_at - 1, limit=None)
    # continued from the checkpoint, not reset: the first resumed step follows the last one
    assert after[0]["step"] == stopped_at
    mean_before = sum(r["loss"] for r in loss_before) / len(loss_before)
    assert after[0]["loss"] < 10 * mean_before  # the loss did not jump back to an untrained level
    assert set(per_step_counts(control, run_id).values()) == {32}  # no batch lost or stored twice


@only("postgres")
@pytest.mark.parametrize("per_batch", [1, None], ids=["lock-step", "continuous"])
def test_killed_trainer_recovers_by_itself(control, per_batch):
    run_id = control.create(config(400, **KEEP_ALL, **{"runtime.steps_per_batch": per_batch}))
    wait_step(control, run_id, 60)
    import ray

    supervisor = ray.get_actor(control.supervisor_name(run_id), namespace="falcon-lite")
    pid = ray.get(supervisor.trainer_pid.remote())
    os.kill(pid, signal.SIGKILL)
    assert control.wait(run_id, timeout=240) == "completed"
    counts = per_step_counts(control, run_id)
    assert set(counts.values()) == {32}  # nothing duplicated
    assert control_composition(control, run_id)["total"] == 32 * len(counts)  # nothing lost
    _, step, _, _ = run_row(control, run_id)
    assert step == 400


@only("sqlite")
def test_k_steps_per_batch_ingest_one_batch_per_k_steps(control):
    run_id = control.create(config(40, **KEEP_ALL, **{"runtime.steps_per_batch": 4}))
    assert control.wait(run_id, timeout=180) == "completed"
    counts = per_step_counts(control, run_id)
    assert len(counts) == 10 and set(counts.values()) == {32}  # batches beyond what 40 steps need: dropped
    assert run_row(control, run_id)[1] == 40
    with control.sessions.begin() as s:
        rows = runs.metrics_since(s, run_id, limit=None)
    # the trainer's waits for simulated batches: the first row's interval holds the wait for the
    # first batch; shares of wall time in [0, 1]
    assert rows[0]["wait_share"] > 0 and all(0 <= r["wait_share"] <= 1 for r in rows)


@only("sqlite")
def test_the_early_stop_passes_steps_over_on_ray_too(control):
    """training.early_stop in the Ray trainer (the Driver the inline runtime uses): a flow at
    4 steps per batch with a limit low enough to pass steps over (the inline resume test's
    run, tests/test_flow.py) completes every step, counts the passed ones in its rows, and
    checks one fresh batch per 4 steps as without it."""
    flow = {"estimator.name": "flow", "estimator.flow": "maf", "estimator.normalize": True, "simulator.sigma_obs": 0.1,
            "training.warmup_steps": 100, "training.early_stop": {"limit": 0.01, "min_share": 0.25}}
    run_id = control.create(config(300, **flow, **{"runtime.steps_per_batch": 4}))
    assert control.wait(run_id, timeout=180) == "completed"
    assert run_row(control, run_id)[1] == 300
    with control.sessions.begin() as s:
        rows = runs.metrics_since(s, run_id, limit=None)
    assert [r["step"] for r in rows if "held_out_loss" in r] == list(range(0, 300, 4))
    passed = [r["passed_steps"] for r in rows]
    assert passed == sorted(passed) and 0 < passed[-1] <= 225


@only("postgres")
def test_continuous_training_is_not_held_to_the_simulators(control):
    """steps_per_batch=null: the trainer trains while batches arrive; every batch is stored
    once, every step leaves its metrics row, and training only starts on a filled pool."""
    run_id = control.create(config(300, **KEEP_ALL, **{"runtime.steps_per_batch": None}))
    assert control.wait(run_id, timeout=180) == "completed"
    counts = per_step_counts(control, run_id)
    assert set(counts.values()) == {32}
    assert control_composition(control, run_id)["total"] == 32 * len(counts)
    with control.sessions.begin() as s:
        rows = runs.metrics_since(s, run_id, limit=None)
    assert [r["step"] for r in rows] == list(range(300))
    assert rows[0]["trainable"] >= 32 and all(r["loss"] == r["loss"] for r in rows)  # never an empty pool
    assert all(r["wait_share"] == 0 for r in rows[1:])  # once the pool is filled it never waits


@only("sqlite")
def test_failing_simulator_batches_are_rejected_and_counted(control):
    run_id = control.create(config(60, **KEEP_ALL, **{"runtime.simulator_fail_every": 10, "runtime.simulators": 1}))
    assert control.wait(run_id, timeout=180) == "completed"
    status, step, rejected, _ = run_row(control, run_id)
    assert step == 60
    assert rejected == 6 * 32  # calls 10, 20, ..., 60 failed; each rejected whole
    counts = per_step_counts(control, run_id)
    assert len(counts) == 54 and set(counts.values()) == {32}


def stored_rows(control: RunControl, run_id: int) -> list[tuple]:
    """(step, theta, x) of every row a run stored, in the order it stored them."""
    with control.engine.connect() as conn:
        return [tuple(row) for row in conn.execute(
            sa.select(Sample.step, Sample.theta, Sample.x).where(Sample.run_id == run_id).order_by(Sample.seq))]


@only("postgres")
def test_chunked_batches_are_the_same_inline_and_on_any_pool(control):
    """runtime.simulation_chunk: a batch of 32 in chunks of 10, 10, 10 and 2 rows, each with
    its own stream. The inline runtime (chunks one after another) and Ray with 1 or 3
    simulators (chunks spread over them, joined in order, stored through the writer) store
    the same rows, bit for bit. All steps are in the warm-up, so that the proposals do not
    depend on how far training ran when a batch was proposed."""
    from falcon_lite.engine.inline import run_inline

    chunked = {**KEEP_ALL, "training.warmup_steps": 12, "runtime.simulation_chunk": 10}
    inline = control.create(config(12, **chunked), start=False)
    run_inline(control.engine, inline)
    expected = stored_rows(control, inline)
    assert [step for step, _, _ in expected] == [s for s in range(12) for _ in range(32)]
    for pool in (1, 3):
        run_id = control.create(config(12, **chunked, **{"runtime.simulators": pool}))
        assert control.wait(run_id, timeout=180) == "completed"
        assert [row for row in stored_rows(control, run_id) if row[0] < 12] == expected, pool
    unchunked = control.create(config(12, **KEEP_ALL, **{"training.warmup_steps": 12}), start=False)
    run_inline(control.engine, unchunked)
    theirs = stored_rows(control, unchunked)
    assert [row[:2] for row in theirs] == [row[:2] for row in expected]  # the same parameters;
    same = [a[2] == b[2] for a, b in zip(theirs, expected)]  # chunk 0's stream is the step's, the others differ
    assert same == [i % 32 < 10 for i in range(12 * 32)]


@only("sqlite")
def test_a_failing_chunk_is_rejected_alone_and_the_pool_shares_the_chunks(control):
    """Batches of 32 in chunks of 8 on one simulator failing every 10th call: calls 10, 20, ...
    (chunk (c - 1) % 4 of batch (c - 1) // 4) lose their 8 rows, the rest of each batch is
    stored. Then 4 slow simulators share the chunks of a run between them."""
    failing = {**KEEP_ALL, "runtime.simulation_chunk": 8, "runtime.simulator_fail_every": 10, "runtime.simulators": 1}
    run_id = control.create(config(60, **failing))
    assert control.wait(run_id, timeout=180) == "completed"
    _, step, rejected, _ = run_row(control, run_id)
    assert (step, rejected) == (60, 24 * 8)
    hit = {(c - 1) // 4 for c in range(10, 241, 10)}
    assert per_step_counts(control, run_id) == {b: 24 if b in hit else 32 for b in range(60)}

    import ray

    pool = {**KEEP_ALL, "runtime.simulation_chunk": 8, "runtime.simulators": 4, "runtime.simulator_delay_ms": 2}
    run_id = control.create(config(400, **pool))
    wait_step(control, run_id, 40)
    calls = ray.get(ray.get_actor(control.supervisor_name(run_id), namespace="falcon-lite").simulator_calls.remote())
    control.stop(run_id)
    assert control.wait(run_id, timeout=60) == "stopped"
    assert min(calls) >= max(calls) / 2 and sum(calls) >= 40 * 4, calls  # each batch split over the pool


@only("postgres")
def test_stop_of_a_pending_run_is_a_no_op(control):
    run_id = control.create(config(10), start=False)
    control.stop(run_id)
    assert run_row(control, run_id)[0] == "pending"


@only("postgres")
def test_two_runs_share_the_cluster(control):
    a = control.create(config(50))
    b = control.create(config(50, **{"training.seed": 3}))
    assert control.wait(a, timeout=240) == "completed"
    assert control.wait(b, timeout=240) == "completed"


@only("postgres")
def test_lost_supervisor_marks_the_run_failed_and_it_resumes(control):
    import ray

    run_id = control.create(config(3000))
    wait_step(control, run_id, 40)
    ray.kill(ray.get_actor(control.supervisor_name(run_id), namespace="falcon-lite"))
    assert control.wait(run_id, timeout=60) == "failed"
    assert "supervisor" in run_row(control, run_id)[3]
    control.resume(run_id)
    wait_step(control, run_id, run_row(control, run_id)[1] + 10)
    control.stop(run_id)
    assert control.wait(run_id, timeout=60) == "stopped"


def test_an_unreachable_ray_address_fails_fast_and_names_it(tmp_path):
    """In a fresh process (no Ray yet): RunControl refuses at once instead of hanging."""
    import subprocess
    import sys

    from falcon_lite.runtime.control import probe_ray_address

    with pytest.raises(ConnectionError, match="cannot reach Ray at 127.0.0.1:1"):
        probe_ray_address("127.0.0.1:1", timeout=2)
    probe_ray_address(None)  # local Ray: nothing to probe
    url = f"sqlite:///{tmp_path / 'r.db'}"
    code = (
        "from falcon_lite.store.db import migrate; from falcon_lite.settings import Settings\n"
        "from falcon_lite.runtime.control import RunControl\n"
        f"migrate({url!r})\n"
        f"RunControl(Settings(ray_address='127.0.0.1:1'), database_url={url!r})\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "ConnectionError: cannot reach Ray at 127.0.0.1:1" in done.stderr


def test_only_the_trainer_loads_torch():
    """The supervisor, sampler, simulators and writer import the runtime and propose,
    simulate and store without torch (~2-4 s and ~300 MB per process): in a fresh process."""
    import subprocess
    import sys

    code = """
import sys
import numpy as np
from falcon_lite.config import RunConfig
from falcon_lite.core.priors import make_prior
from falcon_lite.core.simulators import make_simulator
from falcon_lite.engine import loop
import falcon_lite.runtime.actors, falcon_lite.runtime.control, falcon_lite.store
config = RunConfig()
simulator = make_simulator(config.simulator)
prior = make_prior(config.prior, simulator.dim)
for posterior in (None, (np.zeros(1), np.ones(1))):
    proposed = loop.propose_from(config, prior, 3, posterior, 0.2)
    assert loop.simulate(simulator, proposed, 0).x.shape == proposed.theta.shape
print(sorted(m for m in sys.modules if m.partition(".")[0] == "torch")[:3])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_cli_run_on_ray(ray_address, tmp_path):
    """`falcon-lite run CONFIG --ray` drives a run to its end through RunControl on the
    cluster at RAY_ADDRESS and prints the summary, with how long the trainer waited."""
    import subprocess
    import sys

    path = tmp_path / "run.json"
    path.write_text(config(30).model_dump_json())
    out = subprocess.run(
        [sys.executable, "-m", "falcon_lite.cli", "run", str(path), "--ray", "--quiet",
         "--database-url", f"sqlite:///{tmp_path}/cli.db"],
        env={**os.environ, "RAY_ADDRESS": ray_address}, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert re.search(r"completed \(\w+\) at step 30/30", out.stdout), out.stdout  # with the run's verdict
    assert re.search(r"the trainer waited \d+ % of its time for simulations", out.stdout), out.stdout


def test_cli_summary_of_a_run_with_null_values():
    """A failed run's last row may hold nulls (non-finite values): the summary says n/a."""
    from falcon_lite.commands import _summary

    row = {"step": 4, "std_ratio": None, "abs_bias_over_sigma": 2.0, "loss": None, "mean_wait_share": 0.25}
    text = _summary(config(10), row, "failed")
    assert "failed at step 5/10; std_ratio n/a, |bias|/sigma 2, loss n/a" in text
    assert text.endswith("the trainer waited 25 % of its time for simulations")
