"""The numbers must not move: short inline runs whose every metrics row, buffer count and
final checkpoint were recorded on the code before the store/runtime redesign (issue 15).

A refactor that changes any bit of them fails here. Bits depend on the CPU too (torch's
kernels differ by instruction set: on an AVX2 machine two cases differ from the first
recording in the 8th and 12th digit), so each recording is for one CPU capability
(``torch.backends.cpu.get_cpu_capability()``): ``data/golden_metrics.<capability>.json``,
compared bit for bit where the machine has that capability. Elsewhere the first recording,
``data/golden_metrics.json`` (made on the session-14 machine, its capability not noted), is
compared to a relative 1e-6 and the checkpoint's content not at all. Both were made by the
code before the redesign (6e18932). A change that is *meant* to move the numbers regenerates
this machine's file on purpose, and says why in its commit:

    .venv/bin/python tests/test_golden.py --write

Each case covers a different path of the loop: the seed scenario past its warm-up, a
rolling buffer with a validation set, disfavouring and a prior quota, the adaptive policy,
the calibrated preset on exp_noise with the validation variance, the NLE estimator, and an NLL
loss with importance weights.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent / "data"
GOLDEN = DATA / "golden_metrics.json"  # the first recording (any CPU: compared to RTOL)
RTOL = 1e-6


def recording_for_this_cpu() -> Path:
    """This machine's recording (compared bit for bit), whether it exists yet or not."""
    import torch

    return DATA / f"golden_metrics.{torch.backends.cpu.get_cpu_capability()}.json"

CASES: dict[str, dict] = {
    "seed": {"training": {"steps": 1100, "diagnostics_every": 10}},
    "rolling": {
        "buffer": {"validation_size": 64, "min_training": 256, "max_training": 512, "prior_fraction": 0.2,
                   "simulations_per_step": 64},
        "proposal": {"discard_log_ratio": -2.0},
        "training": {"steps": 300, "warmup_steps": 100, "checkpoint_every": 100, "diagnostics_every": 7},
    },
    "adaptive": {
        "buffer": {"prior_fraction": "adaptive", "adaptive": {"low": 0.1, "high": 0.5}},
        "training": {"steps": 300, "warmup_steps": 100, "diagnostics_every": 5},
    },
    "calibrated_exp_noise": {
        "simulator": {"name": "exp_noise"},
        "estimator": {"preset": "calibrated", "variance_source": "validation"},
        "buffer": {"validation_size": 128, "prior_fraction": 0.2},
        "training": {"steps": 300, "warmup_steps": 100, "diagnostics_every": 5},
    },
    "nle": {"estimator": {"name": "gaussian_nle"}, "training": {"steps": 200, "warmup_steps": 100,
                                                                "diagnostics_every": 5}},
    "nll_iw": {
        "estimator": {"loss": "nll", "importance_weighting": True},
        "buffer": {"prior_fraction": 0.3},
        "training": {"steps": 300, "warmup_steps": 100, "diagnostics_every": 5},
    },
}


def content_digest(blob: bytes) -> str:
    """A hash of what a checkpoint holds (every tensor's dtype, shape and bytes, every other
    value's repr, by key), not of its bytes: torch.save also writes the modules' names."""
    import torch

    digest = hashlib.sha256()

    def walk(value, path: str) -> None:
        if isinstance(value, dict):
            for key in sorted(value, key=str):
                walk(value[key], f"{path}/{key}")
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(item, f"{path}[{i}]")
        elif isinstance(value, torch.Tensor):
            digest.update(f"{path}:{value.dtype}:{tuple(value.shape)}:".encode())
            digest.update(value.detach().contiguous().numpy().tobytes())
        else:
            digest.update(f"{path}={value!r};".encode())

    walk(torch.load(io.BytesIO(blob), weights_only=True), "")
    return digest.hexdigest()


def run_case(overrides: dict, tmp: Path) -> dict:
    """Run one case inline on a fresh SQLite file; its metrics rows, counts and checkpoint hash."""
    from falcon_lite.config import RunConfig
    from falcon_lite.engine.inline import run_inline
    from falcon_lite.store import runs
    from falcon_lite.store.db import make_engine, migrate, session_factory

    url = f"sqlite:///{tmp / 'golden.db'}"
    migrate(url)
    engine = make_engine(url)
    try:
        with session_factory(engine).begin() as session:
            run_id = runs.create_run(session, RunConfig.model_validate(overrides)).id
        run_inline(engine, run_id)
        with session_factory(engine).begin() as session:
            rows = runs.metrics_since(session, run_id, limit=None)
            purged, rejected, _, counts = runs.buffer_counts(session, run_id)
            step, blob = runs.latest_checkpoint(session, run_id)
    finally:
        engine.dispose()
    return {
        "rows": rows,
        "counts": sorted(counts),
        "purged": purged,
        "rejected": rejected,
        "checkpoint": {"step": step, "content_sha256": content_digest(blob)},
    }


@pytest.fixture(scope="module")
def golden() -> tuple[dict, bool]:
    """(the recording to compare with, whether bit for bit)."""
    own = recording_for_this_cpu()
    return (json.loads(own.read_text()), True) if own.exists() else (json.loads(GOLDEN.read_text()), False)


def same(new, old, exact: bool) -> bool:
    if exact or not (isinstance(new, float) and isinstance(old, float)):
        return new == old
    return abs(new - old) <= RTOL * max(abs(old), 1e-12) or (new != new and old != old)


@pytest.mark.parametrize("case", sorted(CASES))
def test_metrics_are_bit_identical_to_the_recorded_ones(case, golden, tmp_path):
    recorded, exact = golden
    got = json.loads(json.dumps(run_case(CASES[case], tmp_path)))  # as stored: JSON floats round-trip
    want = recorded[case]
    assert len(got["rows"]) == len(want["rows"])
    for new, old in zip(got["rows"], want["rows"]):
        keys = sorted(set(new) | set(old))
        assert all(same(new.get(k), old.get(k), exact) for k in keys), f"step {old['step']}: " + ", ".join(
            f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if not same(new.get(k), old.get(k), exact)
        )
    assert (got["counts"], got["purged"], got["rejected"]) == (want["counts"], want["purged"], want["rejected"])
    assert got["checkpoint"]["step"] == want["checkpoint"]["step"]
    if exact:
        assert got["checkpoint"] == want["checkpoint"]


def test_the_tolerance_tells_a_moved_number():
    assert same(1.0 + 1e-9, 1.0, exact=False) and not same(1.0 + 1e-9, 1.0, exact=True)
    assert not same(1.0 + 1e-5, 1.0, exact=False) and not same(3, 4, exact=False)


if __name__ == "__main__":
    import tempfile

    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_golden.py --write   (records the current code's numbers)")
    out = {}
    for name, overrides in CASES.items():
        with tempfile.TemporaryDirectory() as tmp:
            out[name] = json.loads(json.dumps(run_case(overrides, Path(tmp))))
        print(name, len(out[name]["rows"]), "rows", out[name]["checkpoint"])
    recording_for_this_cpu().write_text(json.dumps(out, indent=0, sort_keys=True) + "\n")
