"""Stress jobs behind ``POST /stress``: each runs `run_stress` in its own process.

A job lives in ``<data_dir>/stress/<id>/``: ``request.json`` (what was asked),
``status.json`` (``queued -> running -> completed | failed``, with ``done``/``total`` and
an ``error`` on failure) and, once done, the stress contract's ``results.json``,
``report.md`` and PNG plots. The worker is a separate process so that training a matrix
never holds the API's interpreter; the files are the only channel between them.

Run a job by hand: ``python -m services.api.stress_jobs <job dir>``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import uuid
from pathlib import Path

from falcon_lite.store.errors import NotFoundError

JOB_ID = re.compile(r"^[0-9a-f]{32}$")
PLOT_NAME = re.compile(r"^[A-Za-z0-9_.-]+\.png$")


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


class StressJobs:
    """Start, inspect and stop the stress jobs of one API process."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._procs: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()

    def job_dir(self, job_id: str) -> Path:
        path = self.root / job_id
        if not JOB_ID.match(job_id) or not (path / "status.json").is_file():
            raise NotFoundError(f"stress job {job_id!r} not found")
        return path

    def submit(self, request: dict) -> str:
        job_id = uuid.uuid4().hex
        path = self.root / job_id
        path.mkdir(parents=True)
        _write_json(path / "request.json", request)
        _write_json(path / "status.json", {"status": "queued", "done": 0, "total": None})
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
        with open(path / "worker.log", "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "services.api.stress_jobs", str(path)],
                stdout=log, stderr=subprocess.STDOUT, env=env,
                cwd=Path(__file__).resolve().parents[2],
            )
        with self._lock:
            self._procs[job_id] = proc
        return job_id

    def status(self, job_id: str) -> dict:
        """The job as ``GET /stress/{id}`` shows it (plot names, not URLs)."""
        path = self.job_dir(job_id)
        state = json.loads((path / "status.json").read_text())
        with self._lock:
            proc = self._procs.get(job_id)
        if proc is not None and proc.poll() not in (None, 0) and state["status"] in ("queued", "running"):
            state = {**state, "status": "failed", "error": f"stress worker exited with {proc.returncode}"}
        out = {"id": job_id, "status": state["status"], "error": state.get("error"),
               "request": json.loads((path / "request.json").read_text()),
               "progress": {"done": state.get("done", 0), "total": state.get("total")},
               "results": None, "report": None, "plots": []}
        if state["status"] == "completed":
            out["results"] = json.loads((path / "results.json").read_text())
            out["report"] = (path / "report.md").read_text()
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


def work(path: Path) -> int:
    """The worker process: run the matrix asked for in ``request.json``."""
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
    except Exception as exc:  # the job's outcome is recorded, not raised
        _write_json(path / "status.json", {**status, "status": "failed", "error": f"{type(exc).__name__}: {exc}"})
        raise
    _write_json(path / "status.json", {**status, "status": "completed"})
    return 0


if __name__ == "__main__":
    sys.exit(work(Path(sys.argv[1])))
