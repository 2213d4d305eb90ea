"""Run control: the Python API the service and the CLI use to start, stop and resume runs.

Runs execute on Ray under a named, detached Supervisor actor (so they outlive the process
that started them); this object only creates runs in the database and talks to
supervisors. Every call returns once the request is accepted; none waits for a run.
"""

from __future__ import annotations

import os
import socket
import time

import ray

from falcon_lite.config import RunConfig
from falcon_lite.settings import Settings, get_settings
from falcon_lite.store import runs
from falcon_lite.store.db import check_schema, make_engine, session_factory
from falcon_lite.store.deployment import deployment_id
from falcon_lite.store.errors import ConflictError
from falcon_lite.store.status import ACTIVE, RunStatus


def supervisor_name(deployment: str, run_id: int) -> str:
    """The run's supervisor's actor name: scoped by the deployment (`store.deployment`), so
    that two deployments (two databases) on one cluster never meet each other's run 1."""
    return f"falcon-lite-{deployment}-run-{run_id}"


def probe_ray_address(address: str | None, timeout: float = 5.0) -> None:
    """Fail fast, naming the address, when a `host:port` Ray address does not answer
    (`ray.init` itself waits minutes on an address where nothing listens)."""
    if not address or address in ("auto", "local"):
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConnectionError(f"cannot reach Ray at {address}: {exc}") from exc


def connect_ray(settings: Settings) -> None:
    """Join RAY_ADDRESS's cluster, or start a new local one (the CLI's embedded default; the
    server starts a head of its own instead, `runtime/host.py`).

    Never `ray.init()` without an address: that joins whatever cluster RAY_ADDRESS or
    /tmp/ray/ray_current_cluster names, i.e. another process's Ray, which may go away under
    us. A local instance runs its workers at the caller's priority: Ray's default (nice 15)
    lets any other busy process on the machine (the API, PostgreSQL, a benchmark's
    baseline) starve the run's trainer and simulators.
    """
    if ray.is_initialized():
        return
    probe_ray_address(settings.ray_address)
    if not settings.ray_address:
        os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(
        address=settings.ray_address or "local",
        namespace=settings.ray_namespace,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )


class RunControl:
    def __init__(self, settings: Settings | None = None, database_url: str | None = None):
        self.settings = settings or get_settings()
        self.database_url = database_url or self.settings.db_url
        self.engine = make_engine(self.database_url)
        check_schema(self.engine)
        self.sessions = session_factory(self.engine)
        self.deployment = deployment_id(self.engine)
        connect_ray(self.settings)
        self.reconcile_all()

    # -- the supervisor of a run -------------------------------------------------------
    def supervisor_name(self, run_id: int) -> str:
        return supervisor_name(self.deployment, run_id)

    def _supervisor(self, run_id: int):
        try:
            return ray.get_actor(self.supervisor_name(run_id), namespace=self.settings.ray_namespace)
        except ValueError:
            return None

    def _alive(self, run_id: int) -> bool:
        actor = self._supervisor(run_id)
        if actor is None:
            return False
        try:
            return ray.get(actor.alive.remote(), timeout=30)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            return False

    def _launch(self, run_id: int) -> None:
        from falcon_lite.runtime.supervisor import Supervisor

        old = self._supervisor(run_id)
        if old is not None:
            ray.kill(old)
            self._wait_gone(run_id)
        actor = Supervisor.options(
            name=self.supervisor_name(run_id), namespace=self.settings.ray_namespace, lifetime="detached"
        ).remote(run_id, self.database_url)
        ray.get(actor.start.remote())

    def _wait_gone(self, run_id: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self._supervisor(run_id) is not None and time.monotonic() < deadline:
            time.sleep(0.1)

    # -- the API -----------------------------------------------------------------------
    def create(self, config: RunConfig, start: bool = True) -> int:
        with self.sessions.begin() as session:
            run_id = runs.create_run(session, config).id
        if start:
            self.start(run_id)
        return run_id

    def start(self, run_id: int) -> None:
        """Start a pending run, or resume a stopped/failed one; a no-op on an active run."""
        with self.sessions.begin() as session:
            status = runs.get_run(session, run_id).status
        if status in ACTIVE and self._alive(run_id):
            return
        if status == RunStatus.COMPLETED:
            raise ConflictError(f"run {run_id} is completed; there is nothing to resume")
        with self.sessions.begin() as session:
            if status in ACTIVE:  # its supervisor is gone: say so before starting again
                runs.set_status(session, run_id, RunStatus.FAILED, reason="supervisor lost")
            runs.set_status(session, run_id, RunStatus.RUNNING)
        self._launch(run_id)

    resume = start

    def stop(self, run_id: int) -> None:
        """Ask a run to stop gracefully (flush, checkpoint, `stopped`); idempotent."""
        with self.sessions.begin() as session:
            status = runs.get_run(session, run_id).status
            if status not in ACTIVE:  # nothing runs: nothing to stop
                return
        actor = self._supervisor(run_id)
        if actor is None or not self._alive(run_id):
            self.reconcile(run_id)
            return
        with self.sessions.begin() as session:
            if runs.get_run(session, run_id).status == RunStatus.RUNNING:
                runs.set_status(session, run_id, RunStatus.STOPPING)
        actor.stop.remote()

    def reconcile(self, run_id: int) -> str:
        """Mark an active run whose supervisor is gone as failed; returns the run's status."""
        with self.sessions.begin() as session:
            run = runs.get_run(session, run_id)
            status = run.status
        if status in ACTIVE and not self._alive(run_id):
            with self.sessions.begin() as session:
                run = runs.get_run(session, run_id)
                if run.status in ACTIVE:  # re-read: it may have finished meanwhile
                    runs.set_status(session, run_id, RunStatus.FAILED, reason="supervisor lost: the process died")
                status = run.status
        return status

    def reconcile_all(self) -> list[int]:
        """Mark every active run whose supervisor is gone as failed (e.g. after the embedded
        default's Ray instance ended with the process that owned it); returns their ids."""
        with self.sessions.begin() as session:
            active = [r.id for r in runs.list_runs(session, limit=10_000)[0] if r.status in ACTIVE]
        return [run_id for run_id in active if self.reconcile(run_id) == RunStatus.FAILED]

    def delete(self, run_id: int) -> None:
        with self.sessions.begin() as session:
            runs.delete_run(session, run_id)
        old = self._supervisor(run_id)
        if old is not None:
            ray.kill(old)

    def placement(self, run_id: int) -> dict[str, int]:
        """Simulated batches per Ray node id, as the run's trainer counted them."""
        actor = self._supervisor(run_id)
        return ray.get(actor.placement.remote(), timeout=30) if actor else {}

    def wait(self, run_id: int, timeout: float | None = None, poll: float = 0.5) -> str:
        """Block until the run is no longer active (or timeout); returns its status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.reconcile(run_id)
            if status not in ACTIVE or (deadline is not None and time.monotonic() > deadline):
                return status
            time.sleep(poll)

    def run_to_end(self, run_id: int, progress: bool = True) -> tuple[str, dict | None]:
        """Start a run and follow it to its end with a progress bar (the CLI's `run --ray`);
        returns its status and its last metrics row, with `mean_wait_share`: the share of its
        time the trainer waited for simulations, over the run."""
        from tqdm import tqdm

        self.start(run_id)
        with self.sessions.begin() as session:
            total = RunConfig.model_validate(runs.get_run(session, run_id).config).training.steps
        bar = tqdm(total=total, unit="step", disable=not progress)
        status = RunStatus.RUNNING
        while status in ACTIVE:
            status = self.wait(run_id, timeout=1.0)
            with self.sessions.begin() as session:
                bar.update(runs.get_run(session, run_id).step - bar.n)
        bar.close()
        with self.sessions.begin() as session:
            row, mean_wait = runs.run_summary(session, run_id, mean_of="wait_share")
        return status, None if row is None else {**row, "mean_wait_share": mean_wait}

    def close(self) -> None:
        self.engine.dispose()
