"""One real local Ray instance per test session, shared by every test that needs it.

Started in the pytest process (`ray.init`), so `ray.shutdown()` at the end takes down
exactly the processes it started; other processes (a live API server) join it through
the GCS address the `ray_address` fixture gives.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest


@pytest.fixture(scope="session")
def ray_address():
    import ray

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ.setdefault("RAY_worker_niceness", "0")  # as connect_ray starts a local Ray
    temp_dir = tempfile.mkdtemp(prefix="flr-ray-", dir="/tmp")
    ray.init(
        num_cpus=2,
        namespace="falcon-lite",
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=temp_dir,
        object_store_memory=200 * 1024 * 1024,
    )
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
