"""The server's Ray driver, as a process of its own: ``python -m falcon_lite.runtime.bridge R W``.

It joins the Ray at its settings' ``ray_address`` with a `RunControl` on their database
(`RayHost` sets ``FALCON_LITE_RAY_ADDRESS`` and ``DATABASE_URL`` for it), answers ``(True, deployment id)`` on pipe ``W`` (or ``(False,
reason)``), then serves requests ``(method, args)`` read from pipe ``R`` with ``(True,
result)`` or ``(False, exception)``, until ``R`` closes. If Ray's core worker ends this
process (GCS lost), the server loses this child and nothing else (`runtime/host.py`).
"""

from __future__ import annotations

import sys

from falcon_lite.runtime.host import read_frame, write_frame
from falcon_lite.store.errors import ConflictError, NotFoundError, SchemaError

METHODS = {"create", "start", "resume", "stop", "delete", "reconcile", "reconcile_all", "placement"}
PASSED_ON = (ConflictError, NotFoundError, SchemaError, ValueError, ConnectionError, TimeoutError)


def serve(requests: int, replies: int) -> None:
    from falcon_lite.runtime.control import RunControl
    from falcon_lite.settings import Settings

    try:
        control = RunControl(Settings())
    except Exception as exc:  # noqa: BLE001 - said to the server, which answers 503
        write_frame(replies, (False, f"{type(exc).__name__}: {exc}"))
        return
    write_frame(replies, (True, control.deployment))
    while True:
        try:
            method, args = read_frame(requests)
        except EOFError:
            return
        try:
            if method not in METHODS:
                raise ValueError(f"unknown run-control method {method!r}")
            write_frame(replies, (True, getattr(control, method)(*args)))
        except PASSED_ON as exc:
            write_frame(replies, (False, exc))
        except Exception as exc:  # noqa: BLE001 - Ray's errors do not all pickle
            write_frame(replies, (False, RuntimeError(f"{type(exc).__name__}: {exc}")))


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
