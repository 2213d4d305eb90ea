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
