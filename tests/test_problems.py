"""Problems as plugins: the registry, the v2 `problem` section, 422s that name the field, the
listing (REST and CLI), and docs/problems.md's worked example run as written."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from falcon_lite import plugins
from falcon_lite.config import RunConfig
from falcon_lite.core.problems import LogUniform, Normal, Parameter, Problem, ProductPrior, Uniform
from falcon_lite.core.proposal import TemperedProposal
from falcon_lite.engine.problem import ConfigError, bind_problem, check_config
from tests.plugins.server import ROOT, TOKEN, live_server, ray_server, server_db_url  # noqa: F401 (fixtures)

DOC = ROOT / "docs" / "problems.md"


# -- the contract and the registry --------------------------------------------------------

def test_the_built_in_problems_are_registered_plugins():
    assert {"gaussian", "exp_noise"} <= set(plugins.names(plugins.PROBLEMS))
    entry = plugins.registered(plugins.PROBLEMS)["gaussian"]
    assert entry.value == "falcon_lite.core.builtin_problems:gaussian"


def test_a_v1_config_and_its_v2_twin_mean_the_same_run():
    v1 = RunConfig(simulator={"name": "exp_noise", "sigma_obs": 1e-3})
    v2 = RunConfig(problem={"name": "exp_noise", "params": {"sigma_obs": 1e-3}})
    a, b = bind_problem(v1), bind_problem(v2)
    np.testing.assert_array_equal(a.x_obs, b.x_obs)
    rng = np.random.default_rng
    np.testing.assert_array_equal(a(np.zeros((4, 3)), rng(0)), b(np.zeros((4, 3)), rng(0)))
    np.testing.assert_array_equal(a.true_posterior()[1], b.true_posterior()[1])
    with pytest.raises(ValueError, match="either `problem` or the v1 sections"):
        RunConfig(problem={"name": "gaussian"}, simulator={"name": "exp_noise"})


def test_a_product_prior_draws_within_its_support_and_sums_its_marginals():
    prior = ProductPrior([Parameter("a", Uniform(-1, 2)), Parameter("b", Normal(3, 0.5)),
                          Parameter("c", LogUniform(0.1, 10)), Parameter("d", Uniform(0, 1))])
    theta = prior.sample(5000, np.random.default_rng(0))
    assert theta.shape == (5000, 4) and prior.inside(theta).all()
    assert abs(theta[:, 1].mean() - 3) < 0.05 and abs(np.log(theta[:, 2]).mean() - 0) < 0.1
    point = np.array([[0.5, 3.0, 1.0, 0.5]])
    expected = -np.log(3) - np.log(0.5) - 0.5 * np.log(2 * np.pi) - np.log(np.log(100)) + 0.0
    assert prior.log_prob(point)[0] == pytest.approx(expected)
    assert prior.log_prob(np.array([[2.5, 3.0, 1.0, 0.5]]))[0] == -np.inf
    assert prior.support is not None


def test_proposals_are_truncated_to_a_bounded_prior_and_their_density_says_so():
    low, high = np.array([-1.0, -1.0]), np.array([1.0, 1.0])
    q = TemperedProposal(np.array([0.9, 0.0]), np.array([0.25, 0.25]), 1.0, (low, high))
    theta = q.sample(20000, np.random.default_rng(1))
    assert theta.shape == (20000, 2) and np.all((theta >= low) & (theta <= high))
    grid = np.linspace(-1, 1, 801)
    a, b = np.meshgrid(grid, grid, indexing="ij")
    density = np.exp(q.log_prob(np.stack([a.ravel(), b.ravel()], 1))).reshape(a.shape)
    assert np.trapezoid(np.trapezoid(density, grid), grid) == pytest.approx(1.0, abs=2e-3)
    assert q.log_prob(np.array([[1.5, 0.0]]))[0] == -np.inf
    with pytest.raises(ValueError, match="mass"):
        TemperedProposal(np.array([50.0, 0.0]), np.array([1e-4, 1e-4]), 1.0, (low, high))


def test_a_simulator_that_raises_gives_rejected_rows_and_a_wrong_shape_names_the_problem():
    def broken(theta, rng):
        raise RuntimeError("solver diverged")

    bound = bind_problem(RunConfig())
    bad = type(bound)(Problem("p", [Parameter("a", Normal(0, 1))], broken, (2,), {"1": np.zeros(2)}), "1",
                      np.zeros(2))
    assert np.isnan(bad(np.zeros((3, 1)), np.random.default_rng(0))).all()
    wrong = type(bound)(Problem("p", [Parameter("a", Normal(0, 1))], lambda t, r: np.zeros((len(t), 3)), (2,)),
                        None, np.zeros(2))
    with pytest.raises(ValueError, match=r"problem 'p': simulate returned x of shape \(3, 3\)"):
        wrong(np.zeros((3, 1)), np.random.default_rng(0))


@pytest.mark.parametrize(
    "config, loc, message",
    [
        ({"problem": {"name": "nope"}}, ("problem", "name"), "unknown problem 'nope'; registered: "),
        ({"problem": {"name": "gaussian", "params": {"sigma": 1}}}, ("problem", "params", "sigma"),
         "takes no parameter 'sigma'"),
        ({"problem": {"name": "gaussian", "params": {"dim": 2, "z_true": [1.0]}}}, ("problem", "params"),
         "z_true has 1 values, dim is 2"),
        ({"problem": {"name": "gaussian", "x_obs": [1.0, 2.0]}}, ("problem", "x_obs"), r"shape \(2,\)"),
        ({"problem": {"name": "gaussian", "observation": "9"}}, ("problem", "observation"), "known: default"),
        ({"problem": {"name": "gaussian", "params": {"dim": 2}}, "estimator": {"name": "gaussian_nle",
          "embedding": {"name": "mlp"}}}, ("estimator",), "identity"),
        ({"estimator": {"embedding": {"name": "no_such_net"}}}, ("estimator", "embedding", "name"),
         "unknown embedding"),
    ],
)
def test_a_config_that_does_not_fit_its_problem_names_the_field(config, loc, message):
    with pytest.raises(ConfigError, match=message) as info:
        check_config(RunConfig.model_validate(config))
    assert info.value.loc == loc


# -- over REST ------------------------------------------------------------------------------

def test_bad_problem_configs_are_422s_naming_the_field_and_store_nothing(live_server):  # noqa: F811
    with live_server.client() as client:
        before = client.get("/runs").json()["count"]
        answer = client.post("/runs", json={"problem": {"name": "nope"}, "start": False})
        assert answer.status_code == 422
        (error,) = answer.json()["detail"]
        assert error["loc"] == ["body", "problem", "name"] and "registered: " in error["msg"]
        assert "gaussian" in error["msg"]
        answer = client.post("/runs", json={"problem": {"name": "gaussian", "params": {"bogus": 1}}, "start": False})
        assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == ["body", "problem", "params", "bogus"]
        answer = client.post("/runs", json={"problem": {"name": "gaussian", "x_obs": [[1.0]]}, "start": False})
        assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == ["body", "problem", "x_obs"]
        assert client.get("/runs").json()["count"] == before
        made = client.post("/runs", json={"problem": {"name": "exp_noise"}, "start": False})
        assert made.status_code == 201 and made.json()["config"]["problem"]["name"] == "exp_noise"


def test_get_problems_lists_every_registered_problem(live_server):  # noqa: F811
    with live_server.client(auth=False) as client:
        body = client.get("/problems").json()
    listed = {p["name"]: p for p in body["data"]}
    assert body["count"] == len(listed) and {"gaussian", "exp_noise"} <= set(listed)
    exp = listed["exp_noise"]
    assert [p["name"] for p in exp["parameters"]] == ["z0", "z1", "z2"]
    assert exp["parameters"][0]["prior"] == {"family": "normal", "loc": 0.0, "scale": 1.0}
    assert exp["x_shape"] == [3] and exp["observations"] == ["default"] and exp["reference"] == ["exact"]
    assert exp["factory"]["properties"]["sigma_obs"] == {"type": "number", "default": 1e-06}


# -- docs/problems.md's example, as written -------------------------------------------------

def doc_example() -> tuple[dict[str, str], list[str]]:
    """The files (``<!-- file: PATH -->`` before a fenced block) and the commands (the block after
    ``<!-- run -->``) of docs/problems.md."""
    text = DOC.read_text()
    files = dict(re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", text, flags=re.S))
    (run,) = re.findall(r"<!-- run -->\n```sh\n(.*?)```", text, flags=re.S)
    commands = [line.split("  #")[0].strip() for line in run.splitlines() if line.strip()]
    return files, commands


@pytest.mark.timeout(900)
def test_the_docs_example_works_as_written(tmp_path):
    files, commands = doc_example()
    assert set(files) == {"my-decay/pyproject.toml", "my-decay/my_decay.py", "decay-run.json"}
    for path, content in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(content)
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PIP_NO_BUILD_ISOLATION": "1"}
    env.pop("DATABASE_URL", None)
    outputs = []
    try:
        for command in commands:
            done = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True,
                                  timeout=600)
            assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
            outputs.append(done.stdout)
    finally:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-q", "-y", "my-decay"], capture_output=True)
        plugins.refresh()
    listing = outputs[1]
    assert "decay: a damped signal at 20 times" in listing
    assert "A ~ uniform(0.5, 2), tau ~ log_uniform(0.1, 10)" in listing
    assert "x: shape (20,); observations: 1; reference: none" in listing
    summary = outputs[2].strip().splitlines()[-1]
    assert "completed" in summary, outputs[2]
    config = json.loads(files["decay-run.json"])
    assert config["problem"]["name"] == "decay"


def test_a_problem_needs_a_registered_name_not_a_path():
    with pytest.raises(ValueError):
        RunConfig(problem={"name": "my_pkg/model.py"})
    with pytest.raises(ConfigError, match="unknown problem"):
        check_config(RunConfig(problem={"name": "os.system"}))


def test_the_cli_lists_the_problems_as_json_like_the_service():
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "falcon-lite"), "problems", "--json"], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    assert done.returncode == 0, done.stderr
    listed = {p["name"] for p in json.loads(done.stdout)}
    assert {"gaussian", "exp_noise"} <= listed
    assert TOKEN  # (the server fixtures are shared with the REST tests above)


# -- a problem the Ray workers cannot load -------------------------------------------------

@pytest.mark.ray
@pytest.mark.timeout(900)
def test_a_run_whose_problem_its_workers_cannot_load_fails_with_the_reason(ray_server, tmp_path):  # noqa: F811
    """The service validated the run with the package installed; by the time the run starts on
    Ray the package is gone (as on a worker where it was never installed): the run fails, at
    once and saying why, instead of hanging."""
    files, _ = doc_example()
    for path, content in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(content)
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-build-isolation", str(tmp_path / "my-decay")]
    subprocess.run(pip, check=True, capture_output=True, timeout=300)
    try:
        with ray_server.client() as client:
            body = {**json.loads(files["decay-run.json"]), "start": False}
            made = client.post("/runs", json=body)
            assert made.status_code == 201, made.text
            run_id = made.json()["id"]
    finally:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-q", "-y", "my-decay"], capture_output=True)
        plugins.refresh()
    with ray_server.client() as client:
        assert client.post(f"/runs/{run_id}/start").status_code == 202
        deadline = time.monotonic() + 120
        while (run := client.get(f"/runs/{run_id}").json())["status"] in ("pending", "running"):
            assert time.monotonic() < deadline, run
            time.sleep(0.5)
    assert run["status"] == "failed"
    assert "unknown problem 'decay'" in run["reason"], run["reason"]
