"""What a request may ask of a live server: its configured caps, and bodies that are not there.

A server of its own (real HTTP, SQLite and PostgreSQL) with small caps
(``FALCON_LITE_POSTERIOR_MAX_VALUES``, ``FALCON_LITE_STRESS_MAX_*``) and a ``RAY_ADDRESS``
where nothing listens, so that a request that gets as far as starting a run answers 503
at once instead of starting Ray.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from falcon_lite.client import ApiError, Client
from falcon_lite.config import RunConfig
from falcon_lite.store import runs as store_runs
from falcon_lite.store.db import make_engine, session_factory
from tests.plugins.server import TOKEN, LiveServer, free_port, server_db_url, start_server  # noqa: F401

LIMITS = {
    "FALCON_LITE_POSTERIOR_MAX_VALUES": "30",
    "FALCON_LITE_STRESS_MAX_RUNS": "4",
    "FALCON_LITE_STRESS_MAX_STEPS": "5000",
    "FALCON_LITE_STRESS_MAX_TOTAL_STEPS": "8000",
    "FALCON_LITE_STRESS_MAX_JOBS": "1",
}
SMALL = {
    "buffer": {"min_training": 32, "max_training": 64, "prior_fraction": 0.25, "simulations_per_step": 16},
    "training": {"batch_size": 16, "warmup_steps": 10, "checkpoint_every": 20},
    "estimator": {"hidden": [8, 8]},
}


@pytest.fixture(scope="module")
def limited(server_db_url: str, tmp_path_factory) -> Iterator[LiveServer]:  # noqa: F811
    env = {**LIMITS, "RAY_ADDRESS": f"127.0.0.1:{free_port()}"}
    server = start_server(server_db_url, tmp_path_factory.mktemp("api-limits"), extra_env=env)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def api(limited) -> Iterator[Client]:
    with Client(limited.url, token=TOKEN) as client:
        yield client


def count_runs(api: Client) -> int:
    return api.list_runs(limit=1)["count"]


# ---- POST /runs without a body ------------------------------------------------------------------
@pytest.mark.parametrize("headers", [{}, {"Content-Type": "application/json"}])
def test_an_empty_body_means_the_default_run(limited, api, headers):
    """No body is `{}`: the seed's scenario, started, which here gets as far as Ray (503)."""
    before = count_runs(api)
    with limited.client() as http:
        response = http.post("/runs", content=b"", headers=headers)
    assert response.status_code == 503, response.text
    assert "cannot reach Ray" in response.json()["detail"]
    assert count_runs(api) == before


# ---- GET /posterior ---------------------------------------------------------------------------------
def test_posterior_is_capped_in_numbers_naming_n(limited, api):
    """n x dim over FALCON_LITE_POSTERIOR_MAX_VALUES is a 422 on `n` saying how many fit."""
    import torch

    from falcon_lite.engine.inline import run_inline

    torch.set_num_threads(1)
    config = RunConfig.model_validate({**SMALL, "name": "3d", "simulator": {"x_obs": [0.1, 0.2, 0.3]},
                                       "training": {**SMALL["training"], "steps": 20}})
    engine = make_engine(limited.db_url)
    try:
        with session_factory(engine).begin() as session:
            run_id = store_runs.create_run(session, config).id
        run_inline(engine, run_id)
    finally:
        engine.dispose()
    assert api.posterior(run_id, n=10)["dim"] == 3
    with limited.client() as http:
        response = http.get(f"/runs/{run_id}/posterior", params={"n": 11})
    assert response.status_code == 422
    error = response.json()["detail"][0]
    assert error["loc"] == ["query", "n"] and error["type"] == "limit_exceeded"
    assert "33 numbers" in error["msg"] and "FALCON_LITE_POSTERIOR_MAX_VALUES" in error["msg"]
    assert "at most 10" in error["msg"]
    assert len(api.reference(run_id, n=10)["samples"]) == 10  # /reference has the same cap
    with limited.client() as http:
        response = http.get(f"/runs/{run_id}/reference", params={"n": 11})
    assert response.status_code == 422
    error = response.json()["detail"][0]
    assert error["loc"] == ["query", "n"] and "33 numbers" in error["msg"]


# ---- POST /stress: caps, cancel, status ------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "loc", "words"),
    [({"grid": {"buffer.prior_fraction": [0.0]}, "steps": 5001}, ["body", "steps"],
      "steps = 5001 is over the limit of 5000 steps per run (FALCON_LITE_STRESS_MAX_STEPS)"),
     ({"grid": {"buffer.prior_fraction": [0.0, 0.5]}, "seeds": 3, "steps": 10}, ["body"],
      "2 grid points x 3 seeds = 6 runs, over the limit of 4 (FALCON_LITE_STRESS_MAX_RUNS)"),
     ({"grid": {"buffer.prior_fraction": [0.0, 0.5]}, "seeds": 1, "steps": 4001}, ["body"],
      "2 runs x 4001 steps = 8002 steps, over the limit of 8000 (FALCON_LITE_STRESS_MAX_TOTAL_STEPS)")],
)
def test_stress_requests_over_the_caps_are_422_naming_the_setting(limited, body, loc, words):
    with limited.client() as http:
        response = http.post("/stress", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["detail"][0]
    assert (error["loc"], error["msg"], error["type"]) == (loc, words, "limit_exceeded")


def test_a_stress_job_can_be_cancelled_and_keeps_the_runs_that_finished(limited, api):
    if not limited.db_url.startswith("sqlite"):
        pytest.skip("stress jobs do not use the server's database; once is enough")
    import time

    grid = {"buffer.prior_fraction": [0.0, 0.5]}
    job = api.stress(grid, seeds=1, steps=4000, base=SMALL)
    assert job["status"] in ("queued", "running") and job["progress"]["done"] == 0
    deadline = time.monotonic() + 240
    while (seen := api.stress_status(job["id"]))["progress"]["done"] < 1:
        assert seen["status"] in ("queued", "running") and time.monotonic() < deadline, seen
        time.sleep(0.2)
    assert seen["status"] == "running" and seen["progress"] == {"done": 1, "total": 2}

    with pytest.raises(ApiError) as err:  # FALCON_LITE_STRESS_MAX_JOBS=1
        api.stress(grid, seeds=1, steps=10, base=SMALL)
    assert err.value.status == 409 and "FALCON_LITE_STRESS_MAX_JOBS" in err.value.detail

    cancelled = api.cancel_stress(job["id"])
    assert cancelled["status"] == "cancelled" and "cancelled" in cancelled["error"]
    assert cancelled["progress"] == {"done": 1, "total": 2}
    results = cancelled["results"]
    assert results["complete"] is False
    assert [(r["overrides"], r["steps"]) for r in results["runs"]] == [({"buffer.prior_fraction": 0.0}, 4000)]
    assert "1 runs" in cancelled["report"] and cancelled["plots"]
    time.sleep(1.0)
    assert api.stress_status(job["id"]) == cancelled  # the worker is gone: nothing moves any more
    assert api.cancel_stress(job["id"]) == cancelled  # idempotent

    quick = api.stress({"buffer.prior_fraction": [0.5]}, seeds=1, steps=10, base=SMALL)  # a slot is free again
    done = api.wait_stress(quick["id"], timeout=240, poll=0.3)
    assert done["status"] == "completed" and done["results"]["complete"] is True
    assert api.cancel_stress(quick["id"]) == done  # an ended job stays as it ended

    early = api.cancel_stress(api.stress({"buffer.prior_fraction": [0.5]}, seeds=1, steps=10, base=SMALL)["id"])
    assert early["status"] == "cancelled" and early["progress"]["done"] == 0


def test_cancelling_needs_the_token_and_an_existing_job(limited):
    with limited.client(auth=False) as http:
        assert http.delete("/stress/" + "0" * 32).status_code == 401
    with limited.client() as http:
        missing = http.delete("/stress/" + "0" * 32)
        bad = http.delete("/stress/not-a-job")
    assert missing.status_code == 404 and "not found" in missing.json()["detail"]
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "job_id"
