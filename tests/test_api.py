"""The REST contract against a live server (uvicorn subprocess, real HTTP), on SQLite and PostgreSQL.

No Ray here: runs with data are made by the inline runtime in this process, writing to
the server's database (real store code); the server only reads them. Run control on Ray
is covered in test_api_live.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import numpy as np
import pytest

from falcon_lite.client import ApiError, Client
from falcon_lite.config import RunConfig
from falcon_lite.store import runs as store_runs
from falcon_lite.store.db import make_engine, session_factory
from tests.plugins.server import ROOT, TOKEN, live_server, server_db_url  # noqa: F401 (fixtures)

SMALL = {
    "name": "small-inline",
    "buffer": {"min_training": 32, "max_training": 64, "prior_fraction": 0.25, "simulations_per_step": 16},
    "training": {"steps": 40, "batch_size": 16, "warmup_steps": 10, "checkpoint_every": 20},
}


@pytest.fixture(scope="module")
def api(live_server) -> Client:  # noqa: F811
    with Client(live_server.url, token=TOKEN) as client:
        yield client


@pytest.fixture(scope="module")
def anon(live_server) -> httpx.Client:  # noqa: F811
    with live_server.client(auth=False) as client:
        yield client


@pytest.fixture(scope="module")
def db(live_server):  # noqa: F811
    engine = make_engine(live_server.db_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def trained_run(db) -> int:
    """A completed run with samples, metrics, events and checkpoints (inline runtime)."""
    import torch

    from falcon_lite.engine.inline import run_inline

    torch.set_num_threads(1)
    with session_factory(db).begin() as session:
        run_id = store_runs.create_run(session, RunConfig.model_validate(SMALL)).id
    run_inline(db, run_id)
    return run_id


def set_status(db, run_id: int, status: str) -> None:
    with session_factory(db).begin() as session:
        store_runs.set_status(session, run_id, status)


def count_runs(api: Client) -> int:
    return api.list_runs(limit=1)["count"]


# ---- system ---------------------------------------------------------------------------
def test_health_names_the_database(api, live_server):  # noqa: F811
    health = api.health()
    assert health["status"] == "ok"
    assert health["database"] == ("sqlite" if live_server.db_url.startswith("sqlite") else "postgresql")


def test_openapi_shows_real_models_with_examples(anon):
    spec = anon.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    for name in ("RunCreate", "RunPublic", "RunsPublic", "BufferPublic", "StressCreate", "StressPublic"):
        assert name in schemas, name
    assert schemas["RunCreate"]["examples"][0]["buffer"]["prior_fraction"] == 0.2
    assert schemas["RunCreate"]["additionalProperties"] is False
    for path in ("/runs", "/runs/{run_id}", "/runs/{run_id}/stop", "/runs/{run_id}/resume", "/runs/{run_id}/buffer",
                 "/runs/{run_id}/metrics", "/runs/{run_id}/events", "/runs/{run_id}/posterior", "/stress",
                 "/stress/{job_id}", "/health", "/metrics"):
        assert path in spec["paths"], path
    assert anon.get("/docs").status_code == 200


def test_every_response_has_a_request_id(anon):
    assert len(anon.get("/health").headers["x-request-id"]) == 32


# ---- create, list, show ----------------------------------------------------------------
def test_create_without_start_is_pending_and_listed(api):
    run = api.create_run({"name": "only-created", "buffer": {"prior_fraction": 0.3}}, start=False)
    assert run["status"] == "pending" and run["step"] == 0 and run["diagnostics"] is None
    assert run["config"]["buffer"]["prior_fraction"] == 0.3
    assert run["config"]["simulator"]["x_obs"] == [0.3]  # the defaults are filled in
    assert api.get_run(run["id"]) == run
    assert run["id"] in [r["id"] for r in api.list_runs(limit=500)["data"]]


def test_list_is_paginated_newest_first(api):
    ids = [api.create_run({"name": f"page-{i}"}, start=False)["id"] for i in range(3)]
    total = count_runs(api)
    first = api.list_runs(offset=0, limit=2)
    assert len(first["data"]) == 2 and first["count"] == total
    assert first["data"][0]["id"] == ids[-1] and first["data"][1]["id"] == ids[-2]
    second = api.list_runs(offset=2, limit=2)
    assert second["data"][0]["id"] == ids[0]
    assert api.list_runs(offset=total, limit=2) == {"data": [], "count": total}


def test_trained_run_shows_latest_diagnostics(api, trained_run):
    run = api.get_run(trained_run)
    assert run["status"] == "completed" and run["step"] == 40
    diag = run["diagnostics"]
    assert diag["step"] == 39
    for name in ("std_ratio", "bias_over_sigma", "loss"):
        assert isinstance(diag[name], float), name


# ---- buffer, metrics ------------------------------------------------------------------
def test_buffer_composition_adds_up(api, trained_run):
    buf = api.buffer(trained_run)
    assert set(buf) == {"counts", "purged", "total", "prior_share_trainable", "prior_fraction"}
    assert set(buf["counts"]) == {"VALIDATION", "TRAINING", "DISFAVOURED", "TOMBSTONE"}
    assert all(set(c) == {"prior", "proposal"} for c in buf["counts"].values())
    stored = sum(n for c in buf["counts"].values() for n in c.values())
    assert stored + buf["purged"] == buf["total"] == 40 * 16
    trainable = buf["counts"]["TRAINING"]["prior"] + buf["counts"]["TRAINING"]["proposal"]
    assert 32 <= trainable <= 64
    assert buf["prior_fraction"] == 0.25 and buf["prior_share_trainable"] >= 0.25


def test_metrics_since_step_and_names(api, trained_run):
    rows = api.metrics(trained_run)
    assert [r["step"] for r in rows] == list(range(40))
    assert {"std_ratio", "bias_over_sigma", "loss"} <= set(rows[0])
    later = api.metrics(trained_run, since_step=29)
    assert [r["step"] for r in later] == list(range(30, 40))
    picked = api.metrics(trained_run, since_step=35, names=["std_ratio", "loss"])
    assert [set(r) for r in picked] == [{"step", "std_ratio", "loss"}] * 4
    assert len(api.metrics(trained_run, limit=5)) == 5



def test_buffer_is_the_stores_composition(api, db, trained_run):
    from falcon_lite.core.policy import Sizes
    from falcon_lite.store.buffer import SampleStore

    b = RunConfig.model_validate(SMALL).buffer
    sizes = Sizes(validation_size=b.validation_size, min_training=b.min_training,
                  max_training=b.max_training, prior_fraction=b.prior_fraction)
    store = SampleStore(db, trained_run, sizes, 1)
    comp = store.composition()
    assert api.buffer(trained_run) == {"counts": comp.counts, "purged": comp.purged, "total": comp.total,
                                       "prior_share_trainable": comp.prior_share_trainable, "prior_fraction": 0.25}


def test_buffer_and_metrics_of_a_run_without_samples(api):
    run = api.create_run({"name": "empty", "buffer": {"prior_fraction": 0.5}}, start=False)
    buf = api.buffer(run["id"])
    assert buf["total"] == buf["purged"] == 0 and buf["prior_share_trainable"] == 0.0
    assert buf["prior_fraction"] == 0.5
    assert api.metrics(run["id"]) == [] and api.metrics(run["id"], since_step=10) == []


def test_metrics_past_the_last_step_is_empty_not_404(api, trained_run):
    assert api.metrics(trained_run, since_step=39) == []


# ---- posterior (from the newest checkpoint; no Ray) ------------------------------------------
def test_posterior_comes_from_the_newest_checkpoint(api, trained_run):
    first, again = api.posterior(trained_run, n=7), api.posterior(trained_run, n=7)
    assert (first["run_id"], first["step"], first["n"], first["dim"]) == (trained_run, 40, 7, 1)
    assert len(first["samples"]) == 7 and all(len(row) == 1 for row in first["samples"])
    assert first == again  # the same checkpoint gives the same draws


def test_posterior_without_a_trained_network_is_409_saying_why(api):
    run_id = api.create_run({"name": "untrained", "training": {"checkpoint_every": 25}}, start=False)["id"]
    with pytest.raises(ApiError) as err:
        api.posterior(run_id, n=5)
    assert err.value.status == 409
    assert f"run {run_id} has no checkpoint of a trained network yet" in err.value.detail
    assert "every 25 training steps" in err.value.detail


def test_posterior_names_the_parameters(api, trained_run):
    assert api.posterior(trained_run, n=3)["parameters"] == ["z0"]  # a v1 config: the gaussian problem


# ---- reference (the problem's reference posterior at the run's observation; no Ray) ---------
def test_reference_of_an_exact_gaussian_draws_from_it(api, trained_run):
    ref = api.reference(trained_run, n=2000)
    assert (ref["run_id"], ref["problem"], ref["kind"], ref["n"], ref["dim"]) == (trained_run, "gaussian", "gaussian", 2000, 1)
    assert ref["parameters"] == ["z0"] and len(ref["samples"]) == 2000
    draws = np.array(ref["samples"])[:, 0]
    assert abs(draws.mean() - ref["mean"][0]) < 5 * ref["std"][0] / np.sqrt(2000)
    assert abs(draws.std() / ref["std"][0] - 1) < 0.1
    assert api.reference(trained_run, n=5) == api.reference(trained_run, n=5)  # the same draws each time


def test_reference_samples_of_a_problem_that_has_them(api):
    run_id = api.create_run({"name": "moons", "problem": {"name": "two_moons", "observation": "2"}}, start=False)["id"]
    ref = api.reference(run_id, n=300)
    assert (ref["kind"], ref["dim"], ref["parameters"]) == ("samples", 2, ["theta1", "theta2"])
    draws = np.array(ref["samples"])
    assert draws.shape == (300, 2) and len(np.unique(draws, axis=0)) == 300  # distinct rows of its samples
    assert np.all(np.abs(draws) <= 1)  # inside the prior's box
    # (its reference is exact at any x_obs: at observation "2" itself it is the problem's own)
    from falcon_lite_examples import two_moons

    x_obs = two_moons.make().observations["2"]
    assert np.allclose(ref["mean"], two_moons.reference(x_obs).mean)


def test_reference_is_404_with_the_reason_where_there_is_none(api, db):
    # two_moons has no posterior where x_obs is impossible under it
    run_id = api.create_run({"name": "far", "problem": {"name": "two_moons", "x_obs": [5.0, 5.0]}}, start=False)["id"]
    with pytest.raises(ApiError) as err:
        api.reference(run_id, n=5)
    assert err.value.status == 404
    assert "problem 'two_moons' has no reference posterior" in err.value.detail
    # a problem that is not installed here (a stored config, made before it was removed)
    with session_factory(db).begin() as session:
        gone = store_runs.create_run(session, RunConfig.model_validate({"problem": {"name": "uninstalled"}})).id
    with pytest.raises(ApiError) as err:
        api.reference(gone, n=5)
    assert err.value.status == 404 and "cannot be built here" in err.value.detail

# ---- SSE ------------------------------------------------------------------------------
def test_events_stream_status_diagnostics_and_resume(api, trained_run):
    seen = list(api.events(trained_run, timeout=60))
    kinds = [kind for kind, _, _ in seen]
    assert kinds[0] == "status" and seen[0][1]["status"] == "completed"
    assert kinds[-1] == "end"
    assert "diagnostics" in kinds
    rows = [row for kind, data, _ in seen if kind == "diagnostics" for row in data["rows"]]
    assert [r["step"] for r in rows] == list(range(40))
    buffers = [data["buffer"] for kind, data, _ in seen if kind == "diagnostics"]
    assert buffers[-1] == api.buffer(trained_run)
    assert all(eid for _, _, eid in seen)
    # Status changes recorded by the store come as `status` events with the previous status.
    changes = [data for kind, data, _ in seen[1:] if kind == "status"]
    assert [c["status"] for c in changes] == ["running", "completed"]
    # Reconnecting with the last id replays nothing already sent.
    resumed = list(api.events(trained_run, last_event_id=seen[-1][2], timeout=60))
    assert [kind for kind, _, _ in resumed] == ["status", "end"]
    # The same through the query parameter (EventSource cannot set headers when reopened).
    with api.http.stream("GET", f"/runs/{trained_run}/events", params={"last_event_id": seen[-1][2]}) as response:
        names = [line[len("event: "):] for line in response.iter_lines() if line.startswith("event: ")]
    assert names == ["status", "end"]


def test_events_of_unknown_run_is_404(anon):
    response = anon.get("/runs/987654/events")
    assert response.status_code == 404 and "987654" in response.json()["detail"]


# ---- run control without a live run ----------------------------------------------------
def test_stop_is_idempotent_on_runs_that_are_not_running(api, trained_run):
    pending = api.create_run({"name": "never-started"}, start=False)["id"]
    for run_id, status in ((trained_run, "completed"), (pending, "pending")):
        for _ in range(2):
            answer = api.stop(run_id)
            assert answer["status"] == status and "nothing to stop" in answer["detail"]
    assert api.get_run(pending)["status"] == "pending"


def test_delete_running_is_409_and_stopped_run_is_removed(api, db):
    run_id = api.create_run({"name": "to-delete"}, start=False)["id"]
    set_status(db, run_id, "running")
    with pytest.raises(ApiError) as err:
        api.delete(run_id)
    assert err.value.status == 409 and "running" in err.value.detail
    set_status(db, run_id, "stopping")
    set_status(db, run_id, "stopped")
    api.delete(run_id)
    with pytest.raises(ApiError) as err:
        api.get_run(run_id)
    assert err.value.status == 404


# ---- bad input --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "loc", "words"),
    [
        ({"buffer": {"prior_fraction": 1.5}}, ["body", "buffer", "prior_fraction"], "less than or equal"),
        ({"nme": "typo"}, ["body", "nme"], "Extra inputs"),
        ({"simulator": {"name": "os.system"}}, ["body", "simulator", "name"], "gaussian"),
        ({"estimator": {"name": "builtins.eval"}}, ["body", "estimator", "name"], "gaussian_ema"),
        ({"training": {"steps": 0}}, ["body", "training", "steps"], "greater than"),
        ({"buffer": {"min_training": 10, "max_training": 5}}, ["body", "buffer"], "min_training"),
        ({"start": "maybe"}, ["body", "start"], "boolean"),
    ],
)
def test_bad_config_is_422_naming_the_field_and_creates_nothing(api, live_server, body, loc, words):  # noqa: F811
    before = count_runs(api)
    with live_server.client() as http:
        response = http.post("/runs", json=body)
    assert response.status_code == 422
    errors = response.json()["detail"]
    assert any(e["loc"] == loc and words in e["msg"] and "type" in e for e in errors), errors
    assert count_runs(api) == before


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'"text"'])
def test_malformed_body_is_422_and_creates_nothing(api, live_server, raw):  # noqa: F811
    before = count_runs(api)
    with live_server.client() as http:
        response = http.post("/runs", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][0] == "body"
    assert count_runs(api) == before


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain"])
@pytest.mark.parametrize("path", ["/runs", "/stress"])
def test_a_body_that_is_not_sent_as_json_gets_a_hint(api, live_server, content_type, path):  # noqa: F811
    """What `curl -d '{...}'` sends without `-H 'Content-Type: application/json'`."""
    before = count_runs(api)
    with live_server.client() as http:
        response = http.post(path, content=b'{"name": "x"}', headers={"Content-Type": content_type})
    assert response.status_code == 415
    assert "Content-Type: application/json" in response.json()["detail"] and content_type in response.json()["detail"]
    assert count_runs(api) == before
    with live_server.client() as http:  # JSON under a +json type is JSON
        typed = http.post("/runs", content=b'{"name": "typed", "start": false}',
                          headers={"Content-Type": "application/vnd.api+json; charset=utf-8"})
    assert typed.status_code == 201, typed.text


def test_oversized_body_is_413(api, live_server):  # noqa: F811
    before = count_runs(api)
    with live_server.client() as http:
        response = http.post("/runs", json={"name": "x" * 2_000_000})
        streamed = http.post("/runs", content=iter([b"{" + b" " * 600_000, b" " * 600_000 + b"}"]),
                             headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and "too large" in response.json()["detail"]
    assert streamed.status_code == 413
    assert count_runs(api) == before


@pytest.mark.parametrize(
    ("path", "name"),
    [("/runs/abc", "run_id"), ("/runs/0", "run_id"), ("/runs?limit=0", "limit"), ("/runs?offset=-1", "offset"),
     ("/runs/1/metrics?since_step=x", "since_step"), ("/runs/1/posterior?n=0", "n"),
     ("/stress/not-a-job", "job_id")],
)
def test_bad_parameters_are_422_naming_them(anon, path, name):
    response = anon.get(path)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][-1] == name


@pytest.mark.parametrize("path", ["/runs/987654", "/runs/987654/buffer", "/runs/987654/metrics",
                                  "/runs/987654/posterior", "/runs/987654/reference", "/stress/" + "0" * 32])
def test_unknown_ids_are_404(anon, path):
    response = anon.get(path)
    assert response.status_code == 404
    assert "not found" in response.json()["detail"]


@pytest.mark.parametrize("action", ["stop", "resume", "start"])
def test_control_of_unknown_run_is_404(api, action):
    with pytest.raises(ApiError) as err:
        getattr(api, action)(987654)
    assert err.value.status == 404 and "987654" in err.value.detail


# ---- auth -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/runs"), ("POST", "/runs/1/stop"), ("POST", "/runs/1/resume"), ("POST", "/runs/1/start"),
     ("DELETE", "/runs/1"), ("POST", "/stress"), ("DELETE", "/stress/" + "0" * 32)],
)
@pytest.mark.parametrize("body", [b"{}", b"{not json", b'{"buffer": {"prior_fraction": 3}}', b""])
def test_mutating_calls_need_the_token(live_server, method, path, body):  # noqa: F811
    """Checked before the body is read: a client without the token learns that, whatever it sent."""
    json_type = {"Content-Type": "application/json"}
    with live_server.client(auth=False) as http:
        missing = http.request(method, path, content=body, headers=json_type)
        wrong = http.request(method, path, content=body, headers={**json_type, "Authorization": "Bearer nope"})
        not_bearer = http.request(method, path, content=body, headers={**json_type, "Authorization": "Basic eDp5"})
    assert missing.status_code == 401 and "bearer token" in missing.json()["detail"]
    assert missing.headers["www-authenticate"] == "Bearer"
    assert wrong.status_code == 401 and wrong.json()["detail"] == "invalid bearer token"
    assert not_bearer.status_code == 401 and "missing bearer token" in not_bearer.json()["detail"]


def test_reads_need_no_token(anon, trained_run):
    for path in ("/runs", f"/runs/{trained_run}", f"/runs/{trained_run}/buffer", "/health", "/metrics"):
        assert anon.get(path).status_code == 200, path


# ---- Prometheus -------------------------------------------------------------------------
def test_prometheus_metrics(api, trained_run):
    api.get_run(trained_run)
    text = api.prometheus()
    assert 'falcon_lite_runs{status="completed"}' in text
    assert 'falcon_lite_samples{origin="prior",status="TRAINING"}' in text
    assert 'falcon_lite_samples{origin="all",status="PURGED"}' in text
    assert 'falcon_lite_http_request_duration_seconds_bucket{le="0.05",method="GET",route="/runs/{run_id}",status="200"}' in text
    lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert float(lines['falcon_lite_runs{status="completed"}']) >= 1


# ---- stress -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "words"),
    [({"grid": {"buffer.nope": [1]}}, "buffer.nope"), ({"grid": {"buffer.prior_fraction": [2.0]}}, "prior_fraction"),
     ({"grid": {"buffer.prior_fraction": []}}, "empty"), ({"grid": {}, "seeds": 0}, "seeds"),
     ({"grid": {}, "module": "os"}, "module")],
)
def test_bad_stress_request_is_422_naming_the_problem(live_server, body, words):  # noqa: F811
    with live_server.client() as http:
        response = http.post("/stress", json=body)
    assert response.status_code == 422
    assert words in json.dumps(response.json()["detail"])


def test_stress_job_runs_and_serves_report_and_plots(api, live_server):  # noqa: F811
    if not live_server.db_url.startswith("sqlite"):
        pytest.skip("the stress job does not use the server's database; once is enough")
    grid = {"buffer.prior_fraction": [0.0, 0.5]}
    base = RunConfig.model_validate({k: v for k, v in SMALL.items() if k != "name"}).model_dump(mode="json")
    job = api.stress(grid, seeds=1, steps=20, base=base)
    assert job["status"] in ("queued", "running") and job["results"] is None
    done = api.wait_stress(job["id"], timeout=300, poll=0.5)
    assert done["status"] == "completed", done.get("error")
    runs = done["results"]["runs"]
    assert [r["overrides"] for r in runs] == [{"buffer.prior_fraction": 0.0}, {"buffer.prior_fraction": 0.5}]
    assert all(r["steps"] == 20 for r in runs)
    assert "|" in done["report"] and "prior_fraction" in done["report"]
    assert done["plots"]
    for url in done["plots"]:
        assert api.download(url)[:8] == b"\x89PNG\r\n\x1a\n"


# ---- CLI over REST ------------------------------------------------------------------------
def falcon_lite(*args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FALCON_LITE_")}
    if token:
        env["FALCON_LITE_API_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "falcon_lite.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_runs_verbs(live_server, trained_run, api):  # noqa: F811
    out = falcon_lite("runs", "ls", "--server", live_server.url)
    assert out.returncode == 0, out.stderr
    assert "small-inline" in out.stdout and "completed" in out.stdout
    shown = falcon_lite("runs", "show", str(trained_run), "--server", live_server.url)
    assert json.loads(shown.stdout)["buffer"]["total"] == 640
    created = falcon_lite("runs", "start", "--no-start", "--name", "from-cli", "--prior-fraction", "0.2",
                          "--steps", "300", "--server", live_server.url)
    assert created.returncode == 0, created.stderr
    run = json.loads(created.stdout)
    assert (run["name"], run["status"], run["config"]["buffer"]["prior_fraction"]) == ("from-cli", "pending", 0.2)
    stopped = falcon_lite("runs", "stop", str(run["id"]), "--server", live_server.url)
    assert json.loads(stopped.stdout)["status"] == "pending"
    denied = falcon_lite("runs", "stop", str(run["id"]), "--server", live_server.url, token=None)
    assert denied.returncode == 1 and "401" in denied.stderr and "bearer token" in denied.stderr
    missing = falcon_lite("runs", "show", "987654", "--server", live_server.url)
    assert missing.returncode == 1 and "404" in missing.stderr


def test_cli_runs_delete(live_server, api):  # noqa: F811
    run_id = api.create_run({"name": "cli-delete"}, start=False)["id"]
    deleted = falcon_lite("runs", "delete", str(run_id), "--server", live_server.url)
    assert (deleted.returncode, deleted.stdout) == (0, f"run {run_id} deleted\n"), deleted.stderr
    with pytest.raises(ApiError) as err:
        api.get_run(run_id)
    assert err.value.status == 404
    again = falcon_lite("runs", "delete", str(run_id), "--server", live_server.url)
    assert again.returncode == 1 and f"404 run {run_id} not found" in again.stderr.replace(":", "")


def test_cli_prints_a_422_as_one_line_per_field(live_server):  # noqa: F811
    out = falcon_lite("runs", "start", "--no-start", "--prior-fraction", "3", "--server", live_server.url)
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        "error: POST /runs -> 422:",
        "  buffer.prior_fraction: Value error, must be greater than or equal to 0 and less than or equal to 1, got 3.0",
    ]


def test_cli_stops_quietly_when_its_reader_goes_away(live_server, api):  # noqa: F811
    """`falcon-lite runs ls | head -1`: the pipe closes before the listing is written."""
    for i in range(3):
        api.create_run({"name": f"piped-{i}"}, start=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FALCON_LITE_")}
    proc = subprocess.Popen([sys.executable, "-m", "falcon_lite.cli", "runs", "ls", "--limit", "500", "--server",
                             live_server.url], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the command writes anything
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert stderr == ""


def test_cli_reports_an_unreachable_server():
    out = falcon_lite("runs", "ls", "--server", "http://127.0.0.1:9")
    assert out.returncode == 1 and "cannot reach http://127.0.0.1:9" in out.stderr


# ---- unexpected errors and a wrong schema ----------------------------------------------------
def test_unexpected_error_is_500_with_request_id_and_no_traceback(api, anon, db):
    """A row no code path can write (an unknown status) makes the answer fail validation."""
    import sqlalchemy as sa

    from falcon_lite.store.models import Run

    run_id = api.create_run({"name": "corrupted"}, start=False)["id"]
    with db.begin() as conn:
        conn.execute(sa.update(Run).where(Run.id == run_id).values(status="bogus"))
    try:
        response = anon.get(f"/runs/{run_id}")
    finally:
        with db.begin() as conn:
            conn.execute(sa.update(Run).where(Run.id == run_id).values(status="pending"))
    assert response.status_code == 500
    body = response.json()
    assert body == {"detail": "internal server error", "request_id": response.headers["x-request-id"]}
    assert anon.get(f"/runs/{run_id}").status_code == 200


def test_server_refuses_a_database_without_schema(tmp_path):
    """`uvicorn services.api.app:app` (the module-level app) on an empty database says to migrate."""
    from tests.plugins.server import free_port

    env = {k: v for k, v in os.environ.items() if not k.startswith("FALCON_LITE_")}
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'empty.db'}"
    out = subprocess.run([sys.executable, "-m", "uvicorn", "services.api.app:app", "--port", str(free_port())],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "falcon-lite migrate" in out.stderr + out.stdout


@pytest.mark.parametrize("verb", ["stress", "remote-stress"])
def test_cli_stress_on_a_server_writes_the_report_locally(live_server, tmp_path, verb):  # noqa: F811
    """`falcon-lite stress --server URL` (engine verb, through Client.stress_and_wait) and `remote-stress`."""
    if not live_server.db_url.startswith("sqlite"):
        pytest.skip("the stress job does not use the server's database; once is enough")
    base = tmp_path / "base.json"
    base.write_text(json.dumps({k: v for k, v in SMALL.items() if k != "name"}))
    out = tmp_path / "out"
    done = falcon_lite(verb, "--server", live_server.url, "--grid", "buffer.prior_fraction=0,0.5", "--seeds", "1",
                       "--steps", "20", "--base", str(base), "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert [r["overrides"]["buffer.prior_fraction"] for r in results["runs"]] == [0, 0.5]
    assert "|" in (out / "report.md").read_text()
    assert list(out.glob("*.png"))
