"""sbibm 1.1.0's observations and reference posterior samples, read from its wheel.

The wheel ships them as files (sbibm's own dependencies are old and heavy, so it is never
installed): ``pip download sbibm==1.1.0 --no-deps`` into a cache folder, then read as a zip.
For task t and observation k (1..10) the wheel holds

    sbibm/tasks/<t>/files/num_observation_<k>/observation.csv                   header + 1 row  (x_dim,)
    sbibm/tasks/<t>/files/num_observation_<k>/reference_posterior_samples.csv.bz2  header + 10 000 rows (D,)

(comma-separated, a header line of column names). Nothing here is committed: the cache is
``~/.cache/falcon-lite/sbibm`` unless the caller names another folder.
"""

from __future__ import annotations

import bz2
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

VERSION = "1.1.0"
WHEEL = f"sbibm-{VERSION}-py2.py3-none-any.whl"
CACHE = Path.home() / ".cache" / "falcon-lite" / "sbibm"
TASKS = ("two_moons", "slcp", "gaussian_linear")


def member(task: str, observation: int, name: str) -> str:
    """The path of one file of (task, observation) inside the wheel."""
    return f"sbibm/tasks/{task}/files/num_observation_{observation}/{name}"


def wheel(cache: Path = CACHE) -> Path:
    """The sbibm wheel in `cache`, downloaded there (pip, no dependencies) if it is not yet."""
    path = Path(cache) / WHEEL
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", f"sbibm=={VERSION}", "--no-deps",
                        "--only-binary=:all:", "-d", str(path.parent)], check=True)
    return path


def _csv(text: str) -> np.ndarray:
    """Rows (n, k) of a comma-separated text with a header line."""
    return np.loadtxt(io.StringIO(text), delimiter=",", skiprows=1, ndmin=2, dtype=np.float64)


class References:
    """Observations and reference samples from one open sbibm wheel (or a zip of its layout)."""

    def __init__(self, path: Path) -> None:
        self.zip = zipfile.ZipFile(path)

    def observation(self, task: str, k: int) -> np.ndarray:
        """sbibm's observation k of `task`, ``(x_dim,)`` float64."""
        return _csv(self.zip.read(member(task, k, "observation.csv")).decode())[0]

    def samples(self, task: str, k: int) -> np.ndarray:
        """sbibm's reference posterior samples at observation k, ``(10 000, D)`` float64."""
        raw = self.zip.read(member(task, k, "reference_posterior_samples.csv.bz2"))
        return _csv(bz2.decompress(raw).decode())

    def close(self) -> None:
        self.zip.close()
