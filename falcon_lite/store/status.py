"""A run's status and its lifecycle, shared by the store, the run control and the API.

::

    pending -> running -> (stopping ->) stopped | completed | failed
    stopped | failed -> running          (resume)
    pending -> failed                    (a run that could not start)
"""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    """A run's status; the values are the REST contract's strings (a member equals its string)."""

    PENDING = "pending"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def active(self) -> bool:
        """Running, or on its way to stopping: a supervisor should be driving it."""
        return self in ACTIVE

    @property
    def terminal(self) -> bool:
        """Ended: nothing runs it (stopped and failed runs may be resumed)."""
        return self in TERMINAL


RUN_STATUSES = tuple(RunStatus)
ACTIVE = frozenset({RunStatus.RUNNING, RunStatus.STOPPING})
TERMINAL = frozenset({RunStatus.STOPPED, RunStatus.COMPLETED, RunStatus.FAILED})
LIVE = frozenset({RunStatus.PENDING, *ACTIVE})
TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    RunStatus.PENDING: frozenset({RunStatus.RUNNING, RunStatus.FAILED}),
    RunStatus.RUNNING: frozenset({RunStatus.STOPPING, RunStatus.STOPPED, RunStatus.COMPLETED, RunStatus.FAILED}),
    RunStatus.STOPPING: frozenset({RunStatus.STOPPED, RunStatus.COMPLETED, RunStatus.FAILED}),
    RunStatus.STOPPED: frozenset({RunStatus.RUNNING}),
    RunStatus.COMPLETED: frozenset(),
    RunStatus.FAILED: frozenset({RunStatus.RUNNING}),
}
DELETABLE = frozenset({RunStatus.PENDING, *TERMINAL})
