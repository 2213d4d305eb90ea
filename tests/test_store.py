"""The store on real SQLite and PostgreSQL: schema, runs/metrics/events/checkpoints,
and the sample buffer's basics (append, rotate, disfavour, purge, composition, mirror)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

import numpy as np
import pytest
from sqlalchemy import insert, select, text
from sqlalchemy.exc import DBAPIError

from falcon_lite.config import RunConfig
from falcon_lite.core.policy import Origin, Sizes
from falcon_lite.core.samples import InvalidSamples, Samples
from falcon_lite.store import runs
from falcon_lite.store.db import MIGRATIONS_DIR, SCHEMA_REVISION, check_schema, make_engine, migrate, session_factory
from falcon_lite.store.errors import ConflictError, NotFoundError, SchemaError
from falcon_lite.store.models import Base, Checkpoint, Event, Metric, Run, Sample, StatusCount
from falcon_lite.store.buffer import SampleStore

PRIOR, PROPOSAL = int(Origin.PRIOR), int(Origin.PROPOSAL)


def append(store, theta, x, origin, step, log_q, log_prior):
    """`store.append` of the samples these columns make (validated as `Samples`)."""
    return store.append(Samples(theta, x, origin, log_q, log_prior, step=step))


def new_run(engine, **buffer) -> int:
    with session_factory(engine).begin() as session:
        return runs.create_run(session, RunConfig(name="t", buffer=buffer or {})).id


def batch(rng, n, dim=1, prior_share=0.5, dtype=np.float64):
    theta = rng.normal(size=(n, dim)).astype(dtype)
    origin = np.where(rng.random(n) < prior_share, PRIOR, PROPOSAL).astype(np.int64)
    return theta, theta + 0.5, origin, rng.normal(size=n), rng.normal(size=n)


def db_rows(engine, run_id):
    with engine.connect() as conn:
        return conn.execute(
            select(Sample.seq, Sample.status, Sample.origin, Sample.version, Sample.theta)
            .where(Sample.run_id == run_id).order_by(Sample.seq)
        ).all()


def run_state(engine, run_id):
    with engine.connect() as conn:  # a plain read: it never waits for a held write lock
        run = conn.execute(select(Run).where(Run.id == run_id)).one()
        return (run.next_seq, run.version, run.appended, run.rejected, run.purged)


# -- schema -------------------------------------------------------------------------------


def test_store_refuses_a_database_without_schema(raw_db_url):
    engine = make_engine(raw_db_url)
    try:
        with pytest.raises(SchemaError, match="falcon-lite migrate") as info:
            check_schema(engine)
        assert "no falcon-lite schema" in str(info.value)
        with pytest.raises(SchemaError, match="falcon-lite migrate"):
            SampleStore(engine, 1, Sizes(), 1)
        assert migrate(raw_db_url) == SCHEMA_REVISION
        check_schema(engine)
    finally:
        engine.dispose()


def test_store_refuses_an_unknown_revision(engine):
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'f00d'"))
    with pytest.raises(SchemaError, match=rf"revision f00d, this falcon-lite needs {SCHEMA_REVISION}: run `falcon-lite migrate`"):
        check_schema(engine)


def test_migrate_works_from_any_directory_and_is_idempotent(db_url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert migrate(db_url) == SCHEMA_REVISION


def test_schema_revision_is_the_scripts_head():
    from alembic.script import ScriptDirectory

    from falcon_lite.store.db import alembic_config

    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert script.get_heads() == [SCHEMA_REVISION]
    assert MIGRATIONS_DIR.is_dir()


def test_models_and_migrations_do_not_drift(engine):
    """The equivalent of `alembic check`: autogenerate finds nothing to change."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        assert compare_metadata(context, Base.metadata) == []


def test_run_ids_never_come_back_after_an_upgrade_from_0001(raw_db_url):
    """A database made at 0001 keeps its runs and their rows through the upgrade, and from
    then on a deleted run's id is never given again (SQLite: AUTOINCREMENT; PostgreSQL: its
    sequence), not even the newest one's. (A run deleted *before* the upgrade left no trace
    on SQLite: the newest such id can come back once.)"""
    assert migrate(raw_db_url, revision="0001") == "0001"
    engine = make_engine(raw_db_url)
    try:
        factory = session_factory(engine)
        # rows as revision 0001 holds them, written without the ORM (whose Run has later columns)
        kept, newest_before = _run_at_0001(engine, "running"), _run_at_0001(engine, "pending")
        with engine.begin() as conn:
            conn.execute(insert(Sample.__table__), [
                {"run_id": kept, "seq": i, "status": 1, "origin": PRIOR, "step": 0, "theta": b"t", "x": b"x",
                 "log_q": 0.0, "log_prior": 0.0, "version": 1} for i in range(8)])
            conn.execute(insert(Metric.__table__), {"run_id": kept, "step": 1, "values": {"loss": 1.0}})
            conn.execute(insert(Checkpoint.__table__), {"run_id": kept, "step": 1, "blob": b"abc",
                                                        "created": datetime.now(timezone.utc)})
            conn.execute(insert(Event.__table__), {"run_id": kept, "kind": "status", "data": {"status": "running"},
                                                   "created": datetime.now(timezone.utc)})
        before = {t: _count(engine, t) for t in ("samples", "status_counts", "metrics", "events", "checkpoints")}
        engine.dispose()

        assert migrate(raw_db_url) == SCHEMA_REVISION
        check_schema(engine)
        with factory.begin() as s:
            run = runs.get_run(s, kept)
            assert (run.name, run.status) == ("t", "running")
            assert runs.latest_checkpoint(s, kept) == (1, b"abc")
        assert {t: _count(engine, t) for t in before} == before
        if engine.dialect.name == "sqlite":
            with engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
                assert conn.exec_driver_sql("PRAGMA foreign_key_check").all() == []

        with factory.begin() as s:
            runs.delete_run(s, newest_before)
        seen = {kept, newest_before}
        for _ in range(3):
            newest = new_run(engine)
            assert newest not in seen and newest > max(seen)
            seen.add(newest)
            with factory.begin() as s:
                runs.delete_run(s, newest)
        with factory.begin() as s:  # the cascade from runs still reaches the rebuilt table's children
            runs.set_status(s, kept, "stopped")
            runs.delete_run(s, kept)
        assert all(_count(engine, t) == 0 for t in before)
        assert new_run(engine) > max(seen)
    finally:
        engine.dispose()


def _run_at_0001(engine, status: str) -> int:
    """A run row and its zeroed counts as revision 0001's schema has them; returns its id."""
    now = datetime.now(timezone.utc)
    with engine.begin() as conn:
        run_id = conn.execute(
            insert(Run.__table__).values(name="t", status=status, step=0, config=RunConfig(name="t").model_dump(mode="json"),
                                         created=now, updated=now, next_seq=0, version=0, appended=0, rejected=0,
                                         purged=0).returning(Run.__table__.c.id)
        ).scalar_one()
        conn.execute(insert(StatusCount.__table__), [{"run_id": run_id, "status": st, "origin": o, "n": 0}
                                                     for st in range(4) for o in range(2)])
    return run_id


def _count(engine, table: str) -> int:
    with engine.connect() as conn:
        return conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()


def test_sqlite_engine_settings(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'a' / 'b' / 'x.db'}")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() > 0
        assert (tmp_path / "a" / "b").is_dir()
    finally:
        engine.dispose()


def test_make_engine_rejects_other_databases():
    with pytest.raises(ValueError, match="unsupported database URL"):
        make_engine("mysql://u@h/db")
    with pytest.raises(ValueError, match="psycopg 3"):
        make_engine("postgresql+psycopg2://u@h/db")


# -- runs, metrics, events, checkpoints ---------------------------------------------------


def test_run_lifecycle_and_listing(engine):
    factory = session_factory(engine)
    with factory.begin() as s:
        ids = [runs.create_run(s, RunConfig(name=f"r{i}")).id for i in range(3)]
    with factory.begin() as s:
        page, total = runs.list_runs(s, offset=1, limit=1)
        assert total == 3 and [r.id for r in page] == [ids[1]]
        run = runs.get_run(s, ids[0])
        assert run.status == "pending" and run.config["name"] == "r0" and run.created.tzinfo is not None
        runs.set_status(s, ids[0], "running")
        runs.set_status(s, ids[0], "running")  # same status: no-op
        runs.set_status(s, ids[0], "stopping")
        runs.set_status(s, ids[0], "stopped", reason="user")
        runs.set_status(s, ids[0], "running")  # resume
        runs.set_status(s, ids[0], "completed")
        with pytest.raises(ConflictError, match="completed: it cannot become running"):
            runs.set_status(s, ids[0], "running")
        with pytest.raises(ConflictError, match="pending: it cannot become stopped"):
            runs.set_status(s, ids[1], "stopped")
        with pytest.raises(ValueError, match="unknown run status 'paused'"):
            runs.set_status(s, ids[1], "paused")
        runs.set_step(s, ids[0], 17)
    with factory.begin() as s:
        run = runs.get_run(s, ids[0])
        assert (run.status, run.step, run.reason) == ("completed", 17, None)
        kinds = [(e.kind, e.data["status"]) for e in runs.events_since(s, ids[0])]
        assert kinds == [("status", st) for st in ("running", "stopping", "stopped", "running", "completed")]
        last = runs.events_since(s, ids[0])[-2].id
        assert [e.data["status"] for e in runs.events_since(s, ids[0], after_id=last)] == ["completed"]
    with factory.begin() as s, pytest.raises(NotFoundError, match="run 424242 not found"):
        runs.get_run(s, 424242)


def test_delete_run_needs_a_stopped_run_and_removes_everything(engine):
    run_id = new_run(engine, validation_size=2, min_training=4, max_training=4)
    store = SampleStore(engine, run_id, Sizes(2, 4, 4, 0.0), 1)
    append(store, *batch(np.random.default_rng(0), 8)[:3], 0, *batch(np.random.default_rng(0), 8)[3:])
    mirror = store.mirror("trainer")
    factory = session_factory(engine)
    with factory.begin() as s:
        runs.add_metrics(s, run_id, [{"step": 1, "loss": 1.0}])
        runs.save_checkpoint(s, run_id, 1, b"abc")
        runs.set_status(s, run_id, "running")
    with factory.begin() as s, pytest.raises(ConflictError, match="stop it before deleting"):
        runs.delete_run(s, run_id)
    with factory.begin() as s:
        runs.set_status(s, run_id, "stopped")
        runs.delete_run(s, run_id)
    with factory.begin() as s:
        with pytest.raises(NotFoundError):
            runs.get_run(s, run_id)
        for table in ("samples", "status_counts", "readers", "metrics", "events", "checkpoints"):
            assert s.execute(text(f"SELECT count(*) FROM {table} WHERE run_id = :r"), {"r": run_id}).scalar() == 0
    with pytest.raises(NotFoundError):
        mirror.sync()


def test_metrics_roundtrip_non_finite_and_replace(engine):
    run_id = new_run(engine)
    factory = session_factory(engine)
    with factory.begin() as s:
        n = runs.add_metrics(s, run_id, [
            {"step": 1, "loss": 0.5, "std_ratio": 1.0, "bias_over_sigma": 0.1},
            {"step": 2, "loss": float("nan"), "std_ratio": float("inf"), "bias_over_sigma": -2},
            {"step": 3, "loss": 0.25, "std_ratio": 0.9, "bias_over_sigma": 0.0},
        ])
        assert n == 3
        runs.add_metrics(s, run_id, [{"step": 3, "loss": 0.125}])  # a step recorded again replaces
        with pytest.raises(ValueError, match="metric 'loss' at step 4 must be a number"):
            runs.add_metrics(s, run_id, [{"step": 4, "loss": "high"}])
        with pytest.raises(ValueError, match="without a 'step'"):
            runs.add_metrics(s, run_id, [{"loss": 1.0}])
        with pytest.raises(NotFoundError):
            runs.add_metrics(s, 999_999, [{"step": 1, "loss": 1.0}])
    with factory.begin() as s:
        rows = runs.metrics_since(s, run_id)
        assert rows == [
            {"step": 1, "loss": 0.5, "std_ratio": 1.0, "bias_over_sigma": 0.1},
            {"step": 2, "loss": None, "std_ratio": None, "bias_over_sigma": -2.0},
            {"step": 3, "loss": 0.125},
        ]
        assert runs.metrics_since(s, run_id, since_step=1, names=["loss"]) == [
            {"step": 2, "loss": None}, {"step": 3, "loss": 0.125}
        ]
        assert runs.metrics_since(s, run_id, limit=1) == rows[:1]
        # the newest row and a mean computed by the database (nulls and absent keys left out)
        assert runs.run_summary(s, run_id, mean_of="std_ratio") == ({"step": 3, "loss": 0.125}, 1.0)
        assert runs.run_summary(s, run_id, mean_of="bias_over_sigma")[1] == pytest.approx(-0.95)
        assert runs.run_summary(s, run_id, mean_of="absent")[1] is None
    empty = new_run(engine)
    with factory.begin() as s:
        assert runs.run_summary(s, empty, mean_of="loss") == (None, None)


def test_checkpoints_keep_the_newest(engine):
    run_id = new_run(engine)
    factory = session_factory(engine)
    with factory.begin() as s:
        assert runs.latest_checkpoint(s, run_id) is None
        for step in (10, 20, 30, 40, 50):
            runs.save_checkpoint(s, run_id, step, bytes([step]) * 100)
        runs.save_checkpoint(s, run_id, 50, b"again")
    with factory.begin() as s:
        assert runs.latest_checkpoint(s, run_id) == (50, b"again")
        kept = s.execute(text("SELECT step FROM checkpoints WHERE run_id = :r ORDER BY step"), {"r": run_id})
        assert [r[0] for r in kept] == [30, 40, 50]
        with pytest.raises(TypeError, match="must be bytes"):
            runs.save_checkpoint(s, run_id, 60, "text")


# -- the sample buffer --------------------------------------------------------------------


def test_append_rotates_and_counts(engine):
    run_id = new_run(engine)
    store = SampleStore(engine, run_id, Sizes(validation_size=4, min_training=6, max_training=8), 2)
    rng = np.random.default_rng(1)
    results = [append(store, *batch(rng, 5, dim=2)[:3], step, *batch(rng, 5, dim=2)[3:]) for step in range(4)]
    assert [int(r.rows.seq[0]) for r in results] == [0, 5, 10, 15]
    assert [r.version for r in results] == [1, 2, 3, 4]
    assert all(r.stored == 5 and r.rejected == 0 for r in results)
    comp = store.composition()
    n = {k: sum(v.values()) for k, v in comp.counts.items()}
    assert n == {"VALIDATION": 4, "TRAINING": 8, "DISFAVOURED": 0, "TOMBSTONE": 8}
    assert comp.total == 20 and comp.purged == 0 and comp.rejected == 0
    rows = db_rows(engine, run_id)
    assert [r.status for r in rows] == [3] * 8 + [1] * 8 + [0] * 4  # oldest evicted, newest validate
    assert set(comp.counts) == {"VALIDATION", "TRAINING", "DISFAVOURED", "TOMBSTONE"}
    assert all(set(v) == {"prior", "proposal"} for v in comp.counts.values())
    prior_pool = comp.counts["TRAINING"]["prior"]
    assert comp.prior_share_trainable == pytest.approx(prior_pool / 8)
    theta = np.frombuffer(rows[-1].theta, np.float64)
    assert theta.shape == (2,)


def test_rotate_after_sizes_change_and_disfavour(engine):
    run_id = new_run(engine)
    store = SampleStore(engine, run_id, Sizes(0, 10, 10, 0.0), 1)
    rng = np.random.default_rng(2)
    theta, x, origin, lq, lp = batch(rng, 10, prior_share=0.0)
    append(store, theta, x, origin, 0, lq, lp)
    assert store.disfavour([0, 1, 2, 999]).disfavoured == 3  # 999 does not exist: ignored
    assert store.disfavour([0]).disfavoured == 0  # already DISFAVOURED: ignored
    assert [r.status for r in db_rows(engine, run_id)] == [2, 2, 2] + [1] * 7
    store.sizes = Sizes(0, 8, 10, 0.0)
    assert store.rotate() == 2  # DISFAVOURED beyond min_training go, oldest first
    assert [r.status for r in db_rows(engine, run_id)] == [3, 3, 2] + [1] * 7
    store.sizes = Sizes(0, 7, 10, 0.0)
    assert store.rotate() == 1
    assert [r.status for r in db_rows(engine, run_id)] == [3, 3, 3] + [1] * 7
    comp = store.composition()
    assert comp.counts["DISFAVOURED"] == {"prior": 0, "proposal": 0}
    assert comp.counts["TOMBSTONE"]["proposal"] == 3 and comp.total == 10


def test_quota_keeps_prior_samples_on_eviction(engine):
    run_id = new_run(engine)
    store = SampleStore(engine, run_id, Sizes(0, 10, 10, 0.3), 1)
    rng = np.random.default_rng(3)
    theta, x, _, lq, lp = batch(rng, 10)
    append(store, theta, x, np.array([PRIOR] * 3 + [PROPOSAL] * 7), 0, lq, lp)
    for step in range(1, 5):
        theta, x, _, lq, lp = batch(rng, 10)
        append(store, theta, x, np.full(10, PROPOSAL), step, lq, lp)
    comp = store.composition()
    assert comp.counts["TRAINING"] == {"prior": 3, "proposal": 7}
    assert comp.prior_share_trainable == pytest.approx(0.3)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.update(theta=a["theta"][:, None, :]), r"theta must be a numpy array of shape \(n, d\), got shape \(4, 1, 1\)"),
        (lambda a: a.update(theta=np.zeros((4, 2))), r"theta must have shape \(n, 1\), got \(4, 2\)"),
        (lambda a: a.update(x=a["x"].astype(np.float32)), "x must have dtype float64, got float32"),
        (lambda a: a.update(x=a["x"][:3]), "x must have 4 rows like theta, got 3"),
        (lambda a: a.update(origin=a["origin"][:2]), r"origin must have shape \(4,\), got \(2,\)"),
        (lambda a: a.update(origin=np.array([0, 1, 2, 0])), "origin values must be"),
        (lambda a: a.update(origin=np.zeros(4)), "origin must be an integer"),
        (lambda a: a.update(log_q=np.zeros(5)), r"log_q must have shape \(4,\), got \(5,\)"),
        (lambda a: a.update(log_prior=np.array(["a"] * 4)), "log_prior must be a float array"),
        (lambda a: a.update(theta=[[0.0]] * 4), "theta must be a numpy array"),
        (lambda a: a.update(step=-1), "step must be a non-negative integer"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(engine, change, message):
    run_id = new_run(engine)
    store = SampleStore(engine, run_id, Sizes(2, 2, 3, 0.5), 1)
    rng = np.random.default_rng(4)
    good = dict(zip(("theta", "x", "origin", "log_q", "log_prior"), batch(rng, 4)))
    append(store, good["theta"], good["x"], good["origin"], 0, good["log_q"], good["log_prior"])
    before = (db_rows(engine, run_id), run_state(engine, run_id), store.composition())
    args = dict(good, step=1)
    change(args)
    with pytest.raises(InvalidSamples, match=message):
        append(store, args["theta"], args["x"], args["origin"], args["step"], args["log_q"], args["log_prior"])
    assert (db_rows(engine, run_id), run_state(engine, run_id), store.composition()) == before


def test_non_finite_rows_are_rejected_and_counted(engine):
    run_id = new_run(engine)
    store = SampleStore(engine, run_id, Sizes(10, 0, 10, 0.0), 1)
    theta = np.array([[0.0], [np.nan], [1.0], [np.inf], [2.0], [3.0]])
    x = theta.copy()
    x[5, 0] = -np.inf
    log_q = np.array([0.0, 0.0, np.nan, 0.0, -np.inf, 0.0])  # NaN rejected; -inf is a valid log density
    result = append(store, theta, x, np.ones(6, bool), 0, log_q, np.zeros(6))
    assert (result.stored, result.rejected, int(result.rows.seq[0])) == (2, 4, 0)
    rows = db_rows(engine, run_id)
    assert [np.frombuffer(r.theta)[0] for r in rows] == [0.0, 2.0]
    assert [r.origin for r in rows] == [PRIOR, PRIOR]  # bool origin: True = prior
    comp = store.composition()
    assert comp.rejected == 4 and comp.total == 2
    assert run_state(engine, run_id)[:4] == (2, 1, 2, 4)


def test_unknown_run_and_bad_sizes(engine):
    with pytest.raises(NotFoundError, match="run 98765 not found"):
        SampleStore(engine, 98765, Sizes(), 1)
    with pytest.raises(ValueError, match="validation_size"):
        Sizes(validation_size=-1)
    with pytest.raises(ValueError, match="prior_fraction"):
        Sizes(prior_fraction=1.2)
    run_id = new_run(engine)
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        SampleStore(engine, run_id, Sizes(), 0)
    with pytest.raises(TypeError, match="sizes must be"):
        SampleStore(engine, run_id, {"max_training": 4}, 1)
    store = SampleStore(engine, run_id, Sizes(), 1)
    with session_factory(engine).begin() as s:
        runs.delete_run(s, run_id)
    with pytest.raises(NotFoundError):
        append(store, np.zeros((1, 1)), np.zeros((1, 1)), np.zeros(1, int), 0, np.zeros(1), np.zeros(1))


def test_purge_respects_readers(engine):
    run_id = new_run(engine)
    store = SampleStore(engine, run_id, Sizes(0, 2, 2, 0.0), 1)
    rng = np.random.default_rng(5)

    def add(step):
        return append(store, *batch(rng, 2)[:3], step, *batch(rng, 2)[3:])

    add(0)
    slow = store.mirror("slow", heartbeat_s=0)  # at version 1; every sync records its version
    add(1)  # rows 0, 1 -> TOMBSTONE at version 2
    fast = store.mirror("fast", heartbeat_s=0)
    assert store.purge().purged == 0  # "slow" has not seen version 2
    slow.sync()
    assert store.purge().purged == 2
    add(2)
    slow.heartbeat()
    assert store.purge().purged == 0  # fast is at version 2, the new tombstones are version 3
    fast.close()
    slow.sync()
    assert store.purge().purged == 2
    comp = store.composition()
    assert comp.purged == 4 and comp.total == 6
    assert sum(comp.counts["TOMBSTONE"].values()) == 0
    # a reader silent for too long is dropped; it reloads in full at its next sync
    add(3)
    assert store.purge(reader_timeout_s=0).purged == 2
    slow.sync()
    assert list(slow.seq) == [6, 7] and list(slow.status) == [1, 1]


def reader_versions(engine, run_id):
    with engine.connect() as conn:
        return dict(conn.execute(text("SELECT name, version FROM readers WHERE run_id = :r"), {"r": run_id}).all())


def test_sync_records_the_reader_version_at_most_every_heartbeat(engine):
    run_id = new_run(engine)
    store = SampleStore(engine, run_id, Sizes(0, 2, 2, 0.0), 1)
    rng = np.random.default_rng(7)
    append(store, *batch(rng, 2)[:3], 0, *batch(rng, 2)[3:])
    lazy = store.mirror("lazy", heartbeat_s=3600)
    assert reader_versions(engine, run_id) == {"lazy": 1}
    append(store, *batch(rng, 2)[:3], 1, *batch(rng, 2)[3:])
    assert lazy.sync() == 4 and lazy.version == 2
    assert reader_versions(engine, run_id) == {"lazy": 1}  # read-only sync
    other = SampleStore(engine, run_id, Sizes(0, 2, 2, 0.0), 1)  # e.g. another process
    assert other.purge().purged == 0  # the recorded version protects the tombstones it may not have seen
    lazy.heartbeat()
    assert reader_versions(engine, run_id) == {"lazy": 2}
    assert other.purge().purged == 2


def test_purge_frees_what_a_mirror_in_this_process_has_applied(engine):
    run_id = new_run(engine)
    store = SampleStore(engine, run_id, Sizes(0, 2, 2, 0.0), 1)
    rng = np.random.default_rng(8)
    trainer = store.mirror("trainer", heartbeat_s=3600)
    for step in range(3):
        arrays = batch(rng, 2)
        trainer.apply(append(store, *arrays[:3], step, *arrays[3:]))
    assert reader_versions(engine, run_id) == {"trainer": 0}
    other = SampleStore(engine, run_id, Sizes(0, 2, 2, 0.0), 1)
    assert other.purge().purged == 0  # another store object does not know the mirror
    assert store.purge().purged == 4  # the mirror's version is recorded first
    assert reader_versions(engine, run_id) == {"trainer": 3}
    trainer.sync()
    assert list(trainer.seq) == [4, 5]


def test_mirror_follows_appends_and_draws_with_the_quota(engine):
    run_id = new_run(engine)
    sizes = Sizes(validation_size=8, min_training=32, max_training=40, prior_fraction=0.25)
    store = SampleStore(engine, run_id, sizes, 2, dtype="float32")
    rng = np.random.default_rng(6)
    applied = store.mirror("applied")
    synced = store.mirror("synced")
    for step in range(12):
        arrays = batch(rng, 10, dim=2, prior_share=0.1 if step else 0.5, dtype=np.float32)
        arrays[0][0, 0] = np.nan if step == 3 else arrays[0][0, 0]
        result = append(store, arrays[0], arrays[1], arrays[2], step, arrays[3], arrays[4])
        applied.apply(result)
        if step % 3 == 0:
            store.disfavour(applied.seq[applied.status == 1][:2])
        synced.sync()
    applied.sync()
    fresh = store.mirror("fresh")
    rows = [r for r in db_rows(engine, run_id) if r.status < 3]
    for m in (applied, synced, fresh):
        assert list(m.seq) == [r.seq for r in rows]
        assert list(m.status) == [r.status for r in rows]
        assert m.theta.dtype == np.float32 and m.theta.flags.c_contiguous
        assert np.array_equal(m.theta, np.stack([np.frombuffer(r.theta, np.float32) for r in rows]))
    assert applied.version == synced.version == fresh.version == run_state(engine, run_id)[1]
    assert applied.trainable_size == 40
    val = applied.validation()
    assert len(val) == 8 and list(val.seq) == sorted(val.seq)
    n_prior = int((applied.origin[applied.status >= 1] == PRIOR).sum())
    for _ in range(50):
        b = applied.draw(16, rng, 0.25)
        assert len(b) == 16 and len(set(b.seq.tolist())) == 16
        assert (b.origin == PRIOR).sum() >= min(4, n_prior)
        assert set(b.seq.tolist()) <= set(applied.seq[applied.status >= 1].tolist())
        assert np.array_equal(b.theta, applied.theta[np.searchsorted(applied.seq, b.seq)])
    whole = applied.draw(100, rng, 0.25)
    assert sorted(whole.seq.tolist()) == sorted(applied.seq[applied.status >= 1].tolist())
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        applied.draw(0, rng, 0.25)
    with pytest.raises(ValueError, match=r"prior_fraction must be a number in \[0, 1\], got 1.5"):
        applied.draw(16, rng, 1.5)
    fresh.close()
    with pytest.raises(RuntimeError, match="closed"):
        fresh.sync()


def test_two_store_objects_on_one_run_agree_with_one(engine):
    """A store reuses its cached live window only if it made the run's previous change."""
    sizes = Sizes(3, 4, 6, 0.25)
    single, shared = new_run(engine), new_run(engine)
    one = SampleStore(engine, single, sizes, 1)
    a, b = SampleStore(engine, shared, sizes, 1), SampleStore(engine, shared, sizes, 1)
    rng = np.random.default_rng(9)
    for step, writer in enumerate([a, b, a, a, b, b, a, b]):
        arrays = batch(rng, 3)
        append(one, *arrays[:3], step, *arrays[3:])
        append(writer, *arrays[:3], step, *arrays[3:])
        if step == 4:
            one.disfavour([4, 5, 6, 7])
            a.disfavour([4, 5, 6, 7])
    assert [(r.seq, r.status, r.origin) for r in db_rows(engine, single)] == [
        (r.seq, r.status, r.origin) for r in db_rows(engine, shared)
    ]


def test_concurrent_writers_serialize(engine):
    run_id = new_run(engine)
    sizes = Sizes(4, 8, 16, 0.2)
    errors = []

    def worker(seed):
        try:
            store = SampleStore(engine, run_id, sizes, 1)
            rng = np.random.default_rng(seed)
            for step in range(15):
                append(store, *batch(rng, 7)[:3], step, *batch(rng, 7)[3:])
                if step % 5 == 4:
                    store.purge()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    comp = SampleStore(engine, run_id, sizes, 1).composition()
    assert comp.total == 3 * 15 * 7
    rows = db_rows(engine, run_id)
    assert [r.seq for r in rows] == sorted({r.seq for r in rows})
    assert sum(r.status == 0 for r in rows) == 4 and sum(r.status in (1, 2) for r in rows) == 16
    assert run_state(engine, run_id)[1] == 45


def test_mirror_sync_sees_whole_changes_while_a_writer_appends(engine):
    """Each sync reads one consistent state: never new rows without the promotions and
    evictions of the same append (which would break the sizes in the mirror)."""
    run_id = new_run(engine)
    sizes = Sizes(validation_size=5, min_training=10, max_training=10, prior_fraction=0.3)
    writer_store = SampleStore(engine, run_id, sizes, 1)
    reader_store = SampleStore(engine, run_id, sizes, 1)
    mirror = reader_store.mirror("reader", heartbeat_s=0.05)
    done = threading.Event()
    errors = []

    def write():
        try:
            rng = np.random.default_rng(10)
            for step in range(40):
                append(writer_store, *batch(rng, 5)[:3], step, *batch(rng, 5)[3:])
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=write)
    thread.start()
    seen = 0
    while not done.is_set() or seen == 0:
        mirror.sync()
        seen += 1
        assert int((mirror.status == 0).sum()) <= 5
        assert mirror.trainable_size <= 10
        if mirror.version > 2:
            assert int((mirror.status == 0).sum()) == 5 and mirror.trainable_size == 10
    thread.join()
    assert errors == []
    mirror.sync()
    rows = [r for r in db_rows(engine, run_id) if r.status < 3]
    assert list(mirror.seq) == [r.seq for r in rows] and list(mirror.status) == [r.status for r in rows]



# -- group commit -------------------------------------------------------------------------


def stored_steps(engine, run_id) -> list[int]:
    with engine.connect() as conn:
        return sorted({r[0] for r in conn.execute(select(Sample.step).where(Sample.run_id == run_id))})


def check_conserved(engine, run_id, store) -> None:
    """status_counts equal the stored rows, and counts + purged equal everything appended."""
    rows = db_rows(engine, run_id)
    comp = SampleStore(engine, run_id, store.sizes, store.dim).composition()
    by_status = {name: sum(c.values()) for name, c in comp.counts.items()}
    for status, name in enumerate(("VALIDATION", "TRAINING", "DISFAVOURED", "TOMBSTONE")):
        assert by_status[name] == sum(r.status == status for r in rows), name
    assert comp.total == run_state(engine, run_id)[2] == len(rows) + comp.purged


def test_group_commit_holds_changes_until_commit(engine):
    run_id = new_run(engine)
    sizes = Sizes(2, 4, 4, 0.0)
    store = SampleStore(engine, run_id, sizes, 1, group_commit_s=3600)
    mirror = store.mirror("trainer", heartbeat_s=3600)
    rng = np.random.default_rng(11)
    for step in range(3):
        arrays = batch(rng, 3)
        mirror.apply(append(store, *arrays[:3], step, *arrays[3:]))
    assert db_rows(engine, run_id) == [] and run_state(engine, run_id)[1] == 0  # nothing committed yet
    assert mirror.version == 3 and mirror.size == 6  # the mirror follows the held changes
    store.commit()
    assert stored_steps(engine, run_id) == [0, 1, 2] and run_state(engine, run_id)[1] == 3
    check_conserved(engine, run_id, store)
    live = [r for r in db_rows(engine, run_id) if r.status < 3]
    assert list(mirror.seq) == [r.seq for r in live] and list(mirror.status) == [r.status for r in live]
    store.commit()  # nothing held: a no-op


def test_group_commit_commits_once_its_time_is_up(engine):
    run_id = new_run(engine)
    store = SampleStore(engine, run_id, Sizes(0, 4, 4, 0.0), 1, group_commit_s=0.05)
    rng = np.random.default_rng(12)
    append(store, *batch(rng, 2)[:3], 0, *batch(rng, 2)[3:])
    assert stored_steps(engine, run_id) == []
    time.sleep(0.06)
    append(store, *batch(rng, 2)[:3], 1, *batch(rng, 2)[3:])  # the group is older than 0.05 s: it commits
    assert stored_steps(engine, run_id) == [0, 1]


def test_everything_else_the_store_writes_commits_the_group_first(engine):
    """A purge, a mirror's heartbeat or sync, and composition go after the held changes
    (on SQLite they would otherwise wait for this very process's write lock)."""
    run_id = new_run(engine)
    store = SampleStore(engine, run_id, Sizes(0, 2, 2, 0.0), 1, group_commit_s=3600)
    rng = np.random.default_rng(13)
    for step in range(2):
        append(store, *batch(rng, 2)[:3], step, *batch(rng, 2)[3:])
    assert store.purge().purged == 2 and stored_steps(engine, run_id) == [1]
    append(store, *batch(rng, 2)[:3], 2, *batch(rng, 2)[3:])
    mirror = store.mirror("m", heartbeat_s=3600)
    assert stored_steps(engine, run_id) == [1, 2] and mirror.version == 3
    append(store, *batch(rng, 2)[:3], 3, *batch(rng, 2)[3:])
    mirror.sync()
    assert mirror.version == 4 and stored_steps(engine, run_id) == [1, 2, 3]
    append(store, *batch(rng, 2)[:3], 4, *batch(rng, 2)[3:])
    assert store.composition().total == 10
    append(store, *batch(rng, 2)[:3], 5, *batch(rng, 2)[3:])
    mirror.heartbeat()
    assert stored_steps(engine, run_id)[-1] == 5
    append(store, *batch(rng, 2)[:3], 6, *batch(rng, 2)[3:])
    mirror.close()
    assert stored_steps(engine, run_id)[-1] == 6
    check_conserved(engine, run_id, store)


def test_settled_keeps_another_threads_changes_out_until_it_ends(engine):
    """Inside `settled` (a purge, a mirror's or the recorder's write) another thread's
    append waits: otherwise it could open a group that holds the lock the write is about
    to take (on SQLite "database is locked" after the busy timeout; on PostgreSQL a wait
    on the run row that nothing would end)."""
    run_id = new_run(engine)
    store = SampleStore(engine, run_id, Sizes(0, 4, 4, 0.0), 1, group_commit_s=3600)
    rng = np.random.default_rng(20)
    append(store, *batch(rng, 2)[:3], 0, *batch(rng, 2)[3:])
    appended = threading.Event()

    def other():
        append(store, *batch(rng, 2)[:3], 1, *batch(rng, 2)[3:])
        appended.set()

    thread = threading.Thread(target=other, daemon=True)
    with store.settled():
        assert stored_steps(engine, run_id) == [0]  # the held group was committed
        thread.start()
        assert not appended.wait(0.3)  # held out while settled
        with session_factory(engine).begin() as session:  # a write through another connection
            runs.set_step(session, run_id, 7)
    thread.join(timeout=30)
    assert appended.is_set()
    store.commit()
    assert stored_steps(engine, run_id) == [0, 1]


def test_housekeeping_from_another_thread_while_one_appends_in_a_group(engine):
    """Purges, syncs and heartbeats (each commits the group first) beside an appending
    thread: none waits on the group's lock, and nothing is lost or counted twice."""
    run_id = new_run(engine)
    store = SampleStore(engine, run_id, Sizes(0, 4, 4, 0.0), 1, group_commit_s=3600)
    mirror = store.mirror("m", heartbeat_s=0)  # every sync writes
    rng = np.random.default_rng(17)
    errors = []

    def housekeeping():
        try:
            for _ in range(30):
                store.purge()
                mirror.sync()
                mirror.heartbeat()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=housekeeping, daemon=True)
    thread.start()
    step = 0
    while thread.is_alive() and step < 10_000:
        append(store, *batch(rng, 2)[:3], step, *batch(rng, 2)[3:])
        step += 1
    thread.join(timeout=60)
    assert not thread.is_alive() and errors == []
    store.commit()
    mirror.sync()
    check_conserved(engine, run_id, store)
    assert run_state(engine, run_id)[2] == 2 * step


def test_a_lost_connection_drops_the_group_and_the_store_goes_on(engine):
    if engine.dialect.name == "sqlite":
        pytest.skip("a SQLite file cannot lose its connection from outside")
    run_id = new_run(engine)
    store = SampleStore(engine, run_id, Sizes(0, 4, 4, 0.0), 1, group_commit_s=3600)
    mirror = store.mirror("trainer", heartbeat_s=3600)
    rng = np.random.default_rng(18)
    for step in range(2):
        arrays = batch(rng, 2)
        mirror.apply(append(store, *arrays[:3], step, *arrays[3:]))
    with engine.connect() as admin:  # the server ends every other session of this database
        admin.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
    with pytest.raises(DBAPIError):
        append(store, *batch(rng, 2)[:3], 2, *batch(rng, 2)[3:])
    assert mirror.stale and stored_steps(engine, run_id) == []
    engine.dispose()  # the pool's other connections died too
    arrays = batch(rng, 2)
    mirror.apply(append(store, *arrays[:3], 3, *arrays[3:]))
    store.commit()
    assert stored_steps(engine, run_id) == [3] and run_state(engine, run_id)[:3] == (2, 1, 2)
    check_conserved(engine, run_id, store)
    assert not mirror.stale and list(mirror.seq) == [0, 1]


def test_purge_refuses_counts_that_disagree_with_the_rows(engine):
    run_id = new_run(engine)
    store = SampleStore(engine, run_id, Sizes(0, 2, 2, 0.0), 1)
    rng = np.random.default_rng(19)
    for step in range(2):
        append(store, *batch(rng, 2)[:3], step, *batch(rng, 2)[3:])
    with engine.begin() as conn:  # damage the bookkeeping: one TOMBSTONE too many
        conn.execute(text("UPDATE status_counts SET n = n + 1 WHERE run_id = :r AND status = 3 AND origin = 0"),
                     {"r": run_id})
    with pytest.raises(ConflictError, match="2 TOMBSTONE rows deleted, status_counts says 3"):
        store.purge()
    assert sum(r.status == 3 for r in db_rows(engine, run_id)) == 2  # nothing was deleted


def fail_inserts_of_step(engine, step: int, deferred: bool = False) -> None:
    """A trigger that makes the database refuse sample rows of `step`: at the INSERT, or,
    `deferred` (PostgreSQL), at COMMIT."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql(
                f"CREATE TRIGGER fail_step BEFORE INSERT ON samples WHEN NEW.step = {step} "
                "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
            )
            return
        conn.exec_driver_sql(
            "CREATE FUNCTION fail_step() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$ "
            "LANGUAGE plpgsql"
        )
        kind = "CONSTRAINT TRIGGER" if deferred else "TRIGGER"
        when = "AFTER INSERT ON samples DEFERRABLE INITIALLY DEFERRED" if deferred else "BEFORE INSERT ON samples"
        conn.exec_driver_sql(
            f"CREATE {kind} fail_step {when} FOR EACH ROW WHEN (NEW.step = {step}) EXECUTE FUNCTION fail_step()"
        )


def test_a_change_that_fails_in_a_group_is_undone_alone(engine):
    run_id = new_run(engine)
    fail_inserts_of_step(engine, 13)
    store = SampleStore(engine, run_id, Sizes(1, 2, 3, 0.0), 1, group_commit_s=3600)
    mirror = store.mirror("trainer", heartbeat_s=3600)
    rng = np.random.default_rng(14)
    for step in (0, 1, 13, 2):
        arrays = batch(rng, 2)
        if step == 13:
            with pytest.raises(DBAPIError, match="injected failure"):
                append(store, *arrays[:3], step, *arrays[3:])
            continue
        mirror.apply(append(store, *arrays[:3], step, *arrays[3:]))
    store.commit()
    assert stored_steps(engine, run_id) == [0, 1, 2]
    assert run_state(engine, run_id)[:3] == (6, 3, 6)  # next_seq, version, appended: as if 13 never came
    check_conserved(engine, run_id, store)
    live = [r for r in db_rows(engine, run_id) if r.status < 3]
    assert list(mirror.seq) == [r.seq for r in live] and list(mirror.status) == [r.status for r in live]


def test_a_group_whose_commit_fails_is_lost_and_its_mirrors_reload(engine):
    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite has no deferred triggers to refuse a COMMIT with")
    run_id = new_run(engine)
    fail_inserts_of_step(engine, 13, deferred=True)
    store = SampleStore(engine, run_id, Sizes(0, 4, 4, 0.0), 1, group_commit_s=3600)
    mirror = store.mirror("trainer", heartbeat_s=3600)
    rng = np.random.default_rng(15)
    arrays = batch(rng, 2)
    mirror.apply(append(store, *arrays[:3], 0, *arrays[3:]))
    store.commit()
    for step in (1, 13):
        arrays = batch(rng, 2)
        mirror.apply(append(store, *arrays[:3], step, *arrays[3:]))
    assert mirror.version == 3 and mirror.size == 4
    with pytest.raises(DBAPIError, match="injected failure"):
        store.commit()
    assert mirror.stale and stored_steps(engine, run_id) == [0]
    mirror.sync()  # reloads in full
    assert not mirror.stale and list(mirror.seq) == [0, 1] and mirror.version == 1
    arrays = batch(rng, 2)
    mirror.apply(append(store, *arrays[:3], 2, *arrays[3:]))  # the store goes on
    store.commit()
    assert stored_steps(engine, run_id) == [0, 2]
    check_conserved(engine, run_id, store)
    assert list(mirror.seq) == [r.seq for r in db_rows(engine, run_id) if r.status < 3]


_CRASHER = """
import os, sys
import numpy as np
from falcon_lite.core.policy import Sizes
from falcon_lite.core.samples import Samples
from falcon_lite.store.db import make_engine
from falcon_lite.store.buffer import SampleStore
store = SampleStore(make_engine(sys.argv[1]), int(sys.argv[2]), Sizes(0, 4, 4, 0.0), 1, group_commit_s=3600)
rng = np.random.default_rng(0)
for step in range(4):
    theta = rng.normal(size=(3, 1))
    store.append(Samples(theta, theta, np.ones(3, int), np.zeros(3), np.zeros(3), step=step))
    if step == 1:
        store.commit()
print("held", flush=True)
sys.stdin.read()  # killed here, steps 2 and 3 uncommitted
"""


def test_a_crash_loses_only_what_was_not_committed(engine, db_url):
    run_id = new_run(engine)
    child = subprocess.Popen([sys.executable, "-c", _CRASHER, db_url, str(run_id)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
    finally:
        child.kill()  # SIGKILL: no commit, no rollback, no cleanup
        child.wait()
    assert stored_steps(engine, run_id) == [0, 1]
    store = SampleStore(engine, run_id, Sizes(0, 4, 4, 0.0), 1)
    check_conserved(engine, run_id, store)
    rng = np.random.default_rng(16)
    append(store, *batch(rng, 2)[:3], 2, *batch(rng, 2)[3:])  # the dead group holds no lock
    assert stored_steps(engine, run_id) == [0, 1, 2] and run_state(engine, run_id)[:3] == (8, 3, 8)


def test_group_commit_needs_a_finite_non_negative_time(engine):
    run_id = new_run(engine)
    for bad in (-1, float("inf"), float("nan"), "0.1"):
        with pytest.raises(ValueError, match="group_commit_s must be a finite number >= 0"):
            SampleStore(engine, run_id, Sizes(), 1, group_commit_s=bad)


def test_event_data_with_non_finite_numbers_is_stored_as_null(engine):
    """JSON has no NaN: PostgreSQL refused a diagnostics event whose loss was NaN."""
    run_id = new_run(engine)
    factory = session_factory(engine)
    with factory.begin() as s:
        runs.add_event(s, run_id, "diagnostics", {"step": 0, "loss": float("nan"), "rows": [{"x": float("inf")}]})
    with factory.begin() as s:
        event = runs.events_since(s, run_id)[-1]
        assert (event.kind, event.data) == ("diagnostics", {"step": 0, "loss": None, "rows": [{"x": None}]})


def test_moves_go_as_ranges_of_consecutive_seqs_with_one_move():
    from falcon_lite.store.sql_sqlite import move_ranges

    seqs = np.array([7, 3, 4, 5, 9, 10, 11])
    olds = np.array([1, 1, 1, 2, 1, 1, 1])
    news = np.array([3, 3, 3, 3, 3, 2, 2])
    # (new, version, run, first, last, old): 3-4 one move, 5 another old, 7 alone, 9 / 10-11 split by new
    assert list(move_ranges(1, 8, seqs, olds, news)) == [
        (3, 8, 1, 3, 4, 1), (3, 8, 1, 5, 5, 2), (3, 8, 1, 7, 7, 1), (3, 8, 1, 9, 9, 1), (2, 8, 1, 10, 11, 1)]
