"""The weight decay that follows the flow's generalisation gap (`training.weight_decay = "adaptive"`).

In a stream every fresh batch is held out once: the flow's loss on it before any step has seen it
(`held_out_loss`, engine/loop.py) against its running training loss is the gap between what it
says of rows it has trained on and of rows it has not. A flow that learns the posterior keeps that
gap small; one that learns the pool opens it (twelve nats on gaussian_linear without decay, half
a nat on two_moons: docs/flows.md). So the penalty is set from the gap, after each batch:

    train <- 0.9 train + 0.1 loss                     (every optimizer step)
    gap   <- 0.8 gap + 0.2 (held_out_loss - train)    (every batch, before it is trained on)
    weight_decay = ceiling * clip(gap / scale, 0, 1)

with `ceiling` and `scale` from `training.adaptive_decay`. A run starts without decay; the first
gap is that of the first batch after a step. Plain Python: the state is two floats, checkpointed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

TRAIN_SMOOTHING = 0.1  # the training loss's moving average, per optimizer step
GAP_SMOOTHING = 0.2  # the gap's moving average, per batch


@dataclass
class DecayControl:
    ceiling: float
    scale: float
    train: float | None = None  # the training loss's moving average (None before the first step)
    gap: float | None = None  # the gap's moving average (None before the first batch after a step)

    def observe_step(self, loss: float) -> None:
        """Take in an optimizer step's training loss (a non-finite one is passed over)."""
        if math.isfinite(loss):
            self.train = loss if self.train is None else (1 - TRAIN_SMOOTHING) * self.train + TRAIN_SMOOTHING * loss

    def observe_held_out(self, held_out_loss: float) -> float | None:
        """Take in a fresh batch's held-out loss; the weight decay from now on (None: unchanged,
        as no step has been taken yet)."""
        if self.train is None:
            return None
        gap = held_out_loss - self.train
        self.gap = gap if self.gap is None else (1 - GAP_SMOOTHING) * self.gap + GAP_SMOOTHING * gap
        return self.ceiling * min(max(self.gap / self.scale, 0.0), 1.0)

    def to_dict(self) -> dict:
        return asdict(self)
