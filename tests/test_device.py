"""``training.device``: the estimator trains on a GPU where there is one (issue 17, item 9).

Without CUDA (this machine, CI) the GPU run is skipped, and a run that asks for cuda fails
at once with the reason; with CUDA a short run on the GPU gives the CPU run's numbers to
within float64 rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from falcon_lite.config import RunConfig, with_overrides
from falcon_lite.engine.inline import run_inline
from falcon_lite.engine.state import new_state
from falcon_lite.store import runs
from falcon_lite.store.db import make_engine, session_factory

SHORT = {"estimator.hidden": [16, 16], "training.steps": 40, "training.warmup_steps": 10,
         "buffer.simulations_per_step": 32, "buffer.min_training": 32, "buffer.max_training": 32,
         "training.batch_size": 32}
CUDA = torch.cuda.is_available()


@pytest.fixture
def sqlite_url(tmp_path):
    from falcon_lite.store.db import migrate

    url = f"sqlite:///{tmp_path / 'device.db'}"
    migrate(url)
    return url


def run(url: str, **overrides) -> tuple[str, str | None, list[dict]]:
    engine = make_engine(url)
    with session_factory(engine).begin() as s:
        run_id = runs.create_run(s, with_overrides(RunConfig(), {**SHORT, **overrides})).id
    try:
        run_inline(engine, run_id)
    except ValueError:
        pass  # recorded on the run
    with session_factory(engine).begin() as s:
        found = runs.get_run(s, run_id)
        return found.status, found.reason, runs.metrics_since(s, run_id, limit=None)


def test_the_default_device_is_the_cpu():
    assert RunConfig().training.device == "cpu"
    state = new_state(RunConfig())
    assert all(p.device.type == "cpu" for p in state.estimator.parameters())


def test_an_estimator_that_cannot_leave_the_cpu_says_so():
    with pytest.raises(ValueError, match="trains on the CPU only"):
        new_state(with_overrides(RunConfig(), {"estimator.name": "gaussian_nle", "training.device": "cuda"}))


@pytest.mark.skipif(CUDA, reason="this machine has CUDA: the missing-device path cannot be shown")
def test_a_run_that_asks_for_cuda_without_it_fails_with_the_reason(sqlite_url):
    status, reason, rows = run(sqlite_url, **{"training.device": "cuda"})
    assert status == "failed" and "no CUDA device" in reason and rows == []


@pytest.mark.skipif(not CUDA, reason="no CUDA device here")
def test_a_run_on_the_gpu_gives_the_cpu_numbers(sqlite_url):
    _, _, cpu = run(sqlite_url)
    status, reason, gpu = run(sqlite_url, **{"training.device": "cuda"})
    assert status == "completed", reason
    for a, b in zip(cpu, gpu):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-6)
        np.testing.assert_allclose(a["std_ratio"], b["std_ratio"], rtol=1e-4)
