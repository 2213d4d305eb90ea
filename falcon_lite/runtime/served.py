"""Run control for the API server: `RunControl`'s calls, made through a `RayHost`.

The server's process never imports Ray (`runtime/host.py` says why); this object keeps what
the server must know without Ray true:

- at start-up, the status of every live run: with the embedded default the previous
  server's local Ray ended with it, so its active runs are `failed` (resumable) before the
  first request is answered; with `RAY_ADDRESS` the runs of this deployment whose
  supervisor is gone are found on the cluster and marked `failed` (`RunControl.reconcile_all`);
- when the embedded Ray is lost while the server runs, its active runs become `failed`
  within a second (the host's watcher), with the reason.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

from falcon_lite.config import RunConfig
from falcon_lite.runtime.host import RayHost, RayUnavailable
from falcon_lite.settings import Settings
from falcon_lite.store import runs
from falcon_lite.store.models import Run

log = logging.getLogger("falcon_lite.ray")

ACTIVE = ("running", "stopping")
STARTUP_RECONCILE_S = 60.0


class ServedRunControl:
    def __init__(self, settings: Settings, engine: Engine, sessions: sessionmaker, database_url: str):
        self.settings = settings
        self.engine = engine
        self.sessions = sessions
        self.host = RayHost(settings.ray_address, database_url, settings.ray_namespace, on_lost=self._lost)

    # -- keeping live runs' status true -------------------------------------------------
    def fail_active(self, reason: str) -> list[int]:
        """Mark every active run `failed` with `reason` (they ran on a Ray that is gone)."""
        failed = []
        with self.sessions.begin() as session:
            active = session.scalars(select(Run.id).where(Run.status.in_(ACTIVE))).all()
        for run_id in active:
            with self.sessions.begin() as session:
                if runs.get_run(session, run_id, for_update=True).status in ACTIVE:
                    runs.set_status(session, run_id, "failed", reason=reason)
                    failed.append(run_id)
        return failed

    def _lost(self, reason: str) -> None:
        failed = self.fail_active(f"Ray lost: {reason}")
        log.warning("the local Ray was lost (%s); runs %s are failed and can be resumed", reason, failed)

    def startup(self) -> None:
        """Make the status of live runs true before the server answers."""
        if self.host.embedded:
            failed = self.fail_active("the server stopped, and its local Ray with it")
            if failed:
                log.warning("runs %s were active on the previous server's local Ray: now failed", failed)
            return
        done = threading.Event()

        def reconcile() -> None:
            try:
                failed = self.host.call("reconcile_all", timeout=STARTUP_RECONCILE_S)
                if failed:
                    log.warning("runs %s had lost their supervisor: now failed", failed)
            except Exception as exc:  # noqa: BLE001 - the server serves reads without Ray
                log.warning("could not reconcile runs with Ray at %s: %s", self.settings.ray_address, exc)
            finally:
                done.set()

        threading.Thread(target=reconcile, name="reconcile", daemon=True).start()
        if not done.wait(STARTUP_RECONCILE_S):
            log.warning("reconciling runs with Ray takes over %.0f s; serving meanwhile", STARTUP_RECONCILE_S)

    # -- RunControl's calls ------------------------------------------------------------
    def create(self, config: RunConfig, start: bool = True) -> int:
        return self.host.call("create", config, start)

    def start(self, run_id: int) -> None:
        self.host.call("start", run_id)

    def resume(self, run_id: int) -> None:
        self.host.call("resume", run_id)

    def stop(self, run_id: int) -> None:
        self.host.call("stop", run_id)

    def delete(self, run_id: int) -> None:
        if self.connected():
            try:
                self.host.call("delete", run_id)  # also ends a supervisor it may have left
                return
            except RayUnavailable:
                pass
        with self.sessions.begin() as session:
            runs.delete_run(session, run_id)

    def placement(self, run_id: int) -> dict[str, int]:
        return self.host.call("placement", run_id)

    def connected(self) -> bool:
        return self.host.bridge is not None

    def close(self) -> None:
        embedded = self.host.embedded and self.connected()
        self.host.close()
        if embedded:
            self.fail_active("the server stopped, and its local Ray with it")
