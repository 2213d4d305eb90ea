"""What follows the flow's generalisation gap: the weight decay (`training.weight_decay =
"adaptive"`) and how many of a batch's optimizer steps are taken (`training.early_stop`).

In a stream every fresh batch is held out once: the flow's loss on it before any step has seen it
(`held_out_loss`, engine/loop.py) against its running training loss is the gap between what it
says of rows it has trained on and of rows it has not. A flow that learns the posterior keeps that
gap small; one that learns the pool opens it (twelve nats on gaussian_linear without decay, half
a nat on two_moons: docs/flows.md). So, after each batch:

    train <- 0.9 train + 0.1 loss                     (every optimizer step)
    gap   <- 0.8 gap + 0.2 (held_out_loss - train)    (every batch, before it is trained on)
    weight_decay = ceiling * clip(gap / scale, 0, 1)  (with `training.adaptive_decay`)
    steps taken  = k * max(min_share, limit / gap)    (of the batch's k; `training.early_stop`,
                                                       where the gap is above its `limit`)

The early stop is sbi's stop on a rising validation loss, made for a stream: where more steps
on the pool would widen the gap, the batch's later steps are passed over (the step counter,
the learning rate's schedule and the simulations go on; no optimizer step is taken). A run
starts without either; the first gap is that of the first batch after a step. Plain Python:
the state is two floats and a count, checkpointed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

TRAIN_SMOOTHING = 0.1  # the training loss's moving average, per optimizer step
GAP_SMOOTHING = 0.2  # the gap's moving average, per batch


@dataclass
class DecayControl:
    ceiling: float | None  # the adaptive decay's (None: the decay is fixed, only the gap is followed)
    scale: float
    train: float | None = None  # the training loss's moving average (None before the first step)
    gap: float | None = None  # the gap's moving average (None before the first batch after a step)
    passed: int = 0  # optimizer steps passed over by the early stop

    def observe_step(self, loss: float) -> None:
        """Take in an optimizer step's training loss (a non-finite one is passed over)."""
        if math.isfinite(loss):
            self.train = loss if self.train is None else (1 - TRAIN_SMOOTHING) * self.train + TRAIN_SMOOTHING * loss

    def observe_held_out(self, held_out_loss: float) -> float | None:
        """Take in a fresh batch's held-out loss; the weight decay from now on (None: unchanged,
        as no step has been taken yet or the decay is fixed)."""
        if self.train is None:
            return None
        gap = held_out_loss - self.train
        self.gap = gap if self.gap is None else (1 - GAP_SMOOTHING) * self.gap + GAP_SMOOTHING * gap
        if self.ceiling is None:
            return None
        return self.ceiling * min(max(self.gap / self.scale, 0.0), 1.0)

    def steps_to_take(self, k: int, limit: float, min_share: float) -> int:
        """Of a batch's `k` optimizer steps, how many the early stop takes: all while the gap is
        unknown or at most `limit` nats; above it, k * limit / gap rounded, but no fewer than
        k * min_share rounded, nor than one."""
        if self.gap is None or self.gap <= limit:
            return k
        return max(1, round(k * max(min_share, limit / self.gap)))

    def to_dict(self) -> dict:
        return asdict(self)
