"""Stored runs survive the upgrade: a SQLite database written at schema revision 0001 by the
code before the store/runtime redesign (tests/data/stored_0001.sqlite3, made by
tests/data/make_stored_0001.py at commit 6e18932) is migrated to head, still displays, and
its stopped run resumes to the very numbers a run never stopped gives today (bit for bit on
a CPU that reproduces the stored steps, to the golden test's tolerance on others)."""

from __future__ import annotations

import shutil
from pathlib import Path

from falcon_lite.config import RunConfig
from falcon_lite.engine.inline import run_inline
from falcon_lite.engine.loop import sizes_of
from falcon_lite.engine.resume import load_state
from falcon_lite.store import runs
from falcon_lite.store.buffer import SampleStore
from falcon_lite.store.db import SCHEMA_REVISION, current_revision, make_engine, migrate, session_factory
from tests.test_golden import same

STORED = Path(__file__).resolve().parent / "data" / "stored_0001.sqlite3"


def test_a_database_from_before_the_redesign_migrates_displays_and_resumes(tmp_path):
    path = tmp_path / "stored.db"
    shutil.copy(STORED, path)
    url = f"sqlite:///{path}"
    engine = make_engine(url)
    assert current_revision(engine) == "0001"
    migrate(url)
    assert current_revision(engine) == SCHEMA_REVISION
    with session_factory(engine).begin() as s:
        (newest, oldest), total = runs.list_runs(s)
        assert total == 2 and (oldest.status, oldest.step) == ("stopped", 30)
        assert (newest.status, newest.step, newest.outcome) == ("completed", 60, None)
        config = RunConfig.model_validate(oldest.config)
        before = runs.metrics_since(s, oldest.id, limit=None)
    assert config.problem is None and config.problem_spec().name == "gaussian"  # a v1 config, as stored
    composition = SampleStore(engine, oldest.id, sizes_of(load_state(engine, oldest.id)), 1).composition()
    assert composition.total == 30 * 32  # every batch stored before the stop is still there

    run_inline(engine, oldest.id)
    with session_factory(engine).begin() as s:
        resumed = runs.get_run(s, oldest.id)
        assert (resumed.status, resumed.step) == ("completed", 60) and resumed.outcome is not None
        rows = runs.metrics_since(s, oldest.id, limit=None)
        straight = runs.create_run(s, config).id
    assert rows[:30] == before
    run_inline(engine, straight)
    with session_factory(engine).begin() as s:
        never_stopped = runs.metrics_since(s, straight, limit=None)
    engine.dispose()
    # Bit for bit where this CPU reproduces the stored steps themselves (the machine that wrote
    # the file; CI's); elsewhere torch's kernels differ in the last bits from step 0 (1e-13 on
    # an AVX-512 machine), and the numbers must agree as the golden test's fallback asks.
    exact = never_stopped[:30] == before
    assert len(never_stopped) == len(rows) == 60
    for new, old in zip(never_stopped, rows, strict=True):
        assert all(same(new.get(k), old.get(k), exact) for k in set(new) | set(old)), (old["step"], new, old)
