"""CLI verbs that the service package adds to `falcon-lite` (serve, runs ...)."""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Registered through the `falcon_lite.commands` entry point."""
