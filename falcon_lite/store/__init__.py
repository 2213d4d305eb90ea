"""The durable store: SQLAlchemy models, run/metrics/events functions and the sample buffer.

Public API (see each module): `db` (make_engine, migrate, check_schema, session_factory),
`runs` (create_run, get_run, list_runs, set_status, ...), `samples` (SampleStore,
AppendResult, Composition), `mirror` (Mirror, Batch), `errors`.
"""

from falcon_lite.store.db import check_schema, make_engine, migrate, session_factory
from falcon_lite.store.errors import ConflictError, InvalidSampleError, NotFoundError, SchemaError
from falcon_lite.store.mirror import Batch, Mirror
from falcon_lite.store.samples import AppendResult, Composition, SampleStore

__all__ = [
    "AppendResult", "Batch", "Composition", "ConflictError", "InvalidSampleError", "Mirror",
    "NotFoundError", "SampleStore", "SchemaError", "check_schema", "make_engine", "migrate",
    "session_factory",
]
