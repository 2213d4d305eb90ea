"""Sample-buffer speed on PostgreSQL and SQLite, each figure beside a baseline from the same run.

For each database: a fresh database migrated to head, one run with a rolling buffer
(validation 256, min = max training 1024, f = 0.2, dim 1), filled in two stages to
10 000 and then ``--rows`` samples (default 1 000 000). At each stage it measures, over
``--reps`` repetitions interleaved with the baseline (the machine is shared: interleaving
keeps load drift out of the ratio):

- append+rotate of 256 samples (`SampleStore.append`: one transaction);
- baseline: a bare executemany INSERT (SQLAlchemy Core) of the same 256 rows into a bare
  table of the same shape (same columns and primary key, no other index), built from the
  same arrays and committed; two stricter baselines beside it: the driver's own
  executemany, and on PostgreSQL one ``INSERT ... SELECT unnest`` statement (the store's
  technique);
- composition (`SampleStore.composition`, from ``status_counts``);
- mirror sync after one append (`Mirror.sync`);
- batch draw of 128 from the mirror's pool of 1024 (`Mirror.draw`, f = 0.2).

The fill is a bulk SQL insert of TOMBSTONE rows (what an unpurged run holds) straight into
``samples`` with the counters kept consistent, then a few real appends to set up the live
window; the measured operations are the real code paths. Prints a table and writes it to
docs/benchmarks.md (section "Buffer").

    .venv/bin/python bench/buffer.py [--rows 1000000] [--reps 60] [--db postgres sqlite] [--x-size 1]

``--x-size N`` gives each row an x of N floats (theta stays 1 value): the layout is one blob
per row for theta and one for x, so the live window's queries never read x and a mirror
loads it only for live rows. Its figures go to a section of their own ("Buffer, x of N floats").
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np
from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    Table,
    create_engine,
    insert,
    text,
    update,
)
from sqlalchemy.engine import make_url

from falcon_lite.config import RunConfig
from falcon_lite.core.policy import Sizes, Status
from falcon_lite.store import runs
from falcon_lite.store.db import make_engine, migrate, session_factory
from falcon_lite.store.models import Run, StatusCount
from falcon_lite.core.samples import Samples
from falcon_lite.store.buffer import SampleStore

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PG = os.environ.get("FALCON_LITE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
SIZES = Sizes(validation_size=256, min_training=1024, max_training=1024, prior_fraction=0.2)
BATCH, DRAW_B, DRAWS = 256, 128, 2000
FILL_CHUNK = 200_000

BARE = MetaData()
BARE_TABLE = Table(
    "bench_bare", BARE,
    Column("run_id", Integer, primary_key=True), Column("seq", BigInteger, primary_key=True),
    Column("status", SmallInteger), Column("origin", SmallInteger), Column("step", Integer),
    Column("theta", LargeBinary), Column("x", LargeBinary), Column("log_q", Float),
    Column("log_prior", Float), Column("version", BigInteger),
)
PG_BARE_UNNEST = text(  # the store's own technique: arrays + one blob per column
    "INSERT INTO bench_bare (run_id, seq, status, origin, step, theta, x, log_q, log_prior, version) "
    "SELECT 1, u.seq, 0, u.origin, 0, substring(CAST(:theta AS BYTEA) FROM CAST(u.i * 8 - 7 AS INTEGER) FOR 8), "
    "substring(CAST(:x AS BYTEA) FROM CAST((u.i - 1) * :x_width + 1 AS INTEGER) FOR :x_width), u.log_q, "
    "u.log_prior, 1 "
    "FROM unnest(CAST(:seq AS BIGINT[]), CAST(:origin AS SMALLINT[]), CAST(:log_q AS FLOAT8[]), "
    "CAST(:log_prior AS FLOAT8[])) WITH ORDINALITY AS u(seq, origin, log_q, log_prior, i)"
)
DRIVER_BARE = (
    "INSERT INTO bench_bare (run_id, seq, status, origin, step, theta, x, log_q, log_prior, version) "
    "VALUES ({})"
)


class Database:
    """A fresh database for the bench, removed afterwards."""

    def __init__(self, kind: str, pg_url: str) -> None:
        self.kind = kind
        if kind == "sqlite":
            self.tmp = tempfile.TemporaryDirectory(prefix="flr-bench-")
            self.url = f"sqlite:///{self.tmp.name}/bench.db"
        else:
            self.name = f"flr_bench_{uuid.uuid4().hex[:12]}"
            self.admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
            with self.admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{self.name}"'))
            self.url = make_url(pg_url).set(database=self.name).render_as_string(hide_password=False)

    def close(self) -> None:
        if self.kind == "sqlite":
            self.tmp.cleanup()
        else:
            with self.admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
            self.admin.dispose()


X_SIZE = 1  # floats of x per row (--x-size)


def bulk_fill(engine, run_id: int, n: int) -> None:
    """Insert `n` TOMBSTONE rows by bulk SQL, keeping next_seq/appended/version/status_counts right."""
    blob = np.zeros(1).tobytes()
    x_blob = np.zeros(X_SIZE).tobytes()
    done = 0
    while done < n:
        k = min(FILL_CHUNK, n - done)
        with session_factory(engine).begin() as s:
            run = runs.get_run(s, run_id, for_update=True)
            start, version = run.next_seq, run.version + 1
            params = {"run_id": run_id, "start": start, "k": k, "blob": blob, "x_blob": x_blob, "version": version}
            cols = "run_id, seq, status, origin, step, theta, x, log_q, log_prior, version"
            body = (
                f"SELECT :run_id, :start + g, {int(Status.TOMBSTONE)}, CASE WHEN g % 5 = 0 THEN 0 ELSE 1 END, "
                "0, :blob, :x_blob, 0.0, 0.0, :version"
            )
            if engine.dialect.name == "postgresql":
                s.execute(text(f"INSERT INTO samples ({cols}) {body} FROM generate_series(0, :k - 1) AS g"), params)
            else:
                s.execute(text(
                    f"INSERT INTO samples ({cols}) WITH RECURSIVE c(g) AS "
                    f"(SELECT 0 UNION ALL SELECT g + 1 FROM c WHERE g < :k - 1) {body} FROM c"
                ), params)
            n_prior = (k + 4) // 5
            s.execute(update(Run).where(Run.id == run_id).values(
                next_seq=Run.next_seq + k, appended=Run.appended + k, version=version))
            for origin, count in ((0, n_prior), (1, k - n_prior)):
                s.execute(update(StatusCount).where(
                    StatusCount.run_id == run_id, StatusCount.status == int(Status.TOMBSTONE),
                    StatusCount.origin == origin).values(n=StatusCount.n + count))
        done += k
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE samples"))


def make_batch(rng: np.random.Generator):
    theta = rng.normal(size=(BATCH, 1))
    origin = np.where(rng.random(BATCH) < 0.3, 0, 1)
    return theta, theta + 1e-6 * rng.normal(size=(BATCH, X_SIZE)), origin, rng.normal(size=BATCH), rng.normal(size=BATCH)


def bare_insert(engine, seq0: int, arrays, mode: str = "core") -> float:
    """Insert the batch into the bare table and commit: SQLAlchemy Core executemany ("core"),
    the driver's executemany ("driver"), or one INSERT ... SELECT unnest (PostgreSQL, "unnest")."""
    theta, x, origin, log_q, log_prior = arrays
    t0 = time.perf_counter()
    if mode == "unnest":
        params = {"seq": list(range(seq0, seq0 + BATCH)), "origin": origin.tolist(),
                  "theta": theta.tobytes(), "x": x.tobytes(), "x_width": 8 * X_SIZE, "log_q": log_q.tolist(),
                  "log_prior": log_prior.tolist()}
        with engine.begin() as conn:
            conn.execute(PG_BARE_UNNEST, params)
    elif mode == "driver":
        mark = "?" if engine.dialect.name == "sqlite" else "%s"
        rows = list(zip([1] * BATCH, range(seq0, seq0 + BATCH), [0] * BATCH, origin.tolist(), [0] * BATCH,
                        [t.tobytes() for t in theta], [v.tobytes() for v in x], log_q.tolist(),
                        log_prior.tolist(), [1] * BATCH))
        with engine.begin() as conn:
            conn.exec_driver_sql(DRIVER_BARE.format(", ".join([mark] * 10)), rows)
    else:
        rows = [
            {"run_id": 1, "seq": seq0 + i, "status": 0, "origin": o, "step": 0, "theta": t.tobytes(),
             "x": v.tobytes(), "log_q": lq, "log_prior": lp, "version": 1}
            for i, (o, t, v, lq, lp) in enumerate(zip(origin.tolist(), theta, x, log_q.tolist(), log_prior.tolist()))
        ]
        with engine.begin() as conn:
            conn.execute(insert(BARE_TABLE), rows)
    return time.perf_counter() - t0


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def as_samples(arrays) -> Samples:
    """`make_batch`'s columns as the store takes them (validated, step 0)."""
    theta, x, origin, log_q, log_prior = arrays
    return Samples(theta, x, origin, log_q, log_prior, step=0)


def measure(engine, store: SampleStore, mirror, reps: int, rng, bare_seq: list[int]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {
        k: [] for k in ("append", "bare", "bare_driver", "bare_unnest", "composition", "sync", "draw")
    }
    modes = {"bare": "core", "bare_driver": "driver"}
    if engine.dialect.name == "postgresql":
        modes["bare_unnest"] = "unnest"
    for _ in range(reps):
        arrays = make_batch(rng)
        for key, mode in modes.items():
            out[key].append(bare_insert(engine, bare_seq[0], arrays, mode))
            bare_seq[0] += BATCH
        out["append"].append(timed(lambda: store.append(as_samples(arrays))))
        out["composition"].append(timed(store.composition))
        mirror.sync()
        store.append(as_samples(make_batch(rng)))
        out["sync"].append(timed(mirror.sync))
    draw_rng = np.random.default_rng(1)
    for _ in range(DRAWS):
        out["draw"].append(timed(lambda: mirror.draw(DRAW_B, draw_rng, SIZES.prior_fraction)))
    assert mirror.trainable_size == SIZES.max_training
    return out


def bench_database(kind: str, pg_url: str, rows: int, reps: int) -> list[dict]:
    db = Database(kind, pg_url)
    results = []
    try:
        migrate(db.url)
        engine = make_engine(db.url)
        BARE.create_all(engine)
        with session_factory(engine).begin() as s:
            run_id = runs.create_run(s, RunConfig(name="bench", buffer={
                "validation_size": 256, "min_training": 1024, "max_training": 1024, "prior_fraction": 0.2,
                "simulations_per_step": 256})).id
        store = SampleStore(engine, run_id, SIZES, 1, x_shape=(X_SIZE,))
        rng = np.random.default_rng(0)
        bare_seq = [0]
        mirror = None
        warm = 8  # real appends after each fill: the live window (1280 rows) is set up by the code
        for stage in sorted({min(10_000, rows), rows}):
            have = store.composition().total
            t0 = time.perf_counter()
            bulk_fill(engine, run_id, max(0, stage - have - warm * BATCH))
            for _ in range(warm):
                store.append(as_samples(make_batch(rng)))
            fill_s = time.perf_counter() - t0
            mirror = mirror or store.mirror("bench")
            mirror.sync()
            total = store.composition().total
            print(f"{kind}: filled to {total} rows in {fill_s:.1f} s; measuring ...", flush=True)
            figures = measure(engine, store, mirror, reps, rng, bare_seq)
            results.append({"db": kind, "rows": total, "figures": figures})
        mirror.close()
        engine.dispose()
    finally:
        db.close()
    return results


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1e3


def table(results: list[dict]) -> list[str]:
    lines = [
        "| database | rows | operation | p50 ms | p95 ms | baseline | baseline p50 ms | ratio p50 | target |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        f, db, n = r["figures"], r["db"], f"{r['rows']:,}"
        bare = pct(f["bare"], 50)
        rows = [
            ("append+rotate 256", f["append"], "bare executemany INSERT 256", bare, "<= 2x bare"),
            ("composition", f["composition"], "", None, "p50 <= 5 ms"),
            ("mirror sync after one append", f["sync"], "", None, "flat 10k -> 1M"),
            ("draw B=128 from pool 1024", f["draw"], "", None, "p50 <= 0.2 ms"),
        ]
        for name, values, base_name, base, target in rows:
            p50, p95 = pct(values, 50), pct(values, 95)
            ratio = f"{p50 / base:.2f}x" if base else ""
            base_s = f"{base:.2f}" if base is not None else ""
            lines.append(f"| {db} | {n} | {name} | {p50:.3f} | {p95:.3f} | {base_name} | {base_s} | {ratio} | {target} |")
        for key, name in (("bare_driver", "bare driver-level executemany INSERT 256"),
                          ("bare_unnest", "bare INSERT ... SELECT unnest 256 (one statement)")):
            if f[key]:
                b2 = pct(f[key], 50)
                lines.append(
                    f"| {db} | {n} | append+rotate 256, stricter baseline | {pct(f['append'], 50):.3f} | "
                    f"{pct(f['append'], 95):.3f} | {name} | {b2:.2f} | {pct(f['append'], 50) / b2:.2f}x | |"
                )
    return lines


def verdicts(results: list[dict]) -> list[str]:
    """The targets (PostgreSQL at the largest size), each judged on the p50 figures above."""
    pg = [r for r in results if r["db"] == "postgres"]
    if not pg:
        return []
    small, big = pg[0]["figures"], pg[-1]["figures"]
    rows = f"{pg[-1]['rows']:,}"
    ratio = pct(big["append"], 50) / pct(big["bare"], 50)
    comp, draw = pct(big["composition"], 50), pct(big["draw"], 50)
    sync_small, sync_big = pct(small["sync"], 50), pct(big["sync"], 50)

    def met(ok: bool) -> str:
        return "met" if ok else "NOT met"

    return [
        f"Targets, PostgreSQL at {rows} rows (p50): append+rotate <= 2x the bare executemany INSERT: "
        f"{ratio:.2f}x ({met(ratio <= 2)}); composition <= 5 ms: {comp:.2f} ms ({met(comp <= 5)}); "
        f"mirror sync flat: {sync_small:.2f} ms at {pg[0]['rows']:,} rows vs {sync_big:.2f} ms at {rows} "
        f"({met(sync_big <= 2 * sync_small)}, judged as at most 2x); draw <= 0.2 ms: {draw:.3f} ms ({met(draw <= 0.2)}).",
    ]


def write_section(lines: list[str], command: str, path: Path) -> None:
    title = "## Buffer" if X_SIZE == 1 else f"## Buffer, x of {X_SIZE} floats"
    body = "\n".join([
        title,
        "",
        f"`{command}` ({platform.machine()}, {os.cpu_count()} CPUs, machine shared with other work;",
        "PostgreSQL 15 and SQLite (WAL) on the same disk). One run, rolling buffer: validation 256,",
        f"min = max training 1024, f = 0.2, theta of 1 value, x of {X_SIZE}. Rows = samples stored in the run (the fill is",
        "TOMBSTONE rows by bulk SQL, then real appends). Baselines are measured in the same process,",
        "interleaved with the operation.",
        "",
        *lines,
        "",
    ])
    text_ = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text_ = pattern.sub(body + "\n", text_) if pattern.search(text_) else text_.rstrip("\n") + "\n\n" + body
    path.write_text(text_)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=60)
    parser.add_argument("--db", nargs="+", choices=["postgres", "sqlite"], default=["postgres", "sqlite"])
    parser.add_argument("--pg-url", default=DEFAULT_PG)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--x-size", type=int, default=1, help="floats of x per row (theta stays 1 value)")
    args = parser.parse_args()
    global X_SIZE
    X_SIZE = args.x_size
    results = []
    load_before = os.getloadavg()[0]
    for kind in args.db:
        results += bench_database(kind, args.pg_url, args.rows, args.reps)
    load = f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    lines = table(results) + ["", *verdicts(results), "", load + "."]
    print("\n".join(lines))
    if not args.no_write:
        command = "python bench/buffer.py" + ("" if args.rows == 1_000_000 else f" --rows {args.rows}")
        command += "" if X_SIZE == 1 else f" --x-size {X_SIZE}"
        write_section(lines, command, args.out)
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
