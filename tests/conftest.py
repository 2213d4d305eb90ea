"""Shared fixtures live in plugin modules, one per owner, registered here."""

import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")

pytest_plugins = ["tests.plugins.db", "tests.plugins.ray"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The docker compose end-to-end test runs last: the quick tests report first, and .ci/run
    builds the compose images in the background meanwhile, so that its `up --build` finds them
    in the build cache. Otherwise the collection order is kept."""
    items.sort(key=lambda item: item.get_closest_marker("compose") is not None)  # stable sort
