"""Shared fixtures live in plugin modules, one per owner, registered here."""

import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")

pytest_plugins = ["tests.plugins.db", "tests.plugins.ray"]
