#!/usr/bin/env python3
"""Container health probes for the compose services, cheap enough to run every few seconds.

    falcon-lite-healthcheck http URL            # 2xx from URL (the api's /health)
    falcon-lite-healthcheck ray-node HOST:PORT  # a raylet runs here and the GCS at HOST:PORT answers

Standard library only: no `import ray` (seconds of CPU per probe). Exit 0 when healthy,
1 with a one-line reason on stderr otherwise.
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.request


def check_http(url: str) -> str | None:
    """None when `url` answers 2xx within 3 s, else the reason."""
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            if 200 <= response.status < 300:
                return None
            return f"{url} answered {response.status}"
    except OSError as exc:
        return f"{url} unreachable: {exc}"


def raylet_running() -> bool:
    """Whether a process named `raylet` runs in this container (scans /proc)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as comm:
                if comm.read().strip() == "raylet":
                    return True
        except OSError:
            continue  # the process ended while we looked
    return False


def check_ray_node(gcs: str) -> str | None:
    """None when this container's raylet runs and the GCS at `gcs` accepts connections."""
    if not raylet_running():
        return "no raylet process in this container"
    host, _, port = gcs.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=3).close()
    except (OSError, ValueError) as exc:
        return f"Ray GCS at {gcs} unreachable: {exc}"
    return None


def main(argv: list[str]) -> int:
    probes = {"http": check_http, "ray-node": check_ray_node}
    if len(argv) != 2 or argv[0] not in probes:
        print(f"usage: falcon-lite-healthcheck {{{'|'.join(probes)}}} TARGET", file=sys.stderr)
        return 2
    reason = probes[argv[0]](argv[1])
    if reason:
        print(f"unhealthy: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
