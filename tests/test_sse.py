"""``GET /runs/{id}/events`` against a live server, on SQLite and PostgreSQL: which step each
event carries, and how much a new connection replays.

Runs and their events are written by the store's own functions into the server's database;
the server only reads them.
"""

from __future__ import annotations

import pytest

from falcon_lite.client import Client
from falcon_lite.config import RunConfig
from falcon_lite.store import runs as store_runs
from falcon_lite.store.db import make_engine, session_factory
from services.api.sse import REPLAY_EVENTS
from tests.plugins.server import TOKEN, live_server, server_db_url  # noqa: F401 (fixtures)


@pytest.fixture(scope="module")
def api(live_server) -> Client:  # noqa: F811
    with Client(live_server.url, token=TOKEN) as client:
        yield client


@pytest.fixture(scope="module")
def sessions(live_server):  # noqa: F811
    engine = make_engine(live_server.db_url)
    yield session_factory(engine)
    engine.dispose()


def new_run(sessions, name: str) -> int:
    with sessions.begin() as session:
        return store_runs.create_run(session, RunConfig(name=name)).id


def at_step(sessions, run_id: int, step: int, status: str | None = None, **event) -> None:
    """Move the run to `step`, then change its status and/or record an event there."""
    with sessions.begin() as session:
        store_runs.set_step(session, run_id, step)
        if status:
            store_runs.set_status(session, run_id, status)
        if event:
            store_runs.add_event(session, run_id, event.pop("kind"), {"step": step, **event})


def test_events_carry_the_step_at_which_they_happened(api, sessions):
    run_id = new_run(sessions, "steps")
    at_step(sessions, run_id, 0, "running")
    at_step(sessions, run_id, 120, kind="regime", regime="constant")
    at_step(sessions, run_id, 250, kind="alarm", alarm="raised", alarm_ema=3.5)
    at_step(sessions, run_id, 300, "stopping")
    at_step(sessions, run_id, 410, "stopped")
    at_step(sessions, run_id, 480)  # the run's step moves on after the last event (e.g. a late flush)

    seen = list(api.events(run_id, timeout=60))
    assert seen[0][0] == "status" and seen[0][1]["step"] == 480  # the run as it is now
    steps = [(kind, data.get("status") or data.get("regime") or data.get("alarm"), data["step"])
             for kind, data, _ in seen[1:-1]]
    assert steps == [("status", "running", 0), ("regime", "constant", 120), ("alarm", "raised", 250),
                     ("status", "stopping", 300), ("status", "stopped", 410)]
    assert seen[-1][0] == "end"


def test_a_new_connection_replays_a_bounded_tail_of_events(api, sessions, live_server):  # noqa: F811
    run_id = new_run(sessions, "flood")
    at_step(sessions, run_id, 0, "running")
    with sessions.begin() as session:
        for step in range(3 * REPLAY_EVENTS):
            regime = "constant" if step % 2 else "identity"
            store_runs.add_event(session, run_id, "regime", {"step": step, "regime": regime})
            store_runs.add_event(session, run_id, "diagnostics", {"step": step, "loss": 1.0})
    at_step(sessions, run_id, 3 * REPLAY_EVENTS, "stopped")

    seen = list(api.events(run_id, timeout=60))
    regimes = [data["step"] for kind, data, _ in seen if kind == "regime"]
    assert len(regimes) < REPLAY_EVENTS  # the newest ones, not the whole history
    assert regimes == list(range(3 * REPLAY_EVENTS - len(regimes), 3 * REPLAY_EVENTS))
    assert [data["status"] for kind, data, _ in seen if kind == "status"][-1] == "stopped"
    assert seen[-1][0] == "end"
    with live_server.client() as http:
        size = len(http.get(f"/runs/{run_id}/events", timeout=60).content)
    assert size < 100 * REPLAY_EVENTS

    # A client that reconnects with the id of a message it saw gets everything after it.
    middle = next(eid for kind, data, eid in seen if kind == "regime")
    resumed = list(api.events(run_id, last_event_id=middle, timeout=60))
    assert [d["step"] for k, d, _ in resumed if k == "regime"] == regimes[1:]


def test_thinning_keeps_every_row_of_a_sparse_check():
    """A replay of many rows is thinned evenly, but a row holding a check taken at its own
    cadence (c2st, TARP: engine/checks.py) always goes out, and so does the last row."""
    from services.api.sse import _thin

    rows = [{"step": s, "loss": 0.0} for s in range(1000)]
    rows[333]["c2st"] = 0.55
    rows[777]["tarp_error"] = 0.1
    thinned = _thin(rows, 10)
    steps = [r["step"] for r in thinned]
    assert steps == sorted(steps) and len(steps) == 12
    assert {333, 777, 999} <= set(steps)
