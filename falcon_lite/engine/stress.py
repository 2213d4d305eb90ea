"""The stress harness: a grid of config overrides x seeds, each run on our own buffer.

Each run is the inline runtime in a worker process with its own SQLite file, so a grid
point's seeds and every policy see the same counter-based random draws. Writes the
stress contract of DESIGN.md: `results.json`, `report.md` and PNG plots.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from falcon_lite.config import RunConfig, with_overrides
from falcon_lite.core.alarm import first_alarm
from falcon_lite.core.diagnostics import classify_outcome

SERIES = ("std_ratio", "abs_bias_over_sigma", "alarm_ema")
COVERAGE = ("coverage_50", "coverage_68", "coverage_95")
SAMPLED = ("c2st", "tarp_error", "hpd_error")  # engine/checks.py, where a run's config asks for them


def expand_grid(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in the order given."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def plan(grid: dict[str, list[Any]], seeds: int, steps: int, base: RunConfig | None = None) -> list[dict]:
    """The jobs of a stress matrix, each a validated config; bad keys or values fail here, up front."""
    base = base or RunConfig()
    jobs = []
    for point in expand_grid(grid):
        for seed in range(seeds):
            config = with_overrides(base, {**point, "training.seed": seed, "training.steps": steps})
            jobs.append({"overrides": point, "seed": seed, "config": config.model_dump(mode="json")})
    return jobs


def run_job(job: dict) -> dict:
    """Run one (overrides, seed) job in this process; returns its results row and series."""
    import torch

    from falcon_lite.engine.inline import run_inline, scratch_run
    from falcon_lite.engine.loop import RunDiverged
    from falcon_lite.store import runs
    from falcon_lite.store.db import session_factory

    torch.set_num_threads(1)
    config = RunConfig.model_validate(job["config"])
    started = time.perf_counter()
    with scratch_run(config, prefix="flr-stress-") as (engine, run_id):
        try:
            run_inline(engine, run_id)
        except RunDiverged:
            pass  # recorded as failed on the run; its metrics so far say `diverged`
        with session_factory(engine).begin() as session:
            rows = runs.metrics_since(session, run_id, names=[*SERIES, *COVERAGE, *SAMPLED, "prior_drawn_share",
                                                             "rollbacks"], limit=None)
    steps = np.array([r["step"] for r in rows])
    series = {name: np.array([np.nan if r.get(name) is None else r[name] for r in rows]) for name in SERIES}
    if rows:
        outcome, converged, exploded, max_after = classify_outcome(
            steps, series["std_ratio"], series["abs_bias_over_sigma"]
        )
    else:
        outcome, converged, exploded, max_after = "diverged", None, None, None
    if not rows or rows[-1]["step"] < config.training.steps - 1:
        outcome = "diverged"  # the run stopped early: its estimate went non-finite
    coverage = {f"final_{k}": _mean_last([r.get(k) for r in rows], 100) for k in COVERAGE}
    return {
        "overrides": job["overrides"],
        "seed": job["seed"],
        "outcome": outcome,
        "converged_step": converged,
        "explosion_step": exploded,
        "final_std_ratio": _finite_or_none(series["std_ratio"][-1]) if len(rows) else None,
        "final_abs_bias_over_sigma": _finite_or_none(series["abs_bias_over_sigma"][-1]) if len(rows) else None,
        "max_std_ratio_after_convergence": max_after,
        "steps": int(config.training.steps),
        "wall_seconds": round(time.perf_counter() - started, 3),
        "alarm_step": first_alarm(steps, series["alarm_ema"]),
        # share of all simulations drawn from the prior, warm-up included (the cost of a quota)
        "prior_sample_share": rows[-1].get("prior_drawn_share") if rows else None,
        "rollbacks": int(rows[-1].get("rollbacks") or 0) if rows else 0,  # adaptive rollbacks taken
        **coverage,
        # the sample-based checks' last values (training.c2st_every, training.coverage_every), or None
        **{f"final_{k}": _last([r.get(k) for r in rows]) for k in SAMPLED},
        "_series": {"step": steps.tolist(), **{k: [_finite_or_none(v) for v in s] for k, s in series.items()}},
    }


def _mean_last(values: list, n: int) -> float | None:
    """Mean of the last n finite values (coverage of one batch is noisy)."""
    finite = [v for v in values[-n:] if v is not None and np.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def _last(values: list) -> float | None:
    """The last finite value (a check that runs at its own cadence leaves most rows without it)."""
    finite = [v for v in values if v is not None and np.isfinite(v)]
    return float(finite[-1]) if finite else None


def _finite_or_none(value) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def _init_worker() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"


def run_stress(
    grid: dict[str, list[Any]],
    seeds: int,
    steps: int,
    out_dir: Path,
    workers: int = 1,
    base: RunConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Run the matrix and write results.json, report.md and plots into `out_dir`.

    Interrupted (Ctrl-C, a cancelled job: any exception), it still writes what finished,
    with ``"complete": false`` in results.json (a report too, if any run finished), then
    raises again.
    """
    jobs = plan(grid, seeds, steps, base)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    try:
        if workers <= 1:
            for job in jobs:
                results.append(run_job(job))
                if progress:
                    progress(len(results), len(jobs))
        else:
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker) as pool:
                futures = [pool.submit(run_job, job) for job in jobs]
                for future in as_completed(futures):
                    results.append(future.result())
                    if progress:
                        progress(len(results), len(jobs))
    except BaseException:
        _write(out_dir, jobs, results, grid, seeds, steps, base, complete=False)
        raise
    return _write(out_dir, jobs, results, grid, seeds, steps, base, complete=True)


def _write(out_dir: Path, jobs: list[dict], results: list[dict], grid: dict, seeds: int, steps: int,
           base: RunConfig | None, complete: bool) -> dict:
    """results.json and series.json of the runs that finished, in plan order; the report and
    plots when there is at least one."""
    from falcon_lite.engine.report import write_report

    order = {(json.dumps(j["overrides"], sort_keys=True), j["seed"]): i for i, j in enumerate(jobs)}
    results.sort(key=lambda r: order[(json.dumps(r["overrides"], sort_keys=True), r["seed"])])
    series = [r.pop("_series") for r in results]
    document = {
        "runs": results,
        "grid": grid,
        "seeds": seeds,
        "steps": steps,
        "base": (base or RunConfig()).model_dump(mode="json"),
        "complete": complete,  # false: interrupted, `runs` holds those that finished
    }
    (out_dir / "results.json").write_text(json.dumps(document, indent=2))
    (out_dir / "series.json").write_text(json.dumps(series))
    if results:
        write_report(out_dir, results, series, grid)
    return document


def rewrite_report(out_dir: Path) -> dict:
    """Recompute what derives from the recorded series (the alarm step) and rewrite
    results.json, report.md and the plots of an existing stress directory."""
    from falcon_lite.engine.report import write_report

    out_dir = Path(out_dir)
    document = json.loads((out_dir / "results.json").read_text())
    series = json.loads((out_dir / "series.json").read_text())
    for row, s in zip(document["runs"], series):
        row["alarm_step"] = first_alarm(s["step"], s.get("alarm_ema", []))
    (out_dir / "results.json").write_text(json.dumps(document, indent=2))
    write_report(out_dir, document["runs"], series, document["grid"])
    return document
