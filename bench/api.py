"""API latency under polling load, and what that load costs training.

Starts a local Ray, a live `falcon-lite serve` joined to it (SQLite file), and two runs
training (the seed's scenario, one simulator each). Then, for `--seconds` each:

1. no load: training steps/s of the two runs;
2. baseline: `--clients` concurrent clients polling ``GET /health``;
3. load: the same clients polling ``GET /runs/{id}/buffer`` and
   ``GET /runs/{id}/metrics?since_step=<last seen>`` (alternating, both runs; each client
   starts from the step the run is at when the phase begins, as a poller that has caught
   up does);
   2 and 3 first with a pause of ``--interval`` s per client between requests (polling),
   then closed loop (no pause); then no load again, to show the machine's drift.

The clients run in a separate process, so that neither they nor this process (a Ray
driver) hold the server's or each other's interpreter lock, and by default use a minimal
asyncio HTTP/1.1 client (``--client httpx`` for httpx, which costs several times more CPU
per request). The CPU time of the server process and of the client process is measured
per phase: on 2 cores both compete with training, the clients' share being an artefact
of running them on the same machine.

Reports p50/p99 latency and errors per phase and the training rate beside each, prints a
markdown table and writes it as the "API" section of docs/benchmarks.md (other sections
are kept). Targets (issue 5): p99 <= 50 ms, no errors, steps/s drop <= 20 %.

    .venv/bin/python bench/api.py [--seconds 20] [--clients 16] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from tests.plugins.server import start_server  # noqa: E402

RUN = {"training": {"steps": 1_000_000}, "runtime": {"simulators": 1}}


def steps_now(http: httpx.Client, run_ids: list[int]) -> dict[int, int]:
    return {r: http.get(f"/runs/{r}").json()["step"] for r in run_ids}


def load_path(mode: str, run_ids: list[int], i: int, state: dict) -> str:
    """The next path of client `i`: /health, or buffer and metrics of one run in turn."""
    if mode == "health":
        return "/health"
    run = str(run_ids[i % 2])
    state["n"] = state.get("n", 0) + 1
    if state["n"] % 2:
        return f"/runs/{run}/buffer"
    return f"/runs/{run}/metrics?since_step={state[run]}"


class RawClient:
    """A minimal keep-alive HTTP/1.1 GET client on asyncio streams: a load generator that
    costs the machine far less CPU per request than httpx (whose cost here would be
    charged to training, though real pollers run elsewhere)."""

    def __init__(self, url: str, timeout: float) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port, self.timeout = host, int(port), timeout
        self.streams = None

    async def get(self, path: str) -> tuple[int, bytes]:
        if self.streams is None:
            self.streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.streams
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.timeout)
            lines = head.split(b"\r\n")
            length = next(int(v) for k, _, v in (h.partition(b":") for h in lines[1:])
                          if k.lower() == b"content-length")
            return int(lines[0].split()[1]), await asyncio.wait_for(reader.readexactly(length), self.timeout)
        except BaseException:
            writer.close()
            self.streams = None
            raise

    async def aclose(self) -> None:
        if self.streams is not None:
            self.streams[1].close()


async def poll(url: str, mode: str, run_ids: list[int], since: dict[str, int], seconds: float,
               clients: int, interval: float, kind: str = "raw") -> tuple[list[float], int]:
    """`clients` concurrent loops, each requesting `load_path` then waiting `interval` s; ms."""
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def client(i: int) -> None:
        nonlocal errors
        state: dict = dict(since)
        if kind == "httpx":
            http = httpx.AsyncClient(base_url=url, timeout=30)

            async def get(path: str) -> tuple[int, bytes]:
                response = await http.get(path)
                return response.status_code, response.content
        else:
            http = RawClient(url, timeout=30)
            get = http.get
        try:
            while time.perf_counter() < deadline:
                path = load_path(mode, run_ids, i, state)
                start = time.perf_counter()
                try:
                    status, body = await get(path)
                    ok = status == 200
                    if ok and "/metrics" in path:
                        rows = json.loads(body)
                        if rows:
                            state[path.split("/")[2]] = rows[-1]["step"]
                except (OSError, ValueError, asyncio.TimeoutError, asyncio.IncompleteReadError, httpx.HTTPError):
                    ok = False
                latencies.append((time.perf_counter() - start) * 1000)
                errors += not ok
                if interval:
                    await asyncio.sleep(interval)
        finally:
            await http.aclose()

    await asyncio.gather(*(client(i) for i in range(clients)))
    return latencies, errors


def poll_process(*args) -> tuple[list[float], int, float]:
    """`poll` in the client process; also its CPU seconds."""
    cpu = time.process_time()
    latencies, errors = asyncio.run(poll(*args))
    return latencies, errors, time.process_time() - cpu


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


BUCKET = re.compile(r'^falcon_lite_http_request_duration_seconds_bucket\{le="([^"]+)",method="GET",'
                    r'route="(/health|/runs/\{run_id\}/buffer|/runs/\{run_id\}/metrics)",status="200"\} (\S+)$')


def server_buckets(http: httpx.Client) -> dict[float, float]:
    """Cumulative counts of the server's own latency histogram, summed over the polled routes."""
    counts: dict[float, float] = {}
    for line in http.get("/metrics").text.splitlines():
        m = BUCKET.match(line)
        if m:
            le = float(m.group(1))
            counts[le] = counts.get(le, 0.0) + float(m.group(3))
    return counts


def bucket_quantile(before: dict, after: dict, q: float) -> float:
    """Upper bound (ms) of the histogram bucket holding quantile q of the requests in between."""
    delta = sorted((le, after.get(le, 0) - before.get(le, 0)) for le in after)
    total = delta[-1][1] if delta else 0
    for le, n in delta:
        if total and n >= q * total:
            return le * 1000
    return float("nan")


def measure(http, server, run_ids, seconds, clients, pool, mode: str | None, interval: float = 0.0,
            kind: str = "raw") -> dict:
    buckets = server_buckets(http)
    before, t0 = steps_now(http, run_ids), time.perf_counter()
    cpu0 = cpu_seconds(server.proc.pid)
    if mode is None:
        time.sleep(seconds)
        lat, errors, client_cpu = [], 0, 0.0
    else:
        since = {str(r): s for r, s in before.items()}
        lat, errors, client_cpu = pool.submit(
            poll_process, server.url, mode, run_ids, since, seconds, clients, interval, kind).result()
    server_cpu = cpu_seconds(server.proc.pid) - cpu0
    after, t1 = steps_now(http, run_ids), time.perf_counter()
    rate = sum(after[r] - before[r] for r in run_ids) / (t1 - t0)
    out = {"steps_per_s": rate, "requests": len(lat), "errors": errors,
           "server_cpu": server_cpu / (t1 - t0), "client_cpu": client_cpu / (t1 - t0)}
    if lat:
        out.update(p50=float(np.percentile(lat, 50)), p99=float(np.percentile(lat, 99)), rps=len(lat) / seconds)
        after_buckets = server_buckets(http)
        out["server_p50"] = bucket_quantile(buckets, after_buckets, 0.50)
        out["server_p99"] = bucket_quantile(buckets, after_buckets, 0.99)
    return out


def write_section(text: str) -> Path:
    """Replace (or append) the '## API' section of docs/benchmarks.md."""
    path = ROOT / "docs" / "benchmarks.md"
    path.parent.mkdir(exist_ok=True)
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(r"^## API\n.*?(?=^## |\Z)", re.S | re.M)
    text = text.rstrip("\n") + "\n\n"
    new = pattern.sub(lambda _: text, old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + text
    path.write_text(new.rstrip("\n") + "\n")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--interval", type=float, default=0.25,
                        help="pause of each client between requests (a dashboard-like poll); "
                             "the closed-loop phases (no pause) run too")
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw",
                        help="the load generator: a minimal asyncio HTTP/1.1 client (default) or httpx")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args()

    import ray

    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="flr-bench-api-"))
    ray.init(num_cpus=2, namespace="falcon-lite", include_dashboard=False, log_to_driver=False,
             _temp_dir=str(work / "ray"), object_store_memory=200 * 1024 * 1024)
    server = None
    # spawn, not fork: this process is a Ray driver.
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    try:
        server = start_server(f"sqlite:///{work / 'falcon-lite.db'}", work / "data",
                              ray_address=ray.get_runtime_context().gcs_address)
        pool.submit(time.sleep, 0).result()  # the client process is up before the clock starts
        with server.client() as http:
            run_ids = [http.post("/runs", json={**RUN, "name": f"bench-{i}"}).json()["id"] for i in range(2)]
            while min(steps_now(http, run_ids).values()) < 50:  # past start-up
                time.sleep(0.5)

            def phase(mode, pause=0.0):
                return measure(http, server, run_ids, args.seconds, args.clients, pool, mode, pause, args.client)

            poll_tag = f"every {args.interval:g} s"
            phases = {"no load": phase(None)}
            for tag, pause in ((poll_tag, args.interval), ("closed loop", 0.0)):
                phases[f"GET /health, {tag} (baseline)"] = phase("health", pause)
                phases[f"GET buffer + metrics?since_step=, {tag}"] = phase("runs", pause)
            # The no-load rate again at the end: the gap between the two shows the drift that
            # other work on the machine causes, against which the changes above are judged.
            phases["no load (again, at the end)"] = phase(None)
            for run_id in run_ids:
                http.post(f"/runs/{run_id}/stop")
    finally:
        pool.shutdown()
        if server is not None:
            server.stop()
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)

    base = (phases["no load"]["steps_per_s"] + phases["no load (again, at the end)"]["steps_per_s"]) / 2
    load_after = os.getloadavg()[0]
    lines = [
        "## API",
        "",
        f"`bench/api.py --seconds {args.seconds:g} --clients {args.clients} --interval {args.interval:g} --client {args.client}`: 2 runs training on local Ray (seed scenario, 1 simulator each), "
        f"{args.clients} concurrent clients for {args.seconds:g} s per phase, live server on SQLite, "
        f"{os.cpu_count()} CPUs ({platform.machine()}), machine shared with other work "
        f"(1-min load average {load_before:.1f} before, {load_after:.1f} after).",
        "",
        "| phase | requests | req/s | p50 ms | p99 ms | server p50 / p99 ms (<=) | errors | server CPU % | clients CPU % | training steps/s (2 runs) | vs mean no load |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, p in phases.items():
        change = (p["steps_per_s"] / base - 1) * 100 if base else float("nan")
        lines.append(
            f"| {name} | {p['requests']} | {p.get('rps', 0):.0f} | {p.get('p50', float('nan')):.1f} | "
            f"{p.get('p99', float('nan')):.1f} | {p.get('server_p50', float('nan')):g} / "
            f"{p.get('server_p99', float('nan')):g} | {p['errors']} | {100 * p['server_cpu']:.0f} | "
            f"{100 * p['client_cpu']:.0f} | {p['steps_per_s']:.1f} | {change:+.0f}% |"
        )
    load = phases[f"GET buffer + metrics?since_step=, every {args.interval:g} s"]
    lines += [
        "",
        f"Each client waits {args.interval:g} s between requests in the polling phases "
        f"({args.clients / args.interval:.0f} req/s offered at most) and not at all in the closed-loop ones. "
        "p50/p99 are measured by the clients (HTTP round trip); the server's own figures are the upper "
        "bounds of its Prometheus histogram buckets (route handling, without the client's side). "
        "CPU % is CPU time over wall time (100 = one core) of the server process and of the separate "
        f"client process ({args.client}). "
        "The /health rows under the same load show what the load alone costs on this machine; "
        "the difference to the buffer + metrics rows is what those queries cost. "
        f"Targets, judged on the polling load: p99 <= 50 ms ({'met' if load.get('p99', 1e9) <= 50 else 'NOT met'}), zero errors "
        f"({'met' if load['errors'] == 0 else 'NOT met'}), training slowdown <= 20 % "
        f"({'met' if base and load['steps_per_s'] >= 0.8 * base else 'NOT met'}).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        print(f"written to {write_section(text)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
