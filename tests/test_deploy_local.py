"""The compose services' commands, run as local processes: the deployment without containers.

A fresh PostgreSQL database on this machine; `ray start --head` and one `ray start --address`
worker (in their own temp dir, on free ports, so that they never meet another Ray on the
machine); `falcon-lite migrate`; `falcon-lite serve` with RAY_ADDRESS and an API token. Then
a short experiment through REST: the run completes, its buffer and metrics are there, its
posterior answers. Everything it started is stopped afterwards (never `ray stop`, which would
stop every Ray on the machine).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from falcon_lite.runtime.head import free_port_range, free_ports

pytestmark = [pytest.mark.postgres, pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(900)]

BIN = Path(sys.executable).parent
RUN_BODY = {
    "name": "deploy-local",
    "buffer": {"min_training": 64, "max_training": 128, "simulations_per_step": 32},
    "training": {"steps": 60, "batch_size": 32, "warmup_steps": 20, "diagnostics_every": 5, "seed": 3},
    "runtime": {"simulators": 2},
}


def ray_node_ports() -> list[str]:
    """Every port a Ray node would otherwise take by default (some defaults are fixed)."""
    low, high = free_port_range()
    node_manager, object_manager, agent_http, agent_grpc, env_agent, metrics = free_ports(6, avoid=range(low, high + 1))
    return [f"--node-manager-port={node_manager}", f"--object-manager-port={object_manager}",
            f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--runtime-env-agent-port={env_agent}", f"--metrics-export-port={metrics}",
            f"--min-worker-port={low}", f"--max-worker-port={high}"]


@pytest.fixture
def database_url(pg_base_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database (the compose `postgres` service's part)."""
    name = f"fl_deploy_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg_base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(pg_base_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


class Processes:
    """The processes this test starts, each stopped with SIGTERM (then SIGKILL) afterwards."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.started: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        out = open(self.logs / f"{name}.log", "w")
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.started.append((name, proc))
        return proc

    def check_alive(self) -> None:
        for name, proc in self.started:
            if proc.poll() is not None:
                pytest.fail(f"{name} exited with {proc.returncode}:\n{self.tail(name)}")

    def tail(self, name: str, n: int = 4000) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-n:]

    def stop_all(self) -> None:
        """SIGTERM to each command alone, as a container's init forwards `docker stop` to its
        main process: `ray start --block` then stops the processes it started itself (a signal
        to the whole group stopped the head's GCS under it, and the head waited 30 s for it to
        answer). Its group is killed only if it hangs."""
        for _name, proc in reversed(self.started):  # api first, head last
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=30)


def leftover_pids(marker: str) -> list[int]:
    """Processes whose command line mentions `marker` (our Ray temp dir)."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if marker in cmdline:
                found.append(int(pid))
    return found


def wait_for(what: str, predicate, procs: Processes, timeout: float = 300.0, poll: float = 1.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        procs.check_alive()
        try:
            last = predicate()
        except httpx.HTTPError as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(poll)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def test_compose_commands_as_local_processes(database_url: str, tmp_path: Path) -> None:
    temp_dir = tempfile.mkdtemp(prefix="fl-ray-", dir="/tmp")  # short: Ray's socket paths are limited
    gcs_port, api_port = free_ports(2)
    token = secrets.token_urlsafe(16)
    # RAY_AUTH_MODE: as in the containers. Explicit here because a token file that another Ray
    # left in ~/.ray turns token auth on for a head but not for the nodes that join it.
    # RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S: as docker-compose.yml sets it.
    env = dict(os.environ, DATABASE_URL=database_url, RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1",
               RAY_AUTH_MODE="disabled", RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
               FALCON_LITE_DATA_DIR=str(tmp_path / "data"))
    env.pop("RAY_ADDRESS", None)
    procs = Processes(tmp_path)
    try:
        # ray-head and ray-worker: the compose commands, on this machine's free ports
        procs.start("ray-head", [str(BIN / "ray"), "start", "--head", f"--port={gcs_port}",
                                 "--dashboard-host=127.0.0.1", "--include-dashboard=false", "--num-cpus=0",
                                 f"--temp-dir={temp_dir}", "--disable-usage-stats", "--block",
                                 *ray_node_ports()], env)
        wait_for("the Ray head", lambda: "Ray runtime started" in procs.tail("ray-head"), procs, timeout=120)
        procs.start("ray-worker", [str(BIN / "ray"), "start", f"--address=127.0.0.1:{gcs_port}", "--num-cpus=2",
                                   "--disable-usage-stats", "--block", *ray_node_ports()], env)
        wait_for("the Ray worker", lambda: "Ray runtime started" in procs.tail("ray-worker"), procs, timeout=120)

        # migrate: runs once and exits 0
        migrated = subprocess.run([str(BIN / "falcon-lite"), "migrate"], env=env, capture_output=True, text=True,
                                  timeout=120)
        assert migrated.returncode == 0, migrated.stderr
        assert "revision" in migrated.stdout

        # api: `falcon-lite serve` joined to the cluster through RAY_ADDRESS
        api_env = dict(env, RAY_ADDRESS=f"127.0.0.1:{gcs_port}", FALCON_LITE_API_TOKEN=token)
        procs.start("api", [str(BIN / "falcon-lite"), "serve", "--host", "127.0.0.1", "--port", str(api_port)],
                    api_env)
        with httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=30) as http:
            def healthy():
                try:
                    return http.get("/health").status_code == 200
                except httpx.HTTPError:
                    return False

            wait_for("the API's /health", healthy, procs, timeout=180)
            refused = http.post("/runs", json=RUN_BODY)
            assert refused.status_code == 401, refused.text  # the token guards mutating calls

            auth = {"Authorization": f"Bearer {token}"}
            created = http.post("/runs", json=RUN_BODY, headers=auth)
            assert created.status_code == 201, created.text
            run_id = created.json()["id"]
            done = wait_for("the run to complete",
                            lambda: (r := http.get(f"/runs/{run_id}").json())["status"] in ("completed", "failed")
                            and r, procs)
            assert done["status"] == "completed", done
            assert done["step"] == RUN_BODY["training"]["steps"]

            buffer = http.get(f"/runs/{run_id}/buffer").json()
            live = sum(n for origins in buffer["counts"].values() for n in origins.values())
            assert buffer["total"] > 0 and live + buffer["purged"] == buffer["total"], buffer
            rows = http.get(f"/runs/{run_id}/metrics", params={"since_step": 0}).json()
            assert rows and {"std_ratio", "bias_over_sigma", "loss"} <= set(rows[-1]), rows[-1:]
            posterior = http.get(f"/runs/{run_id}/posterior", params={"n": 3})
            assert posterior.status_code == 200, posterior.text
    except BaseException:
        for name, _proc in procs.started:
            print(f"--- {name} log ---\n{procs.tail(name)}", file=sys.stderr)
        raise
    finally:
        procs.stop_all()
        deadline = time.monotonic() + 30
        while leftover_pids(temp_dir) and time.monotonic() < deadline:
            time.sleep(0.5)
        leftovers = leftover_pids(temp_dir)
        for pid in leftovers:  # Ray processes of our temp dir that outlived their `ray start`
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert not leftovers, f"processes outlived their `ray start --block`: {leftovers}"
