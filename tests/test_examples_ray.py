"""Every example problem on Ray through REST (issue 16): created by name, trained briefly by a
live server joined to the test session's Ray, and sampled from GET /runs/{id}/posterior."""

from __future__ import annotations

import time

import pytest

from falcon_lite import plugins
from falcon_lite.client import Client
from tests.plugins.server import TOKEN, ray_server  # noqa: F401 (fixture)

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]

BRIEF = {
    "buffer": {"simulations_per_step": 16, "min_training": 16, "max_training": 64, "prior_fraction": 0.2},
    "training": {"steps": 30, "warmup_steps": 10, "batch_size": 16, "checkpoint_every": 10},
    "runtime": {"simulators": 2},
}
EXAMPLES = {  # name -> (problem params, estimator section, theta dim)
    "gaussian_linear": ({}, {}, 10),
    "two_moons": ({}, {}, 2),
    "slcp": ({}, {}, 5),
    "signal": ({}, {"embedding": {"name": "mlp", "features": 8, "hidden": [32]}}, 3),
    "slow": ({"ms_per_simulation": 1.0}, {}, 2),
    "flaky": ({}, {}, 2),
}


@pytest.fixture(scope="module")
def api(ray_server) -> Client:  # noqa: F811
    with Client(ray_server.url, token=TOKEN, timeout=120) as client:
        yield client


def test_every_example_is_listed(api):
    listed = {p["name"]: p for p in api._call("GET", "/problems")["data"]}
    assert set(EXAMPLES) <= set(listed) and set(EXAMPLES) <= set(plugins.names(plugins.PROBLEMS))
    for name, (_, _, dim) in EXAMPLES.items():
        assert len(listed[name]["parameters"]) == dim and listed[name].get("error") is None


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_every_example_runs_on_ray_and_gives_posterior_samples_of_its_shape(api, name):
    params, estimator, dim = EXAMPLES[name]
    run = api.create_run({"name": f"example-{name}", "problem": {"name": name, "params": params},
                          "estimator": estimator, **BRIEF})
    deadline = time.monotonic() + 600
    while (status := api.get_run(run["id"])["status"]) in ("pending", "running", "stopping"):
        assert time.monotonic() < deadline, f"{name}: still {status}"
        time.sleep(0.5)
    shown = api.get_run(run["id"])
    assert status == "completed", shown.get("reason")
    assert shown["outcome"] is not None
    body = api.posterior(run["id"], n=64)
    assert len(body["samples"]) == 64 and all(len(row) == dim for row in body["samples"])
    buffer = api.buffer(run["id"])
    assert buffer["total"] > 0


def test_posterior_samples_stay_within_a_bounded_prior(api):
    """two_moons' prior is U(-1, 1)^2: a Gaussian estimate's draws outside it are drawn again."""
    run = api.create_run({"name": "moons-support", "problem": {"name": "two_moons"}, **BRIEF})
    deadline = time.monotonic() + 600
    while api.get_run(run["id"])["status"] in ("pending", "running", "stopping"):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    samples = api.posterior(run["id"], n=2000)["samples"]
    assert len(samples) == 2000 and all(-1 <= v <= 1 for row in samples for v in row)


def test_a_truncated_flow_proposal_runs_on_ray_with_its_checks_over_rest(api):
    """proposal.method "truncated" on Ray (the trainer ships weights versions, the sampler draws
    from their regions) completes, and the sample-based checks (c2st, TARP, HPD, marginals) come
    back in GET /metrics rows at their cadence and at the last step."""
    config = {"name": "truncated-on-ray", "problem": {"name": "two_moons"},
              "estimator": {"name": "flow", "hidden": [16, 16], "normalize": True},
              "proposal": {"method": "truncated", "region_every": 5, "region_draws": 1000, "hpd_epsilon": 0.3},
              **BRIEF, "buffer": {**BRIEF["buffer"], "validation_size": 16},
              "training": {**BRIEF["training"], "c2st_every": 15, "coverage_every": 15}}
    run = api.create_run(config)
    deadline = time.monotonic() + 600
    while (status := api.get_run(run["id"])["status"]) in ("pending", "running", "stopping"):
        assert time.monotonic() < deadline, f"still {status}"
        time.sleep(0.5)
    assert status == "completed", api.get_run(run["id"]).get("reason")
    rows = api.metrics(run["id"], names=["c2st", "tarp_error", "hpd_error", "marginal_q50_0"])
    checked = [r for r in rows if r.get("c2st") is not None]
    assert [r["step"] for r in checked] == [0, 15, 29]
    assert all(r["tarp_error"] is not None and r["hpd_error"] is not None and r["marginal_q50_0"] is not None
               for r in checked)
