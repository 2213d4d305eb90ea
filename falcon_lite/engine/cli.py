"""CLI verbs of the engine: `run` and `stress`."""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction) -> None:
    pass
