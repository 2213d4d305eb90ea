"""CLI verbs that the service package adds to `falcon-lite`.

- ``serve [--host 127.0.0.1] [--port 8000] [--access-log]``: migrate the database, then serve
  the API and dashboard (SQLite file by default or ``DATABASE_URL``; local Ray or
  ``RAY_ADDRESS``). No line per request unless ``--access-log``: pollers make many, and
  the Prometheus histogram at ``/metrics`` counts them.
- ``runs ls|start|stop|resume|show|delete`` over REST (``--server URL``, default
  http://127.0.0.1:8000; the token comes from ``FALCON_LITE_API_TOKEN``).
- ``remote-stress``: a stress matrix run by a server, its report written locally
  (``falcon-lite stress --server URL`` does the same through `Client.stress_and_wait`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_SERVER = "http://127.0.0.1:8000"


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from falcon_lite.settings import get_settings
    from falcon_lite.store.db import migrate
    from services.api.app import create_app

    settings = get_settings()
    revision = migrate(settings.db_url)
    print(f"database {settings.db_url.split('@')[-1]} at revision {revision}", flush=True)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level,
                access_log=args.access_log)
    return 0


def _client(args: argparse.Namespace):
    from falcon_lite.client import Client

    return Client(args.server)


def _print(data) -> None:
    print(json.dumps(data, indent=2))


def cmd_runs_ls(args: argparse.Namespace) -> int:
    with _client(args) as api:
        page = api.list_runs(offset=args.offset, limit=args.limit)
    print(f"{'id':>5}  {'status':<10} {'step':>7}  {'std_ratio':>10}  {'|bias|/sigma':>12}  name")
    for run in page["data"]:
        diag = run.get("diagnostics") or {}
        ratio, bias = diag.get("std_ratio"), diag.get("abs_bias_over_sigma", diag.get("bias_over_sigma"))
        fmt = lambda v: "-" if v is None else f"{v:.4g}"  # noqa: E731
        print(f"{run['id']:>5}  {run['status']:<10} {run['step']:>7}  {fmt(ratio):>10}  {fmt(bias):>12}  {run['name']}")
    print(f"({len(page['data'])} of {page['count']} runs)")
    return 0


def cmd_runs_start(args: argparse.Namespace) -> int:
    """Create a run from a config file and/or flags, and start it (unless --no-start)."""
    from falcon_lite.commands import read_config_dict

    config = read_config_dict(args.config) if args.config else {}
    if args.name:
        config["name"] = args.name
    if args.prior_fraction is not None:
        config.setdefault("buffer", {})["prior_fraction"] = args.prior_fraction
    if args.steps is not None:
        config.setdefault("training", {})["steps"] = args.steps
    with _client(args) as api:
        _print(api.create_run(config, start=not args.no_start))
    return 0


def _action(name: str):
    def run(args: argparse.Namespace) -> int:
        with _client(args) as api:
            _print(getattr(api, name)(args.run_id))
        return 0

    return run


def cmd_runs_delete(args: argparse.Namespace) -> int:
    with _client(args) as api:
        api.delete(args.run_id)
    print(f"run {args.run_id} deleted")
    return 0


def cmd_runs_show(args: argparse.Namespace) -> int:
    with _client(args) as api:
        _print({**api.get_run(args.run_id), "buffer": api.buffer(args.run_id)})
    return 0


def remote_stress(server: str, grid: dict[str, list], seeds: int, steps: int, out: str | Path,
                  base: dict | None = None, token: str | None = None) -> dict:
    """Run a stress matrix on `server`; write results.json, report.md and plots into `out`."""
    from falcon_lite.client import Client

    with Client(server, token=token) as api:
        return api.stress_and_wait(grid, seeds, steps, base=base, out_dir=out)


def cmd_remote_stress(args: argparse.Namespace) -> int:
    from falcon_lite.commands import parse_grid, read_config_dict

    base = read_config_dict(args.base) if args.base else None
    document = remote_stress(args.server, parse_grid(args.grid or []), args.seeds, args.steps, args.out, base)
    print((Path(args.out) / "report.md").read_text())
    print(f"{len(document['runs'])} runs; results in {args.out}/results.json")
    return 0


def _with_errors(func):
    """Print the server's answer, not a traceback, when a REST call fails."""

    def wrapped(args: argparse.Namespace) -> int:
        import httpx

        from falcon_lite.client import ApiError

        try:
            return func(args)
        except ApiError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except httpx.TransportError as exc:
            print(f"error: cannot reach {args.server}: {exc}", file=sys.stderr)
            return 1

    return wrapped


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Registered through the `falcon_lite.commands` entry point."""
    p = sub.add_parser("serve", help="migrate the database, then serve the API and dashboard")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--access-log", action="store_true", help="log a line per request")
    p.set_defaults(func=cmd_serve)

    server = argparse.ArgumentParser(add_help=False)
    server.add_argument("--server", default=DEFAULT_SERVER, help=f"API URL (default {DEFAULT_SERVER})")

    runs = sub.add_parser("runs", help="list and control runs on a server (REST)")
    verbs = runs.add_subparsers(dest="runs_command", required=True)
    p = verbs.add_parser("ls", parents=[server], help="list runs")
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=_with_errors(cmd_runs_ls))
    p = verbs.add_parser("start", parents=[server], help="create a run and start it")
    p.add_argument("config", nargs="?", help="RunConfig JSON file (default: the seed's scenario)")
    p.add_argument("--name")
    p.add_argument("--prior-fraction", type=float)
    p.add_argument("--steps", type=int)
    p.add_argument("--no-start", action="store_true", help="only create the run (pending)")
    p.set_defaults(func=_with_errors(cmd_runs_start))
    for verb in ("stop", "resume"):
        p = verbs.add_parser(verb, parents=[server], help=f"{verb} a run (idempotent)")
        p.add_argument("run_id", type=int)
        p.set_defaults(func=_with_errors(_action(verb)))
    p = verbs.add_parser("show", parents=[server], help="a run's status, diagnostics and buffer")
    p.add_argument("run_id", type=int)
    p.set_defaults(func=_with_errors(cmd_runs_show))
    p = verbs.add_parser("delete", parents=[server], help="delete a run that is not running, with its samples")
    p.add_argument("run_id", type=int)
    p.set_defaults(func=_with_errors(cmd_runs_delete))

    p = sub.add_parser("remote-stress", parents=[server], help="run a stress matrix on a server")
    p.add_argument("--grid", action="append", metavar="KEY=V1,V2", help="dotted config key and its values")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--steps", type=int, default=10_000)
    p.add_argument("--out", default="stress-out", help="output directory")
    p.add_argument("--base", help="base RunConfig JSON the grid overrides")
    p.set_defaults(func=_with_errors(cmd_remote_stress))
