"""CLI verbs `run` (one run, inline or on Ray) and `stress` (a policy matrix).

Top-level, above the engine and the runtime, since `run --ray` uses both."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from typing import Any

from pydantic import ValidationError

from falcon_lite.client import describe_errors
from falcon_lite.config import RunConfig, with_overrides


def parse_value(text: str):
    """A grid value: JSON where it parses (0.2, true, null, "x"), else the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_grid(items: list[str]) -> dict[str, list]:
    grid: dict[str, list] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise SystemExit(f"--grid takes KEY=V1,V2,... got {item!r}")
        grid[key.strip()] = [parse_value(v.strip()) for v in values.split(",")]
    return grid


def read_json_file(path: str, what: str = "config file") -> tuple[Any, str]:
    """``(data, text)`` of a JSON file; a missing, unreadable or malformed file exits with
    one line that says so (no traceback)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise SystemExit(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise SystemExit(f"{what} {path} is a directory, not a JSON file") from None
    except UnicodeDecodeError:
        raise SystemExit(f"{what} {path} is not a text file (JSON expected)") from None
    except OSError as exc:
        raise SystemExit(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        return json.loads(text), text
    except json.JSONDecodeError as exc:
        raise SystemExit(f"{what} {path} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None


def read_config_dict(path: str) -> dict:
    """A config file's JSON object (not validated: a server validates what it is sent)."""
    data, _ = read_json_file(path)
    if not isinstance(data, dict):
        raise SystemExit(f"config file {path} must hold a JSON object (a RunConfig), not {type(data).__name__}")
    return data


def load_config(path: str | None) -> RunConfig:
    """The RunConfig in a JSON file (the seed's scenario for None); exits with readable lines."""
    if path is None:
        return RunConfig()
    read_config_dict(path)
    try:
        return RunConfig.model_validate_json(Path(path).read_text())
    except ValidationError as exc:
        raise SystemExit(f"invalid config {path}:\n{describe_errors(exc.errors())}") from None


def _summary(config: RunConfig, row: dict | None, status: str, outcome: str | None = None) -> str:
    if outcome is not None:
        status = f"{status} ({outcome})"
    if not row:
        return f"run {config.name!r}: {status}, no diagnostics recorded"

    def value(name: str) -> str:  # a non-finite value comes back from the database as null
        v = row.get(name)
        return "n/a" if v is None else f"{v:.4g}"

    if "std_ratio" in row:  # against the problem's reference posterior
        against = f"std_ratio {value('std_ratio')}, |bias|/sigma {value('abs_bias_over_sigma')}"
    else:  # no reference: the ground-truth-free checks
        against = f"no reference posterior; alarm_ema {value('alarm_ema')}, coverage_68 {value('coverage_68')}"
    text = f"run {config.name!r}: {status} at step {row['step'] + 1}/{config.training.steps}; {against}, loss {value('loss')}"
    if row.get("mean_wait_share") is not None:  # a Ray run
        text += f"; the trainer waited {100 * row['mean_wait_share']:.0f} % of its time for simulations"
    return text


def cmd_run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from falcon_lite.settings import get_settings
    from falcon_lite.store import runs
    from falcon_lite.store.db import make_engine, migrate, session_factory

    from falcon_lite.engine.problem import ConfigError, check_config

    config = load_config(args.config)
    if args.steps is not None:
        config = with_overrides(config, {"training.steps": args.steps})
    try:
        check_config(config)
    except ConfigError as exc:
        raise SystemExit(f"config: {'.'.join(exc.loc)}: {exc}") from None
    url = args.database_url or get_settings().db_url
    migrate(url)
    engine = make_engine(url)
    with session_factory(engine).begin() as session:
        run_id = runs.create_run(session, config).id
    print(f"run {run_id} in {url}")
    if args.ray:
        from falcon_lite.runtime.control import RunControl

        control = RunControl(database_url=url)
        try:
            status, row = control.run_to_end(run_id, progress=not args.quiet)
        finally:
            control.close()
    else:
        from falcon_lite.engine.inline import run_inline

        last: dict = {}
        bar = tqdm(total=config.training.steps, unit="step", disable=args.quiet)

        def on_step(step: int, row: dict | None) -> None:
            bar.update(1)
            if row is not None:
                last.update(row)
                if step % 100 == 0 and "std_ratio" in row:
                    bar.set_postfix(std_ratio=f"{row['std_ratio']:.3g}", bias=f"{row['abs_bias_over_sigma']:.3g}")

        run_inline(engine, run_id, on_step=on_step)
        bar.close()
        status, row = "completed", last
    with session_factory(engine).begin() as session:
        outcome = runs.get_run(session, run_id).outcome
    print(_summary(config, row, status, outcome))
    return 0 if status == "completed" else 1


def cmd_stress(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from falcon_lite.engine.stress import plan, run_stress

    if args.report_only:
        from falcon_lite.engine.stress import rewrite_report

        rewrite_report(Path(args.out))
        print((Path(args.out) / "report.md").read_text())
        return 0
    grid = parse_grid(args.grid or [])
    base = load_config(args.base)
    if args.server:
        from falcon_lite.client import ApiError, Client

        client = Client(args.server)
        try:
            result = client.stress_and_wait(grid=grid, seeds=args.seeds, steps=args.steps, base=base,
                                            out_dir=args.out)
        except ApiError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"stress finished on {args.server}: {len(result['runs'])} runs; report in {args.out}")
        return 0
    try:  # a bad grid is refused before anything runs or prints
        total = len(plan(grid, args.seeds, args.steps, base))
    except KeyError as exc:
        print(f"invalid grid: {exc.args[0]}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        print(f"invalid grid:\n{describe_errors(exc.errors())}", file=sys.stderr)
        return 2
    bar = tqdm(total=total, unit="run", disable=args.quiet)

    def progress(done: int, total: int) -> None:
        bar.update(done - bar.n)

    try:
        document = run_stress(grid, args.seeds, args.steps, Path(args.out), args.workers, base, progress)
    finally:
        bar.close()
    print((Path(args.out) / "report.md").read_text())
    print(f"{len(document['runs'])} runs; results in {args.out}/results.json")
    return 0


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def cmd_problems(args: argparse.Namespace) -> int:
    """The registered problems, as the service's GET /problems lists them (no server needed)."""
    from falcon_lite.engine.problem import catalogue

    found = catalogue()
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    for entry in found:
        if "error" in entry:
            print(f"{entry['name']}: cannot be built with its defaults: {entry['error']}")
            continue
        params = ", ".join(f"{p['name']} ~ {_prior_text(p['prior'])}" for p in entry["parameters"])
        factory = ", ".join(f"{k}={v.get('default', '?')}" for k, v in entry["factory"]["properties"].items())
        print(f"{entry['name']}: {entry['description']}".rstrip(": "))
        print(f"  parameters: {params}")
        print(f"  x: shape {tuple(entry['x_shape'])}; observations: {', '.join(entry['observations']) or 'none'}; "
              f"reference: {', '.join(entry['reference']) or 'none'}")
        print(f"  factory: {factory or '(no parameters)'}")
    return 0


def _prior_text(prior: dict) -> str:
    numbers = ", ".join(f"{v:g}" for k, v in prior.items() if k != "family")
    return f"{prior['family']}({numbers})"


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run one inference problem from a RunConfig JSON file")
    p.add_argument("config", nargs="?", help="RunConfig JSON (default: the seed's scenario)")
    p.add_argument("--ray", action="store_true", help="run on Ray (RAY_ADDRESS or a local instance)")
    p.add_argument("--database-url", help="default: DATABASE_URL or the embedded SQLite file")
    p.add_argument("--steps", type=positive_int, help="training steps (overrides training.steps)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("stress", help="run a grid of config overrides x seeds and report the outcomes")
    p.add_argument("--grid", action="append", metavar="KEY=V1,V2", help="dotted config key and its values")
    p.add_argument("--seeds", type=positive_int, default=5)
    p.add_argument("--steps", type=positive_int, default=10_000)
    p.add_argument("--out", default="stress-out", help="output directory")
    p.add_argument("--workers", type=positive_int, default=1, help="parallel worker processes")
    p.add_argument("--base", help="base RunConfig JSON the grid overrides")
    p.add_argument("--server", help="run the matrix on a falcon-lite server instead (URL)")
    p.add_argument("--report-only", action="store_true",
                   help="recompute the report of an existing --out directory from its recorded series")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_stress)

    p = sub.add_parser("problems", help="list the registered problems (installed plugins) a run may name")
    p.add_argument("--json", action="store_true", help="the listing as JSON (the shape of GET /problems)")
    p.set_defaults(func=cmd_problems)
