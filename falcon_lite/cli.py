"""The `falcon-lite` command: migrate, run, stress, serve, and run control over REST."""

from __future__ import annotations

import argparse
import os
import sys
from importlib.metadata import entry_points


def _migrate(args: argparse.Namespace) -> int:
    from falcon_lite.settings import get_settings
    from falcon_lite.store.db import migrate

    url = args.database_url or get_settings().db_url
    revision = migrate(url)
    print(f"database at revision {revision}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="falcon-lite", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("migrate", help="upgrade the database schema to the newest revision")
    p.add_argument("--database-url", help="default: DATABASE_URL or the embedded SQLite file")
    p.set_defaults(func=_migrate)

    from falcon_lite import commands

    commands.add_commands(sub)
    # Further verbs (serve, runs, ...) come from installed packages through an entry-point
    # group, so that falcon_lite never imports the service layer above it.
    for entry in entry_points(group="falcon_lite.commands"):
        entry.load()(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`falcon-lite runs ls | head`): stop quietly, and keep Python
        # from failing again when it flushes stdout on the way out.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a process ended by SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
