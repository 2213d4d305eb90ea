"""The database schema as SQLAlchemy 2 models; `migrations/` (Alembic) owns the real schema.

Tables:

- ``runs``: one inference problem (ids are never reused: AUTOINCREMENT on SQLite, a
  sequence on PostgreSQL); lifecycle status, config JSON and the buffer's counters
  (``next_seq`` the next sample number, ``version`` bumped by every buffer change,
  ``appended``/``rejected``/``purged`` sample counts).
- ``samples``: one row per stored sample, primary key ``(run_id, seq)``. ``status`` and
  ``origin`` are the integers of `falcon_lite.core.policy.Status` / `Origin`; ``version``
  is the run version of the row's last change, so readers load deltas with
  ``version > v``. A partial index covers the live window (``status < TOMBSTONE``).
- ``status_counts``: ``(run_id, status, origin) -> n``, kept in the same transaction as
  every sample change, so the buffer's composition never scans ``samples``.
- ``readers``: in-memory mirrors of a run's buffer and the version each has seen; purge
  deletes only TOMBSTONE rows every reader has already seen.
- ``metrics`` (one row per recorded step, values as JSON), ``events`` (status changes and
  other notices, id ordered) and ``checkpoints`` (estimator state blobs).
- ``deployment``: one row naming this database's deployment (a random id made by the
  migration), which scopes the names of its runs' Ray actors on a shared cluster.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# The ``status < TOMBSTONE`` predicate of the live-window index (TOMBSTONE = 3).
LIVE_PREDICATE = "status < 3"


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """A timezone-aware timestamp on every backend (SQLite keeps no zone: we add UTC back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime: store timezone-aware timestamps only")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _fk_run() -> ForeignKey:
    return ForeignKey("runs.id", ondelete="CASCADE")


class Run(Base):
    __tablename__ = "runs"
    # SQLite: never hand out a deleted run's id again (PostgreSQL's sequence never does).
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    outcome: Mapped[str | None] = mapped_column(String(32), default=None)  # the verdict of a run that ended
    step: Mapped[int] = mapped_column(Integer, default=0)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    created: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    next_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    version: Mapped[int] = mapped_column(BigInteger, default=0)
    appended: Mapped[int] = mapped_column(BigInteger, default=0)
    rejected: Mapped[int] = mapped_column(BigInteger, default=0)
    purged: Mapped[int] = mapped_column(BigInteger, default=0)

    def __repr__(self) -> str:
        return f"Run(id={self.id}, name={self.name!r}, status={self.status!r}, step={self.step})"


class Sample(Base):
    __tablename__ = "samples"
    __table_args__ = (
        Index(
            "ix_samples_live",
            "run_id",
            "seq",
            "status",
            "origin",
            postgresql_where=text(LIVE_PREDICATE),
            sqlite_where=text(LIVE_PREDICATE),
        ),
        Index("ix_samples_run_version", "run_id", "version"),
    )

    run_id: Mapped[int] = mapped_column(_fk_run(), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    status: Mapped[int] = mapped_column(SmallInteger)
    origin: Mapped[int] = mapped_column(SmallInteger)
    step: Mapped[int] = mapped_column(Integer)
    theta: Mapped[bytes] = mapped_column(LargeBinary)
    x: Mapped[bytes] = mapped_column(LargeBinary)
    log_q: Mapped[float] = mapped_column(Float)
    log_prior: Mapped[float] = mapped_column(Float)
    version: Mapped[int] = mapped_column(BigInteger)


class StatusCount(Base):
    __tablename__ = "status_counts"

    run_id: Mapped[int] = mapped_column(_fk_run(), primary_key=True)
    status: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    origin: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    n: Mapped[int] = mapped_column(BigInteger, default=0)


class Reader(Base):
    __tablename__ = "readers"

    run_id: Mapped[int] = mapped_column(_fk_run(), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)
    heartbeat: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Metric(Base):
    __tablename__ = "metrics"

    run_id: Mapped[int] = mapped_column(_fk_run(), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    values: Mapped[dict[str, Any]] = mapped_column(JSON)


class Event(Base):
    __tablename__ = "events"
    __table_args__ = (Index("ix_events_run_id_id", "run_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(_fk_run())
    created: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    kind: Mapped[str] = mapped_column(String(64))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)


class Checkpoint(Base):
    __tablename__ = "checkpoints"

    run_id: Mapped[int] = mapped_column(_fk_run(), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    blob: Mapped[bytes] = mapped_column(LargeBinary)
    created: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Deployment(Base):
    __tablename__ = "deployment"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
