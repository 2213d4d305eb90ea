"""Samples as columns, from the proposal to the trainer, and what a buffer change did.

`Samples` is one set of rows: theta ``(n, d)``, x ``(n, *x_shape)`` (None before they
are simulated), origin ``(n,)`` (`Origin`), log q ``(n,)`` (the log density of the
distribution each row was drawn from), log prior ``(n,)``, the step that drew them (one
step's batch; None for rows of several steps) and their buffer sequence numbers ``(n,)``
once stored. It is validated once, when it is made; `take`, `concat` and `with_x` build
new ones from validated columns without checking them again.

`Delta` is what one change of a run's buffer did: the rows it stored (with their seqs),
the status moves it made (of older rows, and of new rows that left VALIDATION at once),
the rows it rejected and the rows it purged. A reader that holds the buffer's previous
version follows the change from the delta alone.

The sample lifecycle (`Status`) and origins (`Origin`) live in `falcon_lite.core.policy`
and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from falcon_lite.core.policy import Origin, Status

__all__ = ["ORIGIN_NAMES", "Delta", "InvalidSamples", "Origin", "Samples", "Status", "finite_rows"]

ORIGIN_NAMES = {Origin.PRIOR: "prior", Origin.PROPOSAL: "proposal"}
_COLUMNS = ("theta", "x", "origin", "log_q", "log_prior", "seq")


class InvalidSamples(ValueError):
    """Columns that do not make a set of samples: the message names the column, expected vs got."""


class Samples:
    """Rows as columns (see the module doc). ``Samples(theta, x, origin, log_q, log_prior)``."""

    __slots__ = ("theta", "x", "origin", "log_q", "log_prior", "step", "seq")

    theta: np.ndarray
    x: np.ndarray | None
    origin: np.ndarray
    log_q: np.ndarray
    log_prior: np.ndarray
    step: int | None
    seq: np.ndarray | None

    def __init__(self, theta, x, origin, log_q, log_prior, step: int | None = None, seq=None) -> None:
        if not isinstance(theta, np.ndarray) or theta.ndim != 2:
            raise InvalidSamples(f"theta must be a numpy array of shape (n, d), got {_described(theta)}")
        if theta.dtype.kind != "f":
            raise InvalidSamples(f"theta must be a float array, got dtype {theta.dtype}")
        n = len(theta)
        if x is not None:
            x = _rows_of(x, n)
        origin = np.asarray(origin)
        if origin.shape != (n,):
            raise InvalidSamples(f"origin must have shape ({n},), got {origin.shape}")
        if origin.dtype == np.bool_:
            origin = np.where(origin, int(Origin.PRIOR), int(Origin.PROPOSAL)).astype(np.int8)
        elif np.issubdtype(origin.dtype, np.integer):
            if n and (origin.min() < int(Origin.PRIOR) or origin.max() > int(Origin.PROPOSAL)):
                raise InvalidSamples(
                    f"origin values must be Origin.PRIOR (0) or Origin.PROPOSAL (1), got {np.unique(origin)}"
                )
            origin = origin.astype(np.int8, copy=False)
        else:
            raise InvalidSamples(f"origin must be an integer (Origin) or bool (True = prior) array, got dtype {origin.dtype}")
        vectors = []
        for name, value in (("log_q", log_q), ("log_prior", log_prior)):
            value = np.asarray(value)
            if value.shape != (n,):
                raise InvalidSamples(f"{name} must have shape ({n},), got {value.shape}")
            if not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
                raise InvalidSamples(f"{name} must be a float array, got dtype {value.dtype}")
            vectors.append(value.astype(np.float64, copy=False))
        if step is not None and (isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0):
            raise InvalidSamples(f"step must be a non-negative integer, got {step!r}")
        if seq is not None:
            seq = np.asarray(seq)
            if seq.shape != (n,) or not np.issubdtype(seq.dtype, np.integer):
                raise InvalidSamples(f"seq must be an integer array of shape ({n},), got {_described(seq)}")
            seq = seq.astype(np.int64, copy=False)
        self._set(np.ascontiguousarray(theta), x, origin, vectors[0], vectors[1],
                  None if step is None else int(step), seq)

    @classmethod
    def unchecked(cls, theta, x, origin, log_q, log_prior, step, seq) -> Samples:
        """Columns already validated (taken or concatenated from `Samples`): no checks."""
        new = object.__new__(cls)
        new._set(theta, x, origin, log_q, log_prior, step, seq)
        return new

    def _set(self, theta, x, origin, log_q, log_prior, step, seq) -> None:
        for name, value in zip(self.__slots__, (theta, x, origin, log_q, log_prior, step, seq)):
            object.__setattr__(self, name, value)

    def __setattr__(self, name, value) -> None:
        raise AttributeError(f"Samples are immutable: make new ones instead of setting {name!r}")

    def __len__(self) -> int:
        return len(self.theta)

    def __repr__(self) -> str:
        x = None if self.x is None else self.x.shape[1:]
        return f"Samples(n={len(self)}, theta_dim={self.theta_dim}, x_shape={x}, step={self.step})"

    def __reduce__(self):  # pickled for Ray: the columns as they are, no checks on arrival
        return Samples.unchecked, (self.theta, self.x, self.origin, self.log_q, self.log_prior, self.step, self.seq)

    @property
    def theta_dim(self) -> int:
        return self.theta.shape[1]

    @property
    def x_shape(self) -> tuple[int, ...] | None:
        return None if self.x is None else self.x.shape[1:]

    def with_x(self, x) -> Samples:
        """The same rows with their simulated x (n rows, any shape after the first axis)."""
        return Samples.unchecked(self.theta, _rows_of(x, len(self)), self.origin, self.log_q, self.log_prior,
                           self.step, self.seq)

    def with_seq(self, seq: np.ndarray) -> Samples:
        """The same rows with their buffer sequence numbers (int64, one per row)."""
        if seq.shape != (len(self),):
            raise InvalidSamples(f"seq must have shape ({len(self)},), got {seq.shape}")
        return Samples.unchecked(self.theta, self.x, self.origin, self.log_q, self.log_prior, self.step, seq)

    def take(self, index) -> Samples:
        """The rows at `index` (integer positions or a boolean mask), in that order."""
        x = None if self.x is None else self.x[index]
        seq = None if self.seq is None else self.seq[index]
        return Samples.unchecked(self.theta[index], x, self.origin[index], self.log_q[index], self.log_prior[index],
                           self.step, seq)

    def finite(self) -> np.ndarray:
        """The rows a buffer may store: theta and x finite, log q and log prior not NaN."""
        if self.x is None:
            raise InvalidSamples("samples without x cannot be checked for storing: simulate them first")
        return (
            np.isfinite(self.theta).all(axis=1)
            & finite_rows(self.x)
            & ~np.isnan(self.log_q)
            & ~np.isnan(self.log_prior)
        )

    @staticmethod
    def concat(parts: Sequence[Samples]) -> Samples:
        """The rows of `parts` one after the other (their step if they share one, else None)."""
        if not parts:
            raise InvalidSamples("concat needs at least one Samples")
        first = parts[0]
        if len(parts) == 1:
            return first
        if any((p.x is None) != (first.x is None) or p.theta.shape[1:] != first.theta.shape[1:]
               or (p.x is not None and p.x.shape[1:] != first.x.shape[1:]) for p in parts):
            raise InvalidSamples("concat needs samples of one theta dimension and x shape")
        steps = {p.step for p in parts}
        columns = []
        for name in _COLUMNS:
            values = [getattr(p, name) for p in parts]
            columns.append(None if any(v is None for v in values) else np.concatenate(values))
        theta, x, origin, log_q, log_prior, seq = columns
        return Samples.unchecked(theta, x, origin, log_q, log_prior, steps.pop() if len(steps) == 1 else None, seq)


def finite_rows(a: np.ndarray) -> np.ndarray:
    """``(n,)``: whether each row of `a` (n, ...) holds only finite values."""
    return np.isfinite(a.reshape(len(a), int(np.prod(a.shape[1:], dtype=np.int64)))).all(axis=1)


def _rows_of(x, n: int) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.ndim < 2:
        raise InvalidSamples(f"x must be a numpy array of shape (n, *x_shape), got {_described(x)}")
    if len(x) != n:
        raise InvalidSamples(f"x must have {n} rows like theta, got {len(x)}")
    if x.dtype.kind != "f":
        raise InvalidSamples(f"x must be a float array, got dtype {x.dtype}")
    return np.ascontiguousarray(x)


def _described(value) -> str:
    if isinstance(value, np.ndarray):
        return f"shape {value.shape} dtype {value.dtype}"
    return type(value).__name__


@dataclass(frozen=True)
class Delta:
    """What one buffer change did (see the module doc).

    ``rows``: the rows it stored, in input order (rejected rows left out), with their seqs;
    ``moved``/``moved_to``: seqs that changed status and their new status, old rows and
    new rows alike (a new row listed there entered VALIDATION and left it in the same
    change); ``version``: the run's buffer version after the change; ``rejected``: rows not
    stored (non-finite); ``disfavoured``: rows a disfavour marked (the rotation after it may
    have moved some of them on); ``purged``: TOMBSTONE rows deleted.
    """

    version: int
    rows: Samples | None = None
    moved: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64), repr=False)
    moved_to: np.ndarray = field(default_factory=lambda: np.empty(0, np.int8), repr=False)
    rejected: int = 0
    disfavoured: int = 0
    purged: int = 0

    @property
    def stored(self) -> int:
        return 0 if self.rows is None else len(self.rows)

    @property
    def moves(self) -> dict[int, Status]:
        return {int(s): Status(int(t)) for s, t in zip(self.moved, self.moved_to)}
