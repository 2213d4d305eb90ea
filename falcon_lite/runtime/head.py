"""The embedded default's Ray head, of the server's own, and the process tools it needs.

`LocalHead` starts ``ray start --head --block`` on free ports and in a private temp dir, so
that it never joins, nor is joined by, another Ray on the machine; it gets SIGTERM when the
server dies (even by SIGKILL), and ``ray start --block`` then stops the processes it started.
`falcon_lite.runtime.host` says why the server keeps Ray outside its own process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger("falcon_lite.ray")

START_TIMEOUT_S = 180.0
_PORT_TAKEN = re.compile(r"already in use|Failed to start the grpc server|failed to bind", re.I)


class RayUnavailable(ConnectionError):
    """Ray cannot be used right now (lost, unreachable, or not answering); says why."""


# Exec'd in front of a child's command: it asks for `sig` when its parent (the thread that
# started it) ends, and gives up if that parent is already gone. (A `preexec_fn` would do
# it inside the fork, which is not safe in a process with threads.)
_GUARD = ("import ctypes, os, sys; ctypes.CDLL(None).prctl(1, int(sys.argv[1]), 0, 0, 0); "
          "os.getppid() == int(sys.argv[2]) or os._exit(1); os.execv(sys.argv[3], sys.argv[3:])")


def dies_with_us(args: list[str], sig: int) -> list[str]:
    """`args`, run so that the process gets `sig` when this server's process dies (Linux)."""
    return [sys.executable, "-I", "-c", _GUARD, str(int(sig)), str(os.getpid()), *args]


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out to outgoing connections (Linux; 32768 elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Ports are picked below the kernel's ephemeral range: a port from there (`bind(0)`) can be
# taken by any outgoing connection between our check and Ray's own bind, which failed a
# head's start in CI ("Failed to start the grpc server. The specified port is 42625"); and
# above 20000, since any other Ray's workers take ports of 10002-19999 by default.
_LOWEST = 20000


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_ports(n: int, avoid: range = range(0)) -> list[int]:
    """`n` distinct ports free right now, outside `avoid` and below the ephemeral range."""
    high = _ephemeral_low()
    if high - _LOWEST < 10 * n:
        return _kernel_ports(n)
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    found: list[int] = []
    for _ in range(200 * n):
        port = rng.randrange(_LOWEST, high)
        if port not in avoid and port not in found and _bindable(port):
            found.append(port)
            if len(found) == n:
                return found
    return _kernel_ports(n)


def _kernel_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port_range(width: int = 40) -> tuple[int, int]:
    """A run of `width` ports, all free now and below the ephemeral range (for Ray's workers)."""
    high = _ephemeral_low()
    starts = list(range(_LOWEST, max(_LOWEST, high - width), width))
    random.Random(os.getpid() ^ time.monotonic_ns()).shuffle(starts)
    for start in starts:
        if all(_bindable(port) for port in range(start, start + width)):
            return start, start + width - 1
    raise RayUnavailable("no free port range for the local Ray's workers")


def _answers(port: int, timeout: float = 1.0) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=timeout).close()
        return True
    except OSError:
        return False


def pids_mentioning(marker: str) -> list[int]:
    """Processes whose command line mentions `marker` (a local head's private temp dir)."""
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


def ray_env(own_head: bool) -> dict[str, str]:
    """The environment for our Ray processes: no RAY_ADDRESS to follow, no usage stats. For
    our own head (and its driver): no token auth switched on by a file another Ray left in
    ~/.ray, and workers at our priority; a cluster keeps its own settings."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    if own_head:
        env["RAY_AUTH_MODE"] = "disabled"
        env.setdefault("RAY_worker_niceness", "0")
    return env


class LocalHead:
    """A Ray head of this server's own: free ports, a private temp dir, its own session."""

    def __init__(self, timeout: float = START_TIMEOUT_S, attempts: int = 3):
        deadline = time.monotonic() + timeout
        for attempt in range(1, attempts + 1):
            why = self._start(deadline)
            if why is None:
                return
            # Another process may take a port between our check and Ray's bind: then try
            # again on fresh ports; any other failure is reported at once.
            if attempt == attempts or not _PORT_TAKEN.search(why) or time.monotonic() > deadline:
                raise RayUnavailable(f"the local Ray did not start: {why}")
            log.warning("the local Ray could not bind its ports (try %d of %d); trying others",
                        attempt, attempts)

    def _start(self, deadline: float) -> str | None:
        """Start a head on fresh ports; None once it runs, else the tail of its log."""
        # Short: Ray's socket paths under the temp dir are limited to ~107 characters.
        self.temp_dir = tempfile.mkdtemp(prefix="flr-h-", dir="/tmp")
        low, high = free_port_range()
        self.port, *ports = free_ports(7, avoid=range(low, high + 1))
        self.log_path = Path(self.temp_dir) / "head.log"
        args = [str(Path(sys.executable).parent / "ray"), "start", "--head", f"--port={self.port}",
                f"--temp-dir={self.temp_dir}", "--include-dashboard=false", "--disable-usage-stats",
                "--block", f"--node-manager-port={ports[0]}", f"--object-manager-port={ports[1]}",
                f"--dashboard-agent-listen-port={ports[2]}", f"--dashboard-agent-grpc-port={ports[3]}",
                f"--runtime-env-agent-port={ports[4]}", f"--metrics-export-port={ports[5]}",
                f"--min-worker-port={low}", f"--max-worker-port={high}"]
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(dies_with_us(args, signal.SIGTERM), env=ray_env(own_head=True),
                                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        while "Ray runtime started" not in self._log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self._log()[-2000:]
                self.stop()
                return tail
            time.sleep(0.2)
        return None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def lost(self) -> str | None:
        """Why this head is no longer usable, or None while it is."""
        code = self.proc.poll()
        if code is not None:
            return f"the local Ray (head at {self.address}) exited with code {code}"
        if not _answers(self.port) and not _answers(self.port):
            return f"the local Ray's GCS at {self.address} stopped answering"
        return None

    def stop(self, graceful: bool = True) -> None:
        """Stop this head and everything it started (and only that: by pid); a lost head
        (`graceful=False`) is killed at once, since it waits for a GCS that is gone."""
        if self.proc.poll() is None and not graceful:
            self.proc.kill()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # `ray start --block` stops its processes
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for pid in pids_mentioning(self.temp_dir):  # what outlived it: ours by their temp dir
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
