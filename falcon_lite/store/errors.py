"""Domain errors of the store; the service layer maps them to HTTP codes in one place.

- `NotFoundError`: a run (or other row) that does not exist -> 404.
- `ConflictError`: an action the current state forbids (a bad status transition,
  deleting a running run) -> 409.
- `SchemaError`: the database schema is missing or at a revision this code does not
  know; the message says to run `falcon-lite migrate` -> 503.
- `InvalidSampleError`: samples handed to the sample store have the wrong shape or dtype
  for it; nothing is stored. A `falcon_lite.core.samples.InvalidSamples` (a `ValueError`),
  like the errors of columns that make no samples at all.
"""

from __future__ import annotations

from falcon_lite.core.samples import InvalidSamples


class StoreError(Exception):
    """Base class of every error the store raises on purpose."""


class NotFoundError(StoreError, LookupError):
    pass


class ConflictError(StoreError):
    pass


class SchemaError(StoreError):
    pass


class InvalidSampleError(StoreError, InvalidSamples):
    """Samples that do not fit the store (theta dimension, x shape, dtype, no step or x).
    An `InvalidSamples` like the core's own errors for columns that make no samples at all."""
