"""Domain errors of the store; the service layer maps them to HTTP codes in one place.

- `NotFoundError`: a run (or other row) that does not exist -> 404.
- `ConflictError`: an action the current state forbids (a bad status transition,
  deleting a running run) -> 409.
- `SchemaError`: the database schema is missing or at a revision this code does not
  know; the message says to run `falcon-lite migrate` -> 503.
- `InvalidSampleError`: arrays handed to the sample store have the wrong shape, dtype
  or length; nothing is stored -> 422. A `ValueError`, so plain callers may catch that.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every error the store raises on purpose."""


class NotFoundError(StoreError, LookupError):
    pass


class ConflictError(StoreError):
    pass


class SchemaError(StoreError):
    pass


class InvalidSampleError(StoreError, ValueError):
    pass
