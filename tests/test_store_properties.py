"""Property tests of the sample buffer on SQLite and PostgreSQL (hypothesis, stateful).

Random sequences of append / disfavour / resize+rotate / purge / mirror sync / mirror
apply / draw, each example on a fresh run. After every step:

- conservation: status_counts equal the rows actually stored, and counts + purged equal
  every sample ever accepted (rejected ones counted apart);
- forward only: no seq's status ever moves backwards; a row disappears only by purge,
  and only from TOMBSTONE;
- sizes: VALIDATION <= validation_size and the pool <= max_training after each rotation;
- quota: a change that evicted a prior sample leaves the pool's prior count >= ceil(f*n);
- mirrors equal the database's live rows after sync (and after apply);
- every batch holds ceil(f*B) prior samples (or all the pool has), without duplicates.

The machine runs once with every change committed alone and once with group commit (each
change in a savepoint of a held transaction, committed when the checks read the database;
a `burst` of appends shares one group).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test
from sqlalchemy import select

from falcon_lite.config import RunConfig
from falcon_lite.core.policy import Origin, Sizes, required_prior
from falcon_lite.core.samples import Samples
from falcon_lite.store import runs
from falcon_lite.store.db import session_factory
from falcon_lite.store.models import Run, Sample, StatusCount
from falcon_lite.store.buffer import SampleStore

PRIOR = int(Origin.PRIOR)
FRACTIONS = (0.0, 0.2, 0.5, 1.0)
SETTINGS = settings(
    max_examples=40,
    stateful_step_count=14,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def append(store, theta, x, origin, step, log_q, log_prior):
    """`store.append` of the samples these columns make (validated as `Samples`)."""
    return store.append(Samples(theta, x, origin, log_q, log_prior, step=step))


@st.composite
def sizes_strategy(draw) -> Sizes:
    max_training = draw(st.integers(1, 12))
    return Sizes(
        validation_size=draw(st.integers(0, 4)),
        min_training=draw(st.integers(0, max_training)),
        max_training=max_training,
        prior_fraction=draw(st.sampled_from(FRACTIONS)),
    )


def make_machine(engine, group_commit_s: float = 0.0):
    class BufferMachine(RuleBasedStateMachine):
        @initialize(sizes=sizes_strategy(), initial=st.integers(0, 24), prior_share=st.sampled_from((0.2, 0.5)))
        def start(self, sizes: Sizes, initial: int, prior_share: float) -> None:
            with session_factory(engine).begin() as s:
                self.run_id = runs.create_run(s, RunConfig(name="prop")).id
            self.store = SampleStore(engine, self.run_id, sizes, 2, group_commit_s=group_commit_s)
            self.rng = np.random.default_rng(0)
            self.accepted = 0
            self.rejected = 0
            self.status: dict[int, int] = {}  # seq -> last seen status (forward-only check)
            self.origin: dict[int, int] = {}
            self.theta: dict[int, bytes] = {}
            self.mirrors = {}
            self.append(initial, prior_share, 0)

        # -- actions -----------------------------------------------------------------------

        @rule(n=st.integers(0, 9), prior_share=st.sampled_from((0.0, 0.3, 1.0)), n_bad=st.integers(0, 2))
        def append(self, n: int, prior_share: float, n_bad: int) -> None:
            theta = self.rng.normal(size=(n, 2))
            theta[: min(n_bad, n), 1] = np.inf
            origin = np.where(self.rng.random(n) < prior_share, 0, 1)
            log_q, log_prior = self.rng.normal(size=n), self.rng.normal(size=n)
            before = self.snapshot()
            result = append(self.store, theta, theta * 2, origin, 0, log_q, log_prior)
            n_bad = min(n_bad, n)
            assert (result.stored, result.rejected) == (n - n_bad, n_bad)
            self.accepted += result.stored
            self.rejected += result.rejected
            for m in self.mirrors.values():
                if m.version == result.version - 1:
                    m.apply(result)
                    self.check_mirror(m)
            self.after_change(before)

        @rule(sizes=st.lists(st.tuples(st.integers(0, 6), st.sampled_from((0.0, 0.5, 1.0))), min_size=2, max_size=4))
        def burst(self, sizes) -> None:
            """Several appends with no check between: under group commit, several changes in
            one held transaction (checked once at the end; the quota check is per change)."""
            before = self.snapshot()
            results = []
            for n, prior_share in sizes:
                theta = self.rng.normal(size=(n, 2))
                origin = np.where(self.rng.random(n) < prior_share, 0, 1)
                log_q, log_prior = self.rng.normal(size=n), self.rng.normal(size=n)
                result = append(self.store, theta, theta * 2, origin, 0, log_q, log_prior)
                assert (result.stored, result.rejected) == (n, 0)
                self.accepted += n
                for m in self.mirrors.values():
                    if m.version == result.version - 1:
                        m.apply(result)
                results.append(result)
            assert [r.version for r in results] == list(range(results[0].version, results[0].version + len(sizes)))
            self.after_change(before, quota=False)
            for m in self.mirrors.values():
                m.sync()
                self.check_mirror(m)

        @rule(data=st.data())
        def disfavour(self, data) -> None:
            live = [s for s, st_ in self.status.items() if st_ in (1, 2, 0)]
            seqs = data.draw(st.lists(st.sampled_from(live), max_size=4)) if live else []
            before = self.snapshot()
            training = {s for s in seqs if before[s][0] == 1}
            assert self.store.disfavour(seqs).disfavoured == len(training)
            after = self.snapshot()
            assert all(after[s][0] >= 2 for s in training)
            self.after_change(before, after)

        @rule(sizes=sizes_strategy())
        def resize(self, sizes: Sizes) -> None:
            self.store.sizes = sizes
            before = self.snapshot()
            self.store.rotate()
            self.after_change(before)

        @rule(timeout=st.sampled_from((600.0, 0.0)))
        def purge(self, timeout: float) -> None:
            before = self.snapshot()
            n = self.store.purge(reader_timeout_s=timeout).purged
            after = self.snapshot()
            gone = set(before) - set(after)
            assert len(gone) == n and all(before[s][0] == 3 for s in gone)
            assert all(after[s][0] == before[s][0] for s in after)

        @rule(name=st.sampled_from(("a", "b")))
        def sync(self, name: str) -> None:
            if name not in self.mirrors:
                self.mirrors[name] = self.store.mirror(name)
            else:
                self.mirrors[name].sync()
            self.check_mirror(self.mirrors[name])

        @rule(batch_size=st.integers(1, 6), f=st.sampled_from(FRACTIONS), seed=st.integers(0, 3))
        def draw(self, batch_size: int, f: float, seed: int) -> None:
            self.sync("a")
            m = self.mirrors["a"]
            pool = set(m.seq[m.status >= 1].tolist())
            n_prior = int((m.origin[m.status >= 1] == PRIOR).sum())
            batch = m.draw(batch_size, np.random.default_rng(seed), f)
            seqs = batch.seq.tolist()
            assert len(set(seqs)) == len(seqs) == min(batch_size, len(pool))
            assert set(seqs) <= pool
            if len(pool) > batch_size:
                assert int((batch.origin == PRIOR).sum()) >= min(math.ceil(round(f * batch_size, 9)), n_prior)

        # -- checks ------------------------------------------------------------------------

        def snapshot(self) -> dict[int, tuple[int, int]]:
            self.store.commit()
            with engine.connect() as conn:
                rows = conn.execute(
                    select(Sample.seq, Sample.status, Sample.origin, Sample.theta).where(Sample.run_id == self.run_id)
                ).all()
            for seq, status, origin, theta in rows:
                old = self.status.get(seq)
                assert old is None or status >= old, f"seq {seq} moved back from {old} to {status}"
                self.status[seq] = status
                self.origin[seq] = origin
                self.theta[seq] = theta
            for seq in set(self.status) - {r[0] for r in rows}:
                assert self.status[seq] == 3, f"seq {seq} vanished from status {self.status[seq]}"
                del self.status[seq]
            return {r[0]: (r[1], r[2]) for r in rows}

        def after_change(self, before, after=None, quota: bool = True) -> None:
            after = self.snapshot() if after is None else after
            sizes = self.store.sizes
            n_val = sum(s == 0 for s, _ in after.values())
            pool = [(s, o) for s, o in after.values() if s in (1, 2)]
            assert n_val <= sizes.validation_size
            assert len(pool) <= sizes.max_training
            n_prior = sum(o == PRIOR for _, o in pool)
            evicted_prior = [
                q for q, (s, o) in after.items() if s == 3 and o == PRIOR and before.get(q, (0,))[0] < 3
            ]
            if evicted_prior and quota:
                assert n_prior >= required_prior(sizes.prior_fraction, len(pool)), (before, after, sizes)

        @invariant()
        def conservation(self) -> None:
            if not hasattr(self, "store"):
                return
            self.store.commit()
            with engine.connect() as conn:
                counts = {(s, o): n for s, o, n in conn.execute(
                    select(StatusCount.status, StatusCount.origin, StatusCount.n)
                    .where(StatusCount.run_id == self.run_id)
                )}
                run = conn.execute(select(Run).where(Run.id == self.run_id)).one()
            stored = {}
            for seq, status in self.status.items():
                key = (status, self.origin[seq])
                stored[key] = stored.get(key, 0) + 1
            assert {k: v for k, v in counts.items() if v} == stored
            comp = self.store.composition()
            assert comp.total == self.accepted == sum(stored.values()) + run.purged
            assert comp.rejected == self.rejected == run.rejected
            assert run.appended == self.accepted

        def check_mirror(self, m) -> None:
            live = sorted(q for q, s in self.status.items() if s < 3)
            self.snapshot()
            live = sorted(q for q, s in self.status.items() if s < 3)
            assert m.seq.tolist() == live
            assert m.status.tolist() == [self.status[q] for q in live]
            assert m.origin.tolist() == [self.origin[q] for q in live]
            assert [row.tobytes() for row in m.theta] == [self.theta[q] for q in live]

        def teardown(self) -> None:
            for m in getattr(self, "mirrors", {}).values():
                m.close()

    return BufferMachine


@pytest.mark.parametrize("group_commit_s", [0.0, 3600.0], ids=["commit-each", "group-commit"])
def test_buffer_invariants_hold_under_random_operations(engine, group_commit_s) -> None:
    run_state_machine_as_test(make_machine(engine, group_commit_s), settings=SETTINGS)
