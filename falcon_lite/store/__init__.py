"""The durable store: SQLAlchemy models, run/metrics/events functions and the sample buffer.

Public API (see each module): `db` (make_engine, migrate, check_schema, session_factory),
`runs` (create_run, get_run, list_runs, set_status, ...), `buffer` (SampleStore),
`composition` (Composition, compose), `mirror` (Mirror), `dialects` (dialect_for: what the
database can do), `errors`.
"""

from falcon_lite.store.buffer import SampleStore
from falcon_lite.store.composition import Composition, compose
from falcon_lite.store.db import check_schema, make_engine, migrate, session_factory
from falcon_lite.store.dialects import dialect_for
from falcon_lite.store.errors import ConflictError, InvalidSampleError, NotFoundError, SchemaError
from falcon_lite.store.mirror import Mirror

__all__ = [
    "Composition", "ConflictError", "InvalidSampleError", "Mirror", "NotFoundError", "SampleStore", "SchemaError",
    "check_schema", "compose", "dialect_for", "make_engine", "migrate", "session_factory",
]
