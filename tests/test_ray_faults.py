"""The server against the loss of its process, of its Ray, and against its neighbours on Ray.

Every server here is a real `falcon-lite serve` (tests/plugins/server.py). The embedded
default's servers start a local Ray of their own; the test finds its processes as the
server's `ray start` child and its private temp dir. Everything a test starts, it stops by
pid (never `ray stop`, which would stop every Ray on the machine).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from falcon_lite.runtime.control import supervisor_name
from falcon_lite.runtime.head import free_ports, pids_mentioning
from falcon_lite.store.db import make_engine
from falcon_lite.store.deployment import deployment_id
from falcon_lite.store.models import Sample
from tests.plugins.server import LiveServer, server_db_url, start_server  # noqa: F401 (fixture)

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]

CONFIG = {
    "name": "fault",
    "estimator": {"hidden": [16, 16]},
    "buffer": {"min_training": 32, "max_training": 1 << 20, "simulations_per_step": 32, "prior_fraction": 0.25},
    "training": {"steps": 100_000, "batch_size": 32, "warmup_steps": 20, "checkpoint_every": 10},
    "runtime": {"simulators": 1},
}
TRUE_WITHIN_S = 5.0


def wait_for(predicate, what: str, timeout: float = 240.0, poll: float = 0.25):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(poll)


def get_run(server: LiveServer, run_id: int) -> dict:
    with server.client() as http:
        return http.get(f"/runs/{run_id}").raise_for_status().json()


def post(server: LiveServer, path: str, body: dict | None = None):
    with server.client(timeout=300) as http:
        return http.post(path, json=body)


def create(server: LiveServer, name: str = "fault") -> int:
    answer = post(server, "/runs", {**CONFIG, "name": name})
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def step_over(server: LiveServer, run_id: int, step: int, timeout: float = 300.0) -> int:
    return wait_for(lambda: (s := get_run(server, run_id)["step"]) > step and s, f"run {run_id} past step {step}",
                    timeout)


def stop_and_wait(server: LiveServer, run_id: int) -> None:
    assert post(server, f"/runs/{run_id}/stop").status_code == 202
    wait_for(lambda: get_run(server, run_id)["status"] == "stopped", f"run {run_id} to stop", 120)


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        found += kids
        todo += kids
    return found


def gcs_of(server: LiveServer) -> int:
    """The GCS of the local Ray a server started (among its descendants)."""
    gcs = [pid for pid in descendants(server.proc.pid) if "gcs_server" in cmdline(pid)]
    assert len(gcs) == 1, (gcs, server.log_tail())
    return gcs[0]


def local_ray_temp_dir(server: LiveServer) -> str:
    """The private temp dir of the local Ray a server started (its `ray start` child)."""
    for pid in children(server.proc.pid):
        line = cmdline(pid)
        if " start --head" in line and "--temp-dir=" in line:
            return line.split("--temp-dir=")[1].split()[0]
    raise AssertionError(f"server {server.url} has no local Ray:\n{server.log_tail()}")


def assert_conserved(db_url: str, server: LiveServer, run_id: int) -> None:
    """Counts by (status, origin) plus purged equal every sample stored, whole batches only."""
    with server.client() as http:
        buffer = http.get(f"/runs/{run_id}/buffer").json()
    live = sum(n for origins in buffer["counts"].values() for n in origins.values())
    engine = make_engine(db_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(select(func.count()).where(Sample.run_id == run_id)).scalar()
    finally:
        engine.dispose()
    assert live + buffer["purged"] == buffer["total"] == rows + buffer["purged"], buffer
    assert buffer["total"] % CONFIG["buffer"]["simulations_per_step"] == 0, buffer


def kill9(server: LiveServer) -> None:
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(timeout=30)


def started_again(server: LiveServer, ray_address: str | None = None) -> tuple[LiveServer, float]:
    again = start_server(server.db_url, server.data_dir, ray_address=ray_address)
    return again, time.monotonic()


def status_within(server: LiveServer, run_id: int, since: float, expected: str) -> dict:
    """The run's status is `expected` within TRUE_WITHIN_S of the server answering again."""
    run = get_run(server, run_id)
    while run["status"] != expected and time.monotonic() - since < TRUE_WITHIN_S:
        time.sleep(0.1)
        run = get_run(server, run_id)
    assert run["status"] == expected, (time.monotonic() - since, run["status"], run["reason"])
    return run


# -- item 1: a server killed mid-run -------------------------------------------------------
def test_a_killed_embedded_server_shows_the_truth_at_once_and_resumes(server_db_url, tmp_path):  # noqa: F811
    server = start_server(server_db_url, tmp_path / "data")
    again = None
    try:
        run_id = create(server)
        step_over(server, run_id, 25)
        ray_dir = local_ray_temp_dir(server)
        kill9(server)
        stopped_at = get_run_row_step(server_db_url, run_id)
        # The killed server's local Ray ends with it (it gets SIGTERM when its parent dies).
        wait_for(lambda: not pids_mentioning(ray_dir), "the killed server's local Ray to end", 60)
        shutil.rmtree(ray_dir, ignore_errors=True)  # its logs: nobody else would remove them
        again, since = started_again(server)
        run = status_within(again, run_id, since, "failed")
        assert "local Ray" in run["reason"]
        assert post(again, f"/runs/{run_id}/resume").status_code == 202
        assert get_run(again, run_id)["status"] == "running"
        # It goes on from its last checkpoint (every 10 steps), not from 0.
        first = wait_for(lambda: (s := get_run(again, run_id)["step"]) != stopped_at and s, "a step after resume")
        assert first >= stopped_at - 10, (first, stopped_at)
        step_over(again, run_id, stopped_at + 5)
        stop_and_wait(again, run_id)
        assert_conserved(server_db_url, again, run_id)
    finally:
        for s in (again, server):
            if s is not None:
                s.stop()


def get_run_row_step(db_url: str, run_id: int) -> int:
    from falcon_lite.store.models import Run

    engine = make_engine(db_url)
    try:
        with engine.connect() as connection:
            return connection.execute(select(Run.step).where(Run.id == run_id)).scalar()
    finally:
        engine.dispose()


def test_a_killed_cluster_server_shows_the_truth_at_once(server_db_url, ray_address, tmp_path):  # noqa: F811
    """With RAY_ADDRESS runs outlive the server: a live one stays `running` (true), one whose
    supervisor died meanwhile is `failed` within 5 s of the server answering, and resumes."""
    import ray

    server = start_server(server_db_url, tmp_path / "data", ray_address=ray_address)
    again = None
    try:
        alive, lost = create(server, "alive"), create(server, "lost")
        step_over(server, alive, 15)
        step_over(server, lost, 15)
        kill9(server)
        engine = make_engine(server_db_url)
        deployment = deployment_id(engine)
        engine.dispose()
        ray.kill(ray.get_actor(supervisor_name(deployment, lost), namespace="falcon-lite"))
        step = get_run_row_step(server_db_url, lost)
        again, since = started_again(server, ray_address)
        status_within(again, lost, since, "failed")
        status_within(again, alive, since, "running")
        assert post(again, f"/runs/{lost}/resume").status_code == 202
        step_over(again, lost, step + 5)
        step_over(again, alive, get_run(again, alive)["step"] + 5)
        for run_id in (alive, lost):
            stop_and_wait(again, run_id)
            assert_conserved(server_db_url, again, run_id)
    finally:
        for s in (again, server):
            if s is not None:
                s.stop()


# -- item 2: the server outlives its Ray ---------------------------------------------------
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'data' / 'falcon-lite.db'}"


def test_the_server_outlives_the_loss_of_its_local_ray(tmp_path):
    """Kill the GCS of the server's own Ray: reads go on, the run becomes `failed`, the next
    run-control call answers 503 with the reason, the one after starts a new Ray and resumes
    it; and the server is still there after Ray's 60 s GCS timeout."""
    server = start_server(sqlite_url(tmp_path), tmp_path / "data")
    try:
        run_id = create(server)
        step_over(server, run_id, 15)
        gcs = gcs_of(server)
        os.kill(gcs, signal.SIGKILL)
        lost_at = time.monotonic()
        run = wait_for(lambda: (r := get_run(server, run_id))["status"] == "failed" and r, "the run to fail", 30)
        assert "Ray lost" in run["reason"], run
        with server.client() as http:
            assert http.get("/runs").status_code == 200 and http.get("/health").status_code == 200
        refused = post(server, f"/runs/{run_id}/resume")
        assert refused.status_code == 503 and "Ray" in refused.json()["detail"], refused.text
        assert post(server, f"/runs/{run_id}/resume").status_code == 202
        assert gcs_of(server) != gcs  # a new local Ray
        step_over(server, run_id, run["step"] + 5)
        time.sleep(max(0.0, 70 - (time.monotonic() - lost_at)))  # past Ray's 60 s GCS timeout
        assert server.proc.poll() is None, server.log_tail()
        stop_and_wait(server, run_id)
        assert_conserved(sqlite_url(tmp_path), server, run_id)
    finally:
        server.stop()


def test_a_foreign_cluster_started_and_stopped_beside_the_server_leaves_it_alone(tmp_path):
    """Another process's `ray start --head`, made where a bare `ray.init()` would find it (the
    default temp dir's `ray_current_cluster`, here under a TMPDIR of the test's own), then
    stopped: the server's run neither joins it nor notices its end."""
    tmp = tempfile.mkdtemp(prefix="flr-f-", dir="/tmp")  # short: Ray's socket paths are limited
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(TMPDIR=tmp, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    port, *ports = free_ports(7)
    foreign = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", f"--port={port}", "--block",
         "--include-dashboard=false", "--disable-usage-stats", "--num-cpus=1",
         f"--node-manager-port={ports[0]}", f"--object-manager-port={ports[1]}",
         f"--dashboard-agent-listen-port={ports[2]}", f"--dashboard-agent-grpc-port={ports[3]}",
         f"--runtime-env-agent-port={ports[4]}", f"--metrics-export-port={ports[5]}"],
        env=env, stdout=open(Path(tmp) / "foreign.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    server = None
    try:
        wait_for(lambda: "Ray runtime started" in (Path(tmp) / "foreign.log").read_text(), "the foreign cluster", 120)
        server = start_server(sqlite_url(tmp_path), tmp_path / "data", extra_env={"TMPDIR": tmp})
        run_id = create(server)
        step_over(server, run_id, 10)
        foreign.send_signal(signal.SIGTERM)  # stops that cluster's processes, and only those
        foreign.wait(timeout=60)
        stopped_at = time.monotonic()
        step = get_run(server, run_id)["step"]
        step_over(server, run_id, step + 10, timeout=60)
        assert get_run(server, run_id)["status"] == "running"
        time.sleep(max(0.0, 70 - (time.monotonic() - stopped_at)))  # past Ray's 60 s GCS timeout
        assert server.proc.poll() is None, server.log_tail()
        step_over(server, run_id, get_run(server, run_id)["step"] + 5, timeout=60)
        stop_and_wait(server, run_id)
    finally:
        if server is not None:
            server.stop()
        if foreign.poll() is None:
            foreign.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                foreign.wait(timeout=60)
        for pid in pids_mentioning(tmp):  # what outlived its `ray start --block`: ours by temp dir
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)


# -- item 3: two deployments on one cluster -------------------------------------------------
@pytest.mark.postgres
def test_two_deployments_on_one_cluster_never_see_each_others_runs(ray_address, pg_base_url, tmp_path):
    """Two servers, two databases (SQLite and PostgreSQL), one Ray cluster: both make run 1.
    Each trains its own; stopping one's run 1 leaves the other's running."""
    from tests.plugins.db import _fresh_pg_database

    pg = _fresh_pg_database(pg_base_url)
    pg_url = next(pg)
    one = start_server(sqlite_url(tmp_path / "one"), tmp_path / "one" / "data", ray_address=ray_address)
    two = start_server(pg_url, tmp_path / "two" / "data", ray_address=ray_address)
    try:
        assert create(one, "one") == 1
        assert create(two, "two") == 1
        step_over(one, 1, 10)
        step_over(two, 1, 10)
        assert get_run(one, 1)["status"] == get_run(two, 1)["status"] == "running"
        stop_and_wait(one, 1)
        step = get_run(two, 1)["step"]
        step_over(two, 1, step + 10, timeout=120)
        assert get_run(two, 1)["status"] == "running"
        assert get_run(one, 1)["status"] == "stopped"
        assert post(one, "/runs/1/resume").status_code == 202
        step_over(one, 1, get_run(one, 1)["step"] + 5)
        for server in (one, two):
            stop_and_wait(server, 1)
            assert_conserved(server.db_url, server, 1)
    finally:
        one.stop()
        two.stop()
        with contextlib.suppress(StopIteration):
            next(pg)  # drops the database


def test_a_local_head_whose_port_was_taken_meanwhile_starts_on_other_ports(monkeypatch, caplog):
    """A port free when picked can be taken before Ray binds it (CI once lost a server's Ray so:
    "Failed to start the grpc server. The specified port is 42625"). The head then starts
    again on fresh ports."""
    from falcon_lite.runtime import head

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    picks = []

    def first_pick_taken(n, avoid=range(0)):
        ports = real_free_ports(n, avoid)
        if not picks:
            ports[0] = taken.getsockname()[1]  # the GCS port, held by another process's socket
        picks.append(ports)
        return ports

    real_free_ports = head.free_ports
    monkeypatch.setattr(head, "free_ports", first_pick_taken)
    local = None
    try:
        with caplog.at_level("WARNING", logger="falcon_lite.ray"):
            local = head.LocalHead(timeout=120)
        assert len(picks) == 2 and local.port == picks[1][0] != picks[0][0]
        assert local.lost() is None
        assert "could not bind its ports (try 1 of 3)" in caplog.text
    finally:
        taken.close()
        if local is not None:
            local.stop()
    assert not pids_mentioning(local.temp_dir)
