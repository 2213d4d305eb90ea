"""Runs trained on Ray, controlled over REST: a live server joined to the test session's Ray.

Start -> running with diagnostics (REST and SSE) -> posterior -> delete refused while
running (409) -> stop (202, idempotent) -> stopped -> resume -> stop -> delete.
"""

from __future__ import annotations

import time

import pytest

from falcon_lite.client import ApiError, Client
from tests.plugins.server import TOKEN, ray_server  # noqa: F401 (fixture)

pytestmark = pytest.mark.ray

CONFIG = {
    "name": "live",
    "estimator": {"hidden": [16, 16]},
    "buffer": {"min_training": 32, "max_training": 32, "simulations_per_step": 32, "prior_fraction": 0.25},
    "training": {"steps": 100_000, "batch_size": 32, "warmup_steps": 20, "checkpoint_every": 20},
    "runtime": {"simulators": 1},
}


def wait_for(predicate, what: str, timeout: float = 180.0, poll: float = 0.3):
    """Poll until `predicate()` returns a truthy value; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll)


@pytest.fixture(scope="module")
def api(ray_server) -> Client:  # noqa: F811
    with Client(ray_server.url, token=TOKEN, timeout=120) as client:
        yield client


def test_run_lifecycle_over_rest(api, ray_server):  # noqa: F811
    run = api.create_run(CONFIG)
    run_id = run["id"]
    assert run["status"] == "running"
    wait_for(lambda: api.get_run(run_id)["step"] >= 25, "25 training steps", timeout=300)

    # Live reads while it trains.
    diag = api.get_run(run_id)["diagnostics"]
    assert {"std_ratio", "bias_over_sigma", "loss"} <= set(diag)
    buf = api.buffer(run_id)
    assert buf["total"] >= 25 * 32 and buf["prior_fraction"] == 0.25
    rows = api.metrics(run_id, since_step=10, names=["std_ratio"])
    assert rows and rows[0]["step"] == 11 and set(rows[0]) == {"step", "std_ratio"}

    # SSE: current status first, then diagnostics with the buffer, while it runs.
    stream = api.events(run_id, timeout=60)
    kind, data, _ = next(stream)
    assert (kind, data["status"]) == ("status", "running")
    kind, data, eid = next(e for e in stream if e[0] == "diagnostics")
    assert data["rows"] and data["buffer"]["total"] > 0 and eid
    stream.close()

    posterior = api.posterior(run_id, n=50)
    assert (posterior["n"], posterior["dim"]) == (50, 1) and len(posterior["samples"]) == 50

    with pytest.raises(ApiError) as err:
        api.delete(run_id)
    assert err.value.status == 409 and "stop it" in err.value.detail

    assert api.stop(run_id)["status"] in ("stopping", "stopped")
    wait_for(lambda: api.get_run(run_id)["status"] == "stopped", "the run to stop")
    step_at_stop = api.get_run(run_id)["step"]
    again = api.stop(run_id)
    assert again["status"] == "stopped" and "nothing to stop" in again["detail"]

    assert api.resume(run_id)["status"] == "running"
    wait_for(lambda: api.get_run(run_id)["step"] > step_at_stop + 5, "training to go on after resume")
    api.stop(run_id)
    wait_for(lambda: api.get_run(run_id)["status"] == "stopped", "the run to stop again")
    api.delete(run_id)
    with pytest.raises(ApiError) as err:
        api.get_run(run_id)
    assert err.value.status == 404


def test_resume_of_completed_run_is_409(api):
    run_id = api.create_run({**CONFIG, "name": "short", "training": {**CONFIG["training"], "steps": 30}})["id"]
    wait_for(lambda: api.get_run(run_id)["status"] == "completed", "the short run to complete")
    with pytest.raises(ApiError) as err:
        api.resume(run_id)
    assert err.value.status == 409 and "completed" in err.value.detail
    assert api.stop(run_id)["status"] == "completed"
