"""Batches simulated in chunks: their noise streams (engine/streams, engine/loop) and the
books the Ray supervisor keeps of them (engine/chunks). The same runs on Ray: test_runtime.py."""

from __future__ import annotations

import pickle

import numpy as np

from falcon_lite.config import RunConfig
from falcon_lite.core.priors import make_prior
from falcon_lite.core.samples import Samples
from falcon_lite.core.simulators import make_simulator
from falcon_lite.engine import loop
from falcon_lite.engine.chunks import ChunkBook
from falcon_lite.engine.streams import NOISE, rng


def proposed(step: int = 5, n: int = 30) -> tuple:
    config = RunConfig.model_validate({"simulator": {"name": "exp_noise"}, "buffer": {"simulations_per_step": n}})
    simulator = make_simulator(config.simulator)
    return simulator, loop.propose_from(config, make_prior(config.prior, simulator.dim), step, None, 0.0)


def test_a_step_in_one_call_keeps_its_stream_and_a_fourth_counter_names_a_part_of_it():
    a = rng(7, NOISE, 3).standard_normal(4)
    assert np.array_equal(a, np.random.default_rng([7, NOISE, 3]).standard_normal(4))  # the numbers of every run so far
    assert np.array_equal(rng(7, NOISE, 3, 0).standard_normal(4), a)  # numpy pads the seed words with zeros
    assert not np.array_equal(rng(7, NOISE, 3, 1).standard_normal(4), a)


def test_chunks_have_their_own_streams_and_do_not_depend_on_where_or_when_they_run():
    simulator, batch = proposed()
    whole = loop.simulate(simulator, batch, seed=11)
    assert np.array_equal(whole.x, simulator(batch.theta, rng(11, NOISE, 5)))  # unchunked: as always
    chunked = loop.simulate(simulator, batch, seed=11, chunk=8)  # chunks of 8, 8, 8, 6 rows
    assert loop.chunk_count(30, 8) == 4 and chunked.step == 5
    for name in ("theta", "origin", "log_q", "log_prior"):
        assert np.array_equal(getattr(chunked, name), getattr(batch, name))
    assert not np.array_equal(chunked.x, whole.x)  # other streams: other noise
    # each chunk alone, in reverse order, from a pickled copy (as an actor gets it): the same rows
    copy = pickle.loads(pickle.dumps(batch))
    parts = [loop.simulate_chunk(simulator, copy, 11, 8, k) for k in reversed(range(4))]
    assert np.array_equal(Samples.concat(parts[::-1]).x, chunked.x)
    noise = (chunked.x - np.exp(chunked.theta)) / simulator.sigma
    assert not np.allclose(noise[:6], noise[8:14])  # chunk 1 does not repeat chunk 0's draws
    # one chunk holding the whole batch is the unchunked batch (chunk 0's stream is the step's)
    assert np.array_equal(loop.simulate(simulator, batch, seed=11, chunk=30).x, whole.x)


def test_the_book_sends_each_chunk_to_the_least_busy_simulator():
    book = ChunkBook(simulators=3, chunks_per_batch=4)
    first = book.open("p0", 0.0)
    sent = []
    for k in range(4):
        i = book.pick()
        book.sent(first, k, ("c", first, k), i)
        sent.append(i)
    assert sent == [0, 1, 2, 0] and book.load == [2, 1, 1]
    book.back(("c", first, 1), "r1")  # simulator 1 is free first
    second = book.open("p1", 0.5)
    picks = []
    for k in range(4):
        i = book.pick()
        book.sent(second, k, ("c", second, k), i)
        picks.append(i)
    assert picks == [1, 2, 1, 2] and book.load == [2, 2, 3]  # never more than one chunk above the least busy
    assert len(book) == 2 and len(book.outstanding()) == 7


def test_the_book_hands_on_whole_batches_in_launch_order_with_failed_chunks_marked():
    book = ChunkBook(simulators=2, chunks_per_batch=2)
    batches = [book.open(f"p{b}", 0.1 * b) for b in range(3)]
    for b in batches:
        for k in range(2):
            book.sent(b, k, (b, k), book.pick())
    book.back((1, 1), "1.1")
    book.back((1, 0), "1.0")  # batch 1 is whole before batch 0
    book.back((0, 1), "0.1")
    assert [(b.proposed, b.parts) for b in book.whole()] == [("p1", ["1.0", "1.1"])]
    book.back((2, 0), None, failed=True)
    book.back((2, 1), "2.1")
    book.back((0, 0), "0.0")
    whole = book.whole()  # both whole now: in launch order
    assert [(b.proposed, b.fraction, b.parts, b.failed) for b in whole] == [
        ("p0", 0.0, ["0.0", "0.1"], []), ("p2", 0.2, [None, "2.1"], [0])]
    assert len(book) == 0 and book.load == [0, 0] and book.whole() == []
