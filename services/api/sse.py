"""``GET /runs/{id}/events``: a run's live status and diagnostics as Server-Sent Events.

The stream polls the database (the events table and new metrics rows) every
``POLL_SECONDS`` and sends:

- ``status``: first the run's current ``{"id", "status", "step", "reason"}``, then one
  per status change (the store records each as an event of kind ``status``, with
  ``previous``);
- ``diagnostics``: ``{"rows": [{"step", NAME: value, ...}, ...], "buffer": {...}}`` with
  the metrics rows recorded since the last message (at most ``MAX_ROWS``, thinned evenly,
  plus every row of a sparse check such as ``c2st``)
  and the buffer's composition (the ``GET /runs/{id}/buffer`` shape);
- other event kinds under their own name (e.g. ``regime``).

Every event carries the ``step`` at which it happened (recorded with it; ``null`` for a
status change recorded before steps were), not the run's current step. A new connection
(no ``Last-Event-ID``) gets the newest ``REPLAY_EVENTS`` events only, not the run's whole
history; its metrics rows are thinned like any other message.
- ``end`` once the run is no longer live and everything has been sent; the server then
  closes the stream.

Every message has an id ``"<last event id>:<last metrics step>"``; a client that
reconnects with ``Last-Event-ID`` gets only what came after it.
"""

from __future__ import annotations

import asyncio
import json

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from falcon_lite.store import runs as store_runs
from falcon_lite.store.errors import NotFoundError
from services.api import queries
from services.api.deps import AppContext

POLL_SECONDS = 0.5
MAX_ROWS = 500
REPLAY_EVENTS = 100


def parse_last_event_id(value: str | None) -> tuple[int, int]:
    """``"12:340"`` -> ``(12, 340)``; missing or malformed -> start from the beginning."""
    try:
        event_id, step = (value or "").split(":")
        return max(0, int(event_id)), max(-1, int(step))
    except ValueError:
        return 0, -1


SPARSE = ("c2st", "tarp_error", "hpd_error")  # checks at their own cadence (engine/checks.py): never thinned out


def _thin(rows: list[dict], keep: int) -> list[dict]:
    if len(rows) <= keep:
        return rows
    stride = len(rows) / keep
    picked = {int(i * stride) for i in range(keep - 1)} | {len(rows) - 1}
    picked |= {i for i, row in enumerate(rows) if any(row.get(k) is not None for k in SPARSE)}
    return [rows[i] for i in sorted(picked)]


def _poll(ctx: AppContext, run_id: int, after_event: int, after_step: int) -> dict:
    """One look at the database: the run, its new events and metrics rows.

    From the start (``after_event == 0``) only the newest ``REPLAY_EVENTS`` events are read;
    ``newest`` is then the id the reader goes on from.
    """
    with ctx.reading() as session:
        run = store_runs.get_run(session, run_id)
        if after_event == 0:
            events, newest = store_runs.events_tail(session, run_id, REPLAY_EVENTS, skip_kinds=("diagnostics",))
        else:
            events = store_runs.events_since(session, run_id, after_event)
            newest = after_event
        rows = store_runs.metrics_since(session, run_id, after_step, None, 100_000)
        state = {"id": run.id, "status": run.status, "step": run.step, "reason": run.reason}
    buffer = queries.buffer(ctx, run_id) if rows else None
    return {"run": state, "events": events, "newest": newest, "rows": rows, "buffer": buffer}


def _event_fields(event) -> tuple[int, str, dict]:
    if isinstance(event, dict):
        return event["id"], event["kind"], event.get("data") or {}
    return event.id, event.kind, event.data or {}


def event_stream(ctx: AppContext, run_id: int, last_event_id: str | None) -> EventSourceResponse:
    after_event, after_step = parse_last_event_id(last_event_id)

    async def messages():
        nonlocal after_event, after_step
        first = True
        while True:
            try:
                seen = await run_in_threadpool(_poll, ctx, run_id, after_event, after_step)
            except NotFoundError:
                gone = {"id": run_id, "status": "deleted"}
                yield ServerSentEvent(json.dumps(gone), event="end", id=f"{after_event}:{after_step}")
                return
            run = seen["run"]
            if first:
                first = False
                yield ServerSentEvent(json.dumps(run), event="status", id=f"{after_event}:{after_step}")
            for event in seen["events"]:
                eid, kind, data = _event_fields(event)
                after_event = max(after_event, eid)
                if kind == "diagnostics":
                    continue  # the metrics rows below carry the diagnostics
                message = {**data, "id": run_id, "step": data.get("step")}
                yield ServerSentEvent(json.dumps(message), event=kind, id=f"{after_event}:{after_step}")
            after_event = max(after_event, seen["newest"])
            if seen["rows"]:
                after_step = max(after_step, seen["rows"][-1]["step"])
                payload = {"rows": _thin(seen["rows"], MAX_ROWS), "buffer": seen["buffer"]}
                yield ServerSentEvent(json.dumps(payload), event="diagnostics",
                                      id=f"{after_event}:{after_step}")
            elif run["status"] not in queries.LIVE:
                yield ServerSentEvent(json.dumps(run), event="end", id=f"{after_event}:{after_step}")
                return
            await asyncio.sleep(POLL_SECONDS)

    return EventSourceResponse(messages(), ping=10, headers={"Cache-Control": "no-store"})
