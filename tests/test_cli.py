"""The `falcon-lite` command on its own (no server): its options, and one clear line, not a
traceback, for each thing a user can get wrong. Verbs over REST are tested in test_api.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from falcon_lite.store.db import make_engine
from falcon_lite.store.models import Run

ROOT = Path(__file__).resolve().parents[1]
SMALL = {
    "name": "cli-small",
    "estimator": {"hidden": [8, 8]},
    "buffer": {"min_training": 32, "max_training": 64, "prior_fraction": 0.25, "simulations_per_step": 16},
    "training": {"steps": 300, "batch_size": 16, "warmup_steps": 3, "checkpoint_every": 20},
}


def falcon_lite(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FALCON_LITE_", "DATABASE_URL", "RAY_ADDRESS"))}
    env.update({"RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"})
    return subprocess.run([sys.executable, "-m", "falcon_lite.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_run_steps_overrides_the_configs_steps(tmp_path):
    config = tmp_path / "small.json"
    config.write_text(json.dumps(SMALL))
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    out = falcon_lite("run", str(config), "--steps", "7", "--quiet", "--database-url", url)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "run 'cli-small': completed (miscalibrated) at step 7/7" in out.stdout
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            config, step = conn.execute(select(Run.config, Run.step)).one()
        assert (config["training"]["steps"], step) == (7, 7)
    finally:
        engine.dispose()
    refused = falcon_lite("run", "--steps", "0")
    assert refused.returncode == 2 and "--steps: must be at least 1, got 0" in refused.stderr


BAD_FILES = {
    "missing": (None, "config file not found: {path}"),
    "directory": ("DIR", "config file {path} is a directory, not a JSON file"),
    "not json": ("{name: 1", "config file {path} is not valid JSON: Expecting property name enclosed in double "
                             "quotes (line 1, column 2)"),
    "not an object": ("[1, 2]", "config file {path} must hold a JSON object (a RunConfig), not list"),
    "binary": (b"\xff\xfe\x00", "config file {path} is not a text file (JSON expected)"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
@pytest.mark.parametrize("verb", [["run"], ["runs", "start"], ["stress", "--grid", "buffer.prior_fraction=0", "--base"],
                                  ["remote-stress", "--grid", "buffer.prior_fraction=0", "--base"]])
def test_a_bad_config_file_is_one_line_not_a_traceback(tmp_path, case, verb):
    content, message = BAD_FILES[case]
    path = tmp_path / "config.json"
    if content == "DIR":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    server = ["--server", "http://127.0.0.1:9"] if verb[0] == "runs" else []
    out = falcon_lite(*verb, str(path), *server, "--out", str(tmp_path / "out")) if "stress" in verb[0] \
        else falcon_lite(*verb, str(path), *server)
    assert out.returncode == 1
    assert out.stderr == message.format(path=path) + "\n"


def test_an_invalid_config_names_each_field_on_its_own_line(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"buffer": {"prior_fraction": 3}, "nme": "typo"}))
    out = falcon_lite("run", str(path))
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        f"invalid config {path}:",
        "  buffer.prior_fraction: Value error, must be greater than or equal to 0 and less than or equal to 1, got 3.0",
        "  nme: Extra inputs are not permitted",
    ]


def test_stress_prints_its_report_and_no_stray_progress_line(tmp_path):
    base = tmp_path / "base.json"
    base.write_text(json.dumps({k: v for k, v in SMALL.items() if k != "name"}))
    bad = falcon_lite("stress", "--grid", "buffer.bogus=1", "--out", str(tmp_path / "bad"))
    assert (bad.returncode, bad.stderr) == (2, "invalid grid: unknown config key 'buffer.bogus'\n")
    assert not (tmp_path / "bad").exists()
    out = falcon_lite("stress", "--grid", "buffer.prior_fraction=0,0.5", "--seeds", "1", "--steps", "5",
                      "--base", str(base), "--out", str(tmp_path / "out"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "0run" not in out.stderr and "2/2" in out.stderr  # a bar with its total, not a bare counter
    assert "| buffer.prior_fraction=0 |" in out.stdout and "2 runs; results in" in out.stdout
    quiet = falcon_lite("stress", "--grid", "buffer.prior_fraction=0", "--seeds", "1", "--steps", "5",
                        "--base", str(base), "--out", str(tmp_path / "quiet"), "--quiet")
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_make_serve_listens_on_the_port_it_is_given(tmp_path):
    """`make serve PORT=...` (README): the API answers on that port."""
    import signal
    import time

    import httpx

    from tests.plugins.server import free_port

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FALCON_LITE_", "DATABASE_URL", "RAY_ADDRESS"))}
    env.update({"DATABASE_URL": f"sqlite:///{tmp_path / 'serve.db'}", "FALCON_LITE_DATA_DIR": str(tmp_path)})
    log = tmp_path / "make.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["make", "--no-print-directory", "serve", f"PORT={port}"], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()[-2000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"nothing answered on port {port}:\n{log.read_text()[-2000:]}"
            time.sleep(0.3)
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # make and the server it started (their own session)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    assert f"--port {port}" in log.read_text()
