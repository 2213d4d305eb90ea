"""Stress jobs behind ``POST /stress``: each runs `run_stress` in its own process.

A job lives in ``<data_dir>/stress/<id>/``: ``request.json`` (what was asked),
``status.json`` (``queued -> running -> completed | failed | cancelled``, with
``done``/``total`` and an ``error`` on failure) and, once done, the stress contract's
``results.json``, ``report.md`` and PNG plots. The worker is a separate process so that
training a matrix never holds the API's interpreter; the files are the only channel
between them.

`StressLimits` (from the settings) caps what one job may ask (runs, steps per run, runs x
steps: a `LimitError`, 422) and how many jobs run at once (`ConflictError`, 409).
`cancel` ends a job's worker with SIGTERM: the worker writes the runs that finished
(results.json with ``"complete": false``, and their report) and the status
``cancelled``; a job already ended is left as it is.

Run a job by hand: ``python -m services.api.stress_jobs <job dir>``.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from falcon_lite.settings import Settings
from falcon_lite.store.errors import ConflictError, NotFoundError
from services.api.errors import LimitError

JOB_ID = re.compile(r"^[0-9a-f]{32}$")
PLOT_NAME = re.compile(r"^[A-Za-z0-9_.-]+\.png$")
ACTIVE = ("queued", "running")
CANCEL_WAIT_S = 60.0  # for the worker to write what finished, then it is killed (15 s ran out on a loaded 2-core machine)


@dataclass(frozen=True)
class StressLimits:
    """What one stress job may ask, and how many may run at once."""

    max_runs: int = 200
    max_steps: int = 100_000
    max_total_steps: int = 2_000_000
    max_jobs: int = 2

    @classmethod
    def from_settings(cls, settings: Settings) -> StressLimits:
        return cls(settings.stress_max_runs, settings.stress_max_steps, settings.stress_max_total_steps,
                   settings.stress_max_jobs)

    def check(self, request: dict) -> None:
        """`LimitError` naming the field and the setting when `request` asks for too much."""
        points = math.prod(len(values) for values in request["grid"].values())
        runs, steps = points * request["seeds"], request["steps"]
        if steps > self.max_steps:
            raise LimitError(("body", "steps"), f"steps = {steps} is over the limit of {self.max_steps} "
                             "steps per run (FALCON_LITE_STRESS_MAX_STEPS)")
        if runs > self.max_runs:
            raise LimitError(("body",), f"{points} grid points x {request['seeds']} seeds = {runs} runs, over "
                             f"the limit of {self.max_runs} (FALCON_LITE_STRESS_MAX_RUNS)")
        if runs * steps > self.max_total_steps:
            raise LimitError(("body",), f"{runs} runs x {steps} steps = {runs * steps} steps, over the limit "
                             f"of {self.max_total_steps} (FALCON_LITE_STRESS_MAX_TOTAL_STEPS)")


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


class StressJobs:
    """Start, inspect and stop the stress jobs of one API process."""

    def __init__(self, root: Path, limits: StressLimits | None = None) -> None:
        self.root = Path(root)
        self.limits = limits or StressLimits()
        self._procs: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()

    def job_dir(self, job_id: str) -> Path:
        path = self.root / job_id
        if not JOB_ID.match(job_id) or not (path / "status.json").is_file():
            raise NotFoundError(f"stress job {job_id!r} not found")
        return path

    def submit(self, request: dict) -> str:
        """Start a job for `request` (a `StressCreate` as JSON) and return its id."""
        self.limits.check(request)
        with self._lock:
            running = sum(proc.poll() is None for proc in self._procs.values())
            if running >= self.limits.max_jobs:
                raise ConflictError(
                    f"{running} stress jobs are running, the most this server runs at once "
                    "(FALCON_LITE_STRESS_MAX_JOBS): wait for one to end, or cancel one with DELETE /stress/{id}"
                )
            job_id = uuid.uuid4().hex
            path = self.root / job_id
            path.mkdir(parents=True)
            _write_json(path / "request.json", request)
            _write_json(path / "status.json", {"status": "queued", "done": 0, "total": None})
            env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
            with open(path / "worker.log", "wb") as log:
                self._procs[job_id] = subprocess.Popen(
                    [sys.executable, "-m", "services.api.stress_jobs", str(path)],
                    stdout=log, stderr=subprocess.STDOUT, env=env,
                    cwd=Path(__file__).resolve().parents[2],
                )
        return job_id

    def cancel(self, job_id: str) -> dict:
        """End the job's worker, keeping the runs that finished; a no-op on a job that has ended."""
        path = self.job_dir(job_id)
        with self._lock:
            proc = self._procs.get(job_id)
        if proc is not None and proc.poll() is None:
            proc.terminate()  # the worker writes what finished, then "cancelled"
            try:
                proc.wait(timeout=CANCEL_WAIT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        state = json.loads((path / "status.json").read_text())
        if state["status"] in ACTIVE:  # the worker ended before it could say so itself
            _write_json(path / "status.json", {**state, "status": "cancelled", "error": CANCELLED})
        return self.status(job_id)

    def status(self, job_id: str) -> dict:
        """The job as ``GET /stress/{id}`` shows it (plot names, not URLs)."""
        path = self.job_dir(job_id)
        state = json.loads((path / "status.json").read_text())
        with self._lock:
            proc = self._procs.get(job_id)
        if proc is not None and proc.poll() not in (None, 0) and state["status"] in ACTIVE:
            state = {**state, "status": "failed", "error": f"stress worker exited with {proc.returncode}"}
        out = {"id": job_id, "status": state["status"], "error": state.get("error"),
               "request": json.loads((path / "request.json").read_text()),
               "progress": {"done": state.get("done", 0), "total": state.get("total")},
               "results": None, "report": None, "plots": []}
        if state["status"] in ("completed", "cancelled") and (path / "results.json").is_file():
            out["results"] = json.loads((path / "results.json").read_text())
            report = path / "report.md"
            out["report"] = report.read_text() if report.is_file() else None
            out["plots"] = sorted(p.name for p in path.glob("*.png"))
        return out

    def plot_path(self, job_id: str, name: str) -> Path:
        path = self.job_dir(job_id) / name
        if not PLOT_NAME.match(name) or not path.is_file():
            raise NotFoundError(f"stress job {job_id} has no plot {name!r}")
        return path

    def close(self) -> None:
        with self._lock:
            procs, self._procs = list(self._procs.values()), {}
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


CANCELLED = "cancelled: the worker was asked to stop (DELETE /stress/{id}, or the API shut down)"


class Cancelled(BaseException):
    """SIGTERM in the worker: not an `Exception`, so that no handler below swallows it."""


def _cancel(signum, frame) -> None:
    raise Cancelled


def work(path: Path) -> int:
    """The worker process: run the matrix asked for in ``request.json``."""
    signal.signal(signal.SIGTERM, _cancel)
    import torch

    from falcon_lite.config import RunConfig
    from falcon_lite.engine.stress import run_stress

    torch.set_num_threads(1)
    request = json.loads((path / "request.json").read_text())
    status = {"status": "running", "done": 0, "total": None}
    _write_json(path / "status.json", status)

    def progress(done: int, total: int) -> None:
        _write_json(path / "status.json", {**status, "done": done, "total": total})

    try:
        base = RunConfig.model_validate(request["base"]) if request.get("base") else None
        run_stress(request["grid"], request["seeds"], request["steps"], path, base=base, progress=progress)
    except Cancelled:  # run_stress has written the runs that finished
        state = json.loads((path / "status.json").read_text())
        _write_json(path / "status.json", {**state, "status": "cancelled", "error": CANCELLED})
        return 0
    except Exception as exc:  # the job's outcome is recorded, not raised
        _write_json(path / "status.json", {**status, "status": "failed", "error": f"{type(exc).__name__}: {exc}"})
        raise
    _write_json(path / "status.json", {**status, "status": "completed"})
    return 0


if __name__ == "__main__":
    sys.exit(work(Path(sys.argv[1])))
