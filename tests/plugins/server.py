"""Live API servers for tests: `falcon-lite serve` in a subprocess on a free port.

- `start_server(db_url, data_dir, ...)` / `LiveServer.stop()`: a real uvicorn process
  (through the ``serve`` verb, so it migrates the database first), reached over real HTTP.
- `server_db_url` (module scope): a fresh database URL, parametrized ``sqlite`` /
  ``postgres`` like the store's `raw_db_url` (PostgreSQL skips without a server unless
  ``FALCON_LITE_REQUIRE_POSTGRES=1``). No schema: ``serve`` makes it.
- `live_server` (module scope): a server on `server_db_url` with the bearer token
  `TOKEN`; it never connects to Ray unless a test makes it start a run.
- `ray_server` (module scope): a server on SQLite that joins the test session's Ray
  (the `ray_address` fixture of tests/plugins/ray.py) for the tests that run training.

A server's log is kept in its data dir; a server that does not come up fails the test with
the log's tail.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from falcon_lite.runtime.head import free_ports
from tests.plugins.db import _fresh_pg_database

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "test-token-0123456789"
START_TIMEOUT_S = 120


def free_port() -> int:
    return free_ports(1)[0]  # below the ephemeral range: no outgoing connection takes it meanwhile


@dataclass
class LiveServer:
    url: str
    db_url: str
    data_dir: Path
    token: str | None
    proc: subprocess.Popen
    log_path: Path

    def client(self, auth: bool = True, **kwargs) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}"} if auth and self.token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=kwargs.pop("timeout", 60.0), **kwargs)

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_server(db_url: str, data_dir: Path, token: str | None = TOKEN, ray_address: str | None = None,
                 extra_env: dict[str, str] | None = None) -> LiveServer:
    """Start `falcon-lite serve` on a free port and wait until /health answers."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FALCON_LITE_", "RAY_ADDRESS"))}
    env.update({"DATABASE_URL": db_url, "FALCON_LITE_DATA_DIR": str(data_dir),
                "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    if token:
        env["FALCON_LITE_API_TOKEN"] = token
    if ray_address:
        env["RAY_ADDRESS"] = ray_address
    env.update(extra_env or {})
    log_path = data_dir / f"server-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "falcon_lite.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--log-level", "warning"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    server = LiveServer(f"http://127.0.0.1:{port}", db_url, data_dir, token, proc, log_path)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log_tail()}")
        try:
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"server did not answer /health in {START_TIMEOUT_S} s:\n{server.log_tail()}")
        time.sleep(0.3)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def server_db_url(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('api-db') / 'falcon-lite.db'}"
        return
    yield from _fresh_pg_database(request.getfixturevalue("pg_base_url"))


@pytest.fixture(scope="module")
def live_server(server_db_url: str, tmp_path_factory) -> Iterator[LiveServer]:
    server = start_server(server_db_url, tmp_path_factory.mktemp("api-data"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def ray_server(ray_address: str, tmp_path_factory) -> Iterator[LiveServer]:
    data_dir = tmp_path_factory.mktemp("api-ray")
    server = start_server(f"sqlite:///{data_dir / 'falcon-lite.db'}", data_dir, ray_address=ray_address)
    try:
        yield server
    finally:
        server.stop()
