"""Batches simulated in chunks over a pool of simulators: which chunk runs where, and which
batches are whole again. Pure bookkeeping (no Ray): the Ray supervisor makes the calls.

A step's batch of n proposed rows is simulated in `loop.chunk_count(n, c)` chunks of c rows
(`runtime.simulation_chunk`; None: one chunk, the whole batch), chunk k with its own noise
stream (`engine.loop.simulate_chunk`), so its rows do not depend on the simulator that ran it.
Each chunk goes to the least busy simulator (fewest chunks outstanding; ties taken in turn),
and a batch is handed on once all its chunks are back, its rows in chunk order.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Batch:
    """One batch in flight: its proposal (or a handle to it), the prior fraction it was drawn
    with, and each chunk's result once back (None until then, or if it failed)."""

    proposed: Any
    fraction: float
    parts: list = field(default_factory=list)
    missing: int = 0
    failed: list[int] = field(default_factory=list)  # chunks whose call failed (in the order they came back)


class ChunkBook:
    """The batches in flight and their chunks outstanding, keyed by the caller's handles
    (anything hashable: Ray's object refs)."""

    def __init__(self, simulators: int, chunks_per_batch: int) -> None:
        self.load = [0] * simulators  # chunks outstanding per simulator
        self.per_batch = chunks_per_batch
        self.turn = 0
        self.batches: dict[int, Batch] = {}  # by launch number: dicts keep the launch order
        self.chunks: dict[Hashable, tuple[int, int, int]] = {}  # handle -> (batch, chunk, simulator)
        self.launched = 0

    def __len__(self) -> int:
        """Batches in flight: launched and not yet handed on."""
        return len(self.batches)

    def open(self, proposed: Any, fraction: float) -> int:
        """A new batch; returns its number (batches are handed on in this order when several are whole)."""
        number = self.launched
        self.batches[number] = Batch(proposed, fraction, [None] * self.per_batch, self.per_batch)
        self.launched += 1
        return number

    def pick(self) -> int:
        """The simulator for the next chunk: the least busy, ties taken in turn."""
        n = len(self.load)
        order = [(self.turn + i) % n for i in range(n)]
        chosen = min(order, key=self.load.__getitem__)
        self.turn = chosen + 1
        return chosen

    def sent(self, batch: int, k: int, handle: Hashable, simulator: int) -> None:
        """Chunk `k` of `batch` is running on `simulator`; its result will come by `handle`."""
        self.chunks[handle] = (batch, k, simulator)
        self.load[simulator] += 1

    def outstanding(self) -> list:
        """The handles of every chunk still running."""
        return list(self.chunks)

    def back(self, handle: Hashable, result: Any, failed: bool = False) -> None:
        """A chunk's result came back (`failed`: its call failed, `result` is ignored)."""
        batch, k, simulator = self.chunks.pop(handle)
        self.load[simulator] -= 1
        entry = self.batches[batch]
        if failed:
            entry.failed.append(k)
        else:
            entry.parts[k] = result
        entry.missing -= 1

    def whole(self) -> list[Batch]:
        """The batches all of whose chunks are back, in launch order; they leave the book."""
        done = [number for number, entry in self.batches.items() if entry.missing == 0]
        return [self.batches.pop(number) for number in done]

    def clear(self) -> None:
        """Forget every batch in flight (their chunks' results, if they come, are not asked for)."""
        self.batches.clear()
        self.chunks.clear()
        self.load = [0] * len(self.load)
