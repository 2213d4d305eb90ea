"""bench/sbibm.py's harness without sbi and without the network: the reference files read from
a zip of the sbibm wheel's layout, falcon-lite's run config (valid, on the budget, overridable),
the table on made-up numbers, and one tiny falcon-lite run scored by C2ST."""

from __future__ import annotations

import bz2
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import sbibm  # noqa: E402  (bench/sbibm.py)
import sbibm_refs  # noqa: E402

from falcon_lite.config import RunConfig  # noqa: E402

pytest.importorskip("falcon_lite_examples", reason="examples/problems is not installed (make venv installs it)")


def fake_wheel(path: Path, task: str, x_obs: np.ndarray, samples: np.ndarray, k: int = 1) -> Path:
    """A zip with the wheel's layout: observation.csv and the bz2 reference samples of (task, k)."""
    def csv(rows: np.ndarray, prefix: str) -> str:
        rows = np.atleast_2d(rows)
        head = ",".join(f"{prefix}_{i + 1}" for i in range(rows.shape[1]))
        return "\n".join([head, *(",".join(repr(float(v)) for v in row) for row in rows)]) + "\n"

    with zipfile.ZipFile(path, "w") as z:
        z.writestr(sbibm_refs.member(task, k, "observation.csv"), csv(x_obs, "data"))
        z.writestr(sbibm_refs.member(task, k, "reference_posterior_samples.csv.bz2"),
                   bz2.compress(csv(samples, "parameter").encode()))
        z.writestr(f"sbibm/tasks/{task}/task.py", "# not read\n")
    return path


def test_references_read_the_wheels_layout(tmp_path):
    x_obs = np.array([-0.6396706, 0.16234657])
    samples = np.random.default_rng(0).uniform(-1, 1, (50, 2))
    refs = sbibm_refs.References(fake_wheel(tmp_path / "sbibm.whl", "two_moons", x_obs, samples, k=2))
    np.testing.assert_array_equal(refs.observation("two_moons", 2), x_obs)
    np.testing.assert_array_equal(refs.samples("two_moons", 2), samples)
    with pytest.raises(KeyError):
        refs.observation("two_moons", 1)
    refs.close()


def test_a_cached_wheel_is_not_downloaded_again(tmp_path, monkeypatch):
    (tmp_path / sbibm_refs.WHEEL).write_bytes(b"")
    monkeypatch.setattr(sbibm_refs.subprocess, "run", lambda *a, **k: pytest.fail("downloaded again"))
    assert sbibm_refs.wheel(tmp_path) == tmp_path / sbibm_refs.WHEEL


@pytest.mark.parametrize("task, x_dim", [("two_moons", 2), ("slcp", 8), ("gaussian_linear", 10)])
@pytest.mark.parametrize("budget", [1000, 10_000])
def test_falcon_config_is_valid_spends_the_budget_and_matches_sbis_flow(task, x_dim, budget):
    config = sbibm.falcon_config(task, np.zeros(x_dim, np.float32), budget, seed=3)
    run = RunConfig.model_validate(config)
    assert sbibm.simulations_of(config) == budget
    assert run.problem.name == task and np.shape(run.problem.x_obs) == (x_dim,)
    e = run.estimator
    assert (e.name, e.flow, e.transforms, e.hidden, e.bins, e.normalize) == ("flow", "nsf", 5, [50, 50], 10, True)
    assert (e.transforms, e.hidden[0], e.bins) == tuple(sbibm.SBI_NSF[k] for k in ("num_transforms",
                                                                                    "hidden_features", "num_bins"))
    assert run.buffer.max_training >= budget and run.training.seed == 3
    assert (run.estimator.dtype, run.proposal.method, run.training.lr_decay) == ("float32", "truncated", "cosine")


def test_falcon_config_takes_overrides_section_by_section():
    config = sbibm.falcon_config("two_moons", [0.0, 0.0], 1000, 0,
                                 {"proposal": {"temperature": 3.0}, "estimator": {"bins": 8}})
    run = RunConfig.model_validate(config)
    assert run.proposal.temperature == 3.0 and run.estimator.bins == 8 and run.estimator.transforms == 5
    config = sbibm.falcon_config("two_moons", [0.0, 0.0], 1000, 0, {"buffer": {"simulations_per_step": 2}})
    assert sbibm.simulations_of(config) == 200  # 100 batches of 2: the bench refuses a config off the budget
    with pytest.raises(ValueError, match="not a whole number of batches of 10"):
        sbibm.plan(1005)


def test_falcon_config_with_fewer_steps_per_batch_spends_the_same_budget():
    config = sbibm.falcon_config("two_moons", [0.0, 0.0], 1000, 0, steps_per_batch=5)
    run = RunConfig.model_validate(config)
    assert sbibm.simulations_of(config) == 1000
    assert (run.runtime.steps_per_batch, run.training.steps, run.training.warmup_steps) == (5, 500, 200)
    assert run.proposal.region_every == 20  # a region every four batches, as with the plan's k
    assert run.proposal.region_draws == 2000  # its threshold from 2000 draws (docs/flows.md)
    assert (run.training.early_stop.limit, run.training.early_stop.min_share) == (1.0, 0.2)  # docs/flows.md
    assert not run.training.batch_checks  # the same flow, without the alarm's draws (docs/flows.md)


def test_table_on_made_up_numbers():
    records = [{"task": "slcp", "obs": 1, "budget": 1000, "seed": s, "side": side, "c2st": c, "wall_s": w,
                "cpu_s": w / 2}
               for s, (cf, cs) in enumerate([(0.8, 0.9), (0.9, 0.9)])
               for side, c, w in (("falcon", cf, 10.0), ("sbi", cs, 40.0))]
    records.append({"task": "two_moons", "obs": 1, "budget": 1000, "seed": 0, "side": "falcon", "c2st": 0.6,
                    "wall_s": 5.0})  # (a record without its CPU time)
    lines = sbibm.table(records).splitlines()
    assert lines[0].startswith("| task | obs | budget | seeds | C2ST falcon | C2ST sbi | C2ST ratio")
    assert lines[2] == "| two_moons | 1 | 1000 | 1 | 0.600 | – | – | 5.0 | – | – | – | – | – |"  # sbibm's order
    assert lines[3] == ("| slcp | 1 | 1000 | 2/2 | 0.850 ± 0.071 | 0.900 ± 0.000 | 0.94 | 10.0 | 40.0 | 0.25 "
                        "| 5.0 | 20.0 | 0.25 |")


def test_table_takes_timed_only_records_into_the_times_not_the_c2st():
    """--time-only records (c2st null) count in a cell's seeds and times, not in its C2ST."""
    records = [{"task": "two_moons", "obs": 1, "budget": 1000, "seed": 0, "side": side, "c2st": None,
                "wall_s": w, "cpu_s": w} for side, w in (("falcon", 10.0), ("sbi", 40.0))]
    records.append({"task": "two_moons", "obs": 1, "budget": 1000, "seed": 1, "side": "falcon", "c2st": 0.6,
                    "wall_s": 20.0, "cpu_s": 20.0})
    lines = sbibm.table(records).splitlines()
    assert lines[2] == "| two_moons | 1 | 1000 | 2/1 | 0.600 | – | – | 15.0 | 40.0 | 0.38 | 15.0 | 40.0 | 0.38 |"


def test_table_only_prints_what_the_results_file_holds(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    path.write_text('{"task": "two_moons", "obs": 2, "budget": 1000, "seed": 0, "side": "sbi", '
                    '"c2st": 0.7, "wall_s": 12.0}\n')
    sbibm.main(["--table-only", "--results", str(path)])
    assert "| two_moons | 2 | 1000 | 1 | – | 0.700 | – | – | 12.0 | – | – | – | – |" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # C2ST's classifier, cut short
def test_a_tiny_falcon_run_on_a_fake_wheel_is_scored(tmp_path):
    """The falcon-only path end to end on a small budget: the run, its draws, C2ST."""
    from falcon_lite.core.diagnostics_samples import c2st
    from falcon_lite.store.db import make_engine, migrate

    x_obs = np.array([0.1, -0.2], np.float32)  # sbibm's files are float32 text
    samples = np.random.default_rng(1).uniform(-1, 1, (200, 2))
    refs = sbibm_refs.References(fake_wheel(tmp_path / "sbibm.whl", "two_moons", x_obs, samples))
    config = sbibm.falcon_config("two_moons", refs.observation("two_moons", 1), 40, 0,
                                 {"estimator": {"hidden": [8, 8], "transforms": 1}})
    url = f"sqlite:///{tmp_path / 'bench.db'}"
    migrate(url)
    engine = make_engine(url)
    try:
        draws, times = sbibm.run_falcon(engine, config, 200, seed=0)
    finally:
        engine.dispose()
    assert draws.shape == (200, 2) and np.isfinite(draws).all() and times["wall_s"] > 0 and times["cpu_s"] > 0
    assert 0.0 <= c2st(refs.samples("two_moons", 1), draws, max_iter=200) <= 1.0


def test_time_only_records_a_run_with_no_score(tmp_path, capsys):
    """`--time-only` end to end on a fake wheel (falcon-lite's side): a record with c2st null,
    its times and config, no classifier's time, and the table's row with its seeds and times."""
    x_obs = np.array([0.1, -0.2], np.float32)
    fake_wheel(tmp_path / sbibm_refs.WHEEL, "two_moons", x_obs, np.zeros((10, 2)))
    results = tmp_path / "r.jsonl"
    sbibm.main(["--tasks", "two_moons", "--obs", "1", "--budgets", "40", "--seeds", "0", "--sides", "falcon",
                "--time-only", "--falcon-config", '{"estimator": {"hidden": [8, 8], "transforms": 1}}',
                "--cache", str(tmp_path), "--results", str(results)])
    (record,) = sbibm.load(results)
    assert record["c2st"] is None and "c2st_s" not in record and record["cpu_s"] > 0
    assert record["config"]["training"]["early_stop"] == {"limit": 1.0, "min_share": 0.2}
    assert "| two_moons | 1 | 40 | 1 | – | – | – |" in capsys.readouterr().out


def test_one_run_looked_into_prints_its_score_region_and_moments(tmp_path, capsys):
    """bench/sbibm_one.py end to end on a fake wheel: one JSON line with the run's C2ST, the
    steps its early stop passed over, its last region's prior mass, and the moments of its
    draws beside the reference's (two parameters each)."""
    import json

    import sbibm_one

    reference = np.random.default_rng(2).uniform(-1, 1, (300, 2))
    fake_wheel(tmp_path / sbibm_refs.WHEEL, "two_moons", np.array([0.1, -0.2], np.float32), reference)
    sbibm_one.main(["--task", "two_moons", "--obs", "1", "--budget", "40", "--draws", "300",
                    "--falcon-config", '{"estimator": {"hidden": [8, 8], "transforms": 1}}', "--cache", str(tmp_path)])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 <= out["c2st"] <= 1.0 and out["cpu_s"] > 0 and isinstance(out["passed_steps"], int)
    assert 0.0 < out["region_mass"] <= 1.0  # 400 steps, a region every 40 after the warm-up's 160
    assert out["reference"]["mean"] == reference.mean(0).round(3).tolist()
    assert all(len(out[side][k]) == 2 for side in ("falcon", "reference") for k in ("mean", "sd", "above_zero"))
