"""The server's Ray, kept outside the server's process.

A process that calls `ray.init` is a Ray *driver*, and a driver's core worker ends its
process (`Failed to connect to GCS within 60 seconds ... The program will terminate`)
when the cluster's GCS stops answering for 60 s. The API process therefore never imports
Ray: every Ray-facing call goes to a child process (`falcon_lite.runtime.bridge`) that
holds a `RunControl`. Losing Ray loses that child at most.

- `LocalHead` (`runtime/head.py`): the embedded default's Ray, a head of the server's own (`ray start --head
  --block`) on free ports and in a private temp dir, so that it never joins, nor is joined
  by, another Ray on the machine. It gets SIGTERM when the server dies (even by SIGKILL),
  and `ray start --block` then stops the processes it started.
- `Bridge`: the child process and its pipes (pickled frames: a request `(method, args)`,
  a reply `(ok, value)`).
- `RayHost`: what the app holds. All starts and calls run on one thread of its own (a
  child's death signal follows the thread that started it, and the app's pool threads
  come and go). A watcher notices a lost head or child within a second; runs that were on
  a lost embedded Ray are marked `failed` (resumable), the next run-control call answers
  `RayUnavailable` (503) with the reason, and the one after starts a new Ray.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from falcon_lite.runtime.head import START_TIMEOUT_S, LocalHead, RayUnavailable, dies_with_us, ray_env

log = logging.getLogger("falcon_lite.ray")

CALL_TIMEOUT_S = 180.0


class BridgeGone(Exception):
    """The bridge process ended or stopped answering."""


def write_frame(fd: int, obj) -> None:
    data = pickle.dumps(obj)
    view = memoryview(struct.pack("!Q", len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def read_frame(fd: int, deadline: float | None = None):
    def read_exactly(n: int) -> bytes:
        chunks, left = [], n
        while left:
            if deadline is not None:
                wait = deadline - time.monotonic()
                if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                    raise TimeoutError
            chunk = os.read(fd, left)
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    (size,) = struct.unpack("!Q", read_exactly(8))
    return pickle.loads(read_exactly(size))


class Bridge:
    """The child process that is Ray's driver for the server (`falcon_lite.runtime.bridge`)."""

    def __init__(self, address: str, database_url: str, namespace: str, own_head: bool,
                 timeout: float = START_TIMEOUT_S):
        req_r, self.req_w = os.pipe()
        self.rep_r, rep_w = os.pipe()
        args = [sys.executable, "-m", "falcon_lite.runtime.bridge", str(req_r), str(rep_w)]
        env = {k: v for k, v in ray_env(own_head).items() if not k.startswith("FALCON_LITE_")}
        env.update({"FALCON_LITE_RAY_ADDRESS": address, "DATABASE_URL": database_url,
                    "FALCON_LITE_RAY_NAMESPACE": namespace})
        self.proc = subprocess.Popen(dies_with_us(args, signal.SIGKILL), env=env, pass_fds=(req_r, rep_w),
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        os.close(req_r)
        os.close(rep_w)
        try:
            ok, value = self._reply(timeout)
        except BridgeGone as exc:
            self.stop()
            raise RayUnavailable(f"cannot connect to Ray at {address}: {exc}") from exc
        if not ok:
            self.stop()
            raise RayUnavailable(f"cannot connect to Ray at {address}: {value}")
        self.deployment = value

    def _reply(self, timeout: float):
        try:
            return read_frame(self.rep_r, time.monotonic() + timeout)
        except TimeoutError as exc:
            raise BridgeGone(f"no answer in {timeout:.0f} s") from exc
        except (EOFError, OSError) as exc:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
            raise BridgeGone(f"the Ray driver process exited with code {self.proc.returncode}") from exc

    def call(self, method: str, args: tuple, timeout: float = CALL_TIMEOUT_S):
        try:
            write_frame(self.req_w, (method, args))
        except OSError as exc:
            raise BridgeGone(f"the Ray driver process is gone ({exc})") from exc
        ok, value = self._reply(timeout)
        if not ok:
            raise value
        return value

    def exited(self) -> int | None:
        return self.proc.poll()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        for fd in (self.req_w, self.rep_r):
            with contextlib.suppress(OSError):
                os.close(fd)


class RayHost:
    """The server's way to Ray: a local head (embedded default) or `address`, and a bridge.

    `on_lost(reason)` is called (from the watcher thread) when an embedded head is lost:
    the runs it carried are gone with it.
    """

    def __init__(self, address: str | None, database_url: str, namespace: str,
                 on_lost: Callable[[str], None] | None = None, poll_s: float = 0.5):
        self.address = address
        self.database_url = database_url
        self.namespace = namespace
        self.on_lost = on_lost
        self.head: LocalHead | None = None
        self.bridge: Bridge | None = None
        self.reason: str | None = None  # a loss not yet answered to a caller
        self._state = threading.Lock()
        self._calls = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ray-host")
        self._closed = threading.Event()
        self._watcher = threading.Thread(target=self._watch, args=(poll_s,), name="ray-watch", daemon=True)
        self._watcher.start()

    @property
    def embedded(self) -> bool:
        return not self.address

    def call(self, method: str, *args, timeout: float = CALL_TIMEOUT_S):
        """`RunControl.<method>(*args)` in the bridge; `RayUnavailable` when Ray is lost."""
        if self._closed.is_set():
            raise RayUnavailable("the server is shutting down")
        return self._calls.submit(self._call, method, args, timeout).result()

    def _call(self, method: str, args: tuple, timeout: float):
        with self._state:
            reason, self.reason = self.reason, None
        if reason is not None:
            raise RayUnavailable(f"{reason}; a new Ray starts on the next call")
        if self.bridge is None:
            self._connect()
        bridge = self.bridge
        try:
            return bridge.call(method, args, timeout)
        except BridgeGone as exc:
            lost = self.head.lost() if self.head is not None else None
            self._lose(lost or str(exc), bridge)
            with self._state:
                reason, self.reason = self.reason or lost or str(exc), None
            raise RayUnavailable(f"{reason}; a new Ray starts on the next call") from exc

    def _connect(self) -> None:
        if self.embedded:
            self.head = LocalHead()
            log.info("started a local Ray at %s (%s)", self.head.address, self.head.temp_dir)
        address = self.head.address if self.head else self.address
        try:
            self.bridge = Bridge(address, self.database_url, self.namespace, own_head=self.head is not None)
        except RayUnavailable:
            self._stop_all()
            raise

    def _lose(self, reason: str, bridge: Bridge | None) -> None:
        """Forget the Ray that `bridge` used (once), stop what is left of it, tell `on_lost`."""
        with self._state:
            if bridge is None or bridge is not self.bridge:
                return  # already handled
            self.reason = reason
            head = self.head
        log.warning("Ray lost: %s", reason)
        self._stop_all(graceful=False)
        if head is not None and self.on_lost is not None:
            try:
                self.on_lost(reason)
            except Exception:  # noqa: BLE001 - the watcher must go on
                log.exception("marking the runs of a lost Ray failed")

    def _stop_all(self, graceful: bool = True) -> None:
        with self._state:
            bridge, head, self.bridge, self.head = self.bridge, self.head, None, None
        if bridge is not None:
            bridge.stop()
        if head is not None:
            head.stop(graceful)

    def _watch(self, poll_s: float) -> None:
        while not self._closed.wait(poll_s):
            with self._state:
                bridge, head = self.bridge, self.head
            if bridge is None:
                continue
            reason = head.lost() if head is not None else None
            if reason is None and bridge.exited() is not None:
                reason = f"the Ray driver process exited with code {bridge.exited()}"
            if reason is not None:
                self._lose(reason, bridge)

    def close(self) -> None:
        self._closed.set()
        self._calls.submit(self._stop_all).result()
        self._calls.shutdown()
