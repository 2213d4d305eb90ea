"""One run's mutable state and how it is checkpointed.

Random numbers come from counter-based streams (engine/streams.py), so the state holds no
RNG state beyond its seed and step; runs of different policies with the same seed share
their prior, proposal and noise draws wherever the policies allow it.
"""

from __future__ import annotations

import copy
import io
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from falcon_lite.config import RunConfig
from falcon_lite.core.alarm import Alarm
from falcon_lite.core.decay import DecayControl
from falcon_lite.core.policy import AdaptiveQuota
from falcon_lite.core.protocols import Estimator, Prior, Simulator
from falcon_lite.core.training import Optimizer, make_optimizer
from falcon_lite.engine.problem import bind_problem
from falcon_lite.engine.regions import RegionCache, Weights, estimator_for


@dataclass
class RunState:
    """What the trainer holds for one run; `to_bytes`/`from_bytes` make the checkpoint."""

    config: RunConfig
    simulator: Simulator
    prior: Prior
    estimator: Estimator
    optimizer: Optimizer
    step: int = 0  # optimizer steps taken
    next_proposal: int = 0  # the step index of the next batch of simulations
    drawn_prior: int = 0
    drawn_total: int = 0
    alarm: Alarm = field(default_factory=Alarm)  # the explosion alarm (core/alarm.py)
    quota: AdaptiveQuota | None = None  # buffer.prior_fraction = "adaptive": its running state
    decay: DecayControl | None = None  # the held-out gap's running state (adaptive decay, early stop)
    truth: tuple[np.ndarray, np.ndarray] | None = field(default=None)  # reference posterior (mean, std), if any
    at_obs: tuple | None = field(default=None, repr=False)  # (step, mean, var): loop.posterior_at_obs's cache
    sound: dict | None = field(default=None, repr=False)  # the last healthy snapshot (adaptive rollback)
    rollbacks: int = 0
    lr_scale: float = 1.0  # the learning rate's factor after rollbacks (buffer.adaptive.lr_factor each)
    steer_weights: Weights | None = field(default=None, repr=False)  # a truncated proposal's version in force
    regions: RegionCache | None = field(default=None, repr=False)  # the regions an inline run draws from

    @property
    def seed(self) -> int:
        return self.config.training.seed

    @property
    def prior_fraction(self) -> float:
        """The prior-mixing quota in force now (fixed, or the adaptive policy's current one)."""
        return self.config.buffer.prior_fraction if self.quota is None else self.quota.current

    def lr(self, step: int) -> float:
        t = self.config.training
        if step < t.warmup_steps:
            return t.lr * self.lr_scale
        if t.lr_decay == "cosine":
            done = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
            return t.lr_after_warmup * 0.5 * (1.0 + math.cos(math.pi * done)) * self.lr_scale
        return t.lr_after_warmup * self.lr_scale

    def keep_sound(self) -> None:
        """Snapshot the estimator, optimizer and alarm as the state to roll back to."""
        self.sound = {
            "step": self.step,
            "estimator": copy.deepcopy(self.estimator.state_dict()),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "alarm": self.alarm.to_dict(),
        }

    def roll_back(self) -> None:
        """Restore the last healthy snapshot (the step counter and the buffer go on) and cool the
        learning rate by `buffer.adaptive.lr_factor`."""
        self.estimator.load_state_dict(self.sound["estimator"])
        # (a copy: loading keeps same-device tensors as they are, and the optimizer updates them in place)
        self.optimizer.load_state_dict(copy.deepcopy(self.sound["optimizer"]))
        self.alarm = Alarm(**self.sound["alarm"])
        # Its average restarts from the snapshot's: no new snapshot until a full healthy stretch has
        # passed, or one taken while the average still lags would keep a state already drifting.
        self.alarm.healthy = 0
        self.at_obs = None
        self.rollbacks += 1
        self.lr_scale *= self.config.buffer.adaptive.lr_factor

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        # (the weights version and the decay's state only where there are: a checkpoint without them
        # stays byte for byte)
        version = {} if self.steer_weights is None else {
            "steer_weights": (self.steer_weights.version, self.steer_weights.state)}
        torch.save(
            {
                "step": self.step,
                "drawn_prior": self.drawn_prior,
                "drawn_total": self.drawn_total,
                "alarm": self.alarm.to_dict(),
                "quota": None if self.quota is None else self.quota.current,
                "sound": self.sound,
                "rollbacks": self.rollbacks,
                "lr_scale": self.lr_scale,
                "estimator": self.estimator.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                **version,
                **({} if self.decay is None else {"decay": self.decay.to_dict()}),
            },
            buf,
        )
        return buf.getvalue()


def new_state(config: RunConfig) -> RunState:
    """Build a run's components from its config; the network's initial weights follow the seed."""
    torch.set_num_threads(1)
    simulator = bind_problem(config)
    prior = simulator.prior
    estimator = estimator_for(config, simulator)
    device = config.training.device
    if device != "cpu":
        if not getattr(type(estimator), "runs_on_cuda", False):
            raise ValueError(f"estimator {config.estimator.name!r} trains on the CPU only (training.device = 'cpu')")
        if not torch.cuda.is_available():
            raise ValueError("training.device = 'cuda', but torch sees no CUDA device where this trainer runs")
        estimator.to(device)
    training, decay = config.training, None
    adaptive = training.weight_decay == "adaptive"
    if adaptive or training.early_stop is not None:  # no decay until the first gap is measured
        decay = DecayControl(training.adaptive_decay.ceiling if adaptive else None, training.adaptive_decay.scale)
    optimizer = make_optimizer(estimator, training.lr, 0.0 if adaptive else training.weight_decay)
    truth = simulator.true_posterior(prior)
    quota = None
    if config.buffer.prior_fraction == "adaptive":
        adaptive = config.buffer.adaptive
        quota = AdaptiveQuota(adaptive.low, adaptive.high, adaptive.half_life)
    state = RunState(config, simulator, prior, estimator, optimizer, truth=truth, quota=quota, decay=decay)
    if config.proposal.method == "truncated":
        state.regions = RegionCache(config, simulator)
    return state


def restore(config: RunConfig, blob: bytes) -> RunState:
    """A state rebuilt from a checkpoint written by `RunState.to_bytes`."""
    state = new_state(config)
    saved = torch.load(io.BytesIO(blob), weights_only=True, map_location="cpu")  # then into the estimator's device
    state.estimator.load_state_dict(saved["estimator"])
    state.optimizer.load_state_dict(saved["optimizer"])
    state.step = state.next_proposal = saved["step"]
    state.drawn_prior = saved["drawn_prior"]
    state.drawn_total = saved["drawn_total"]
    state.alarm = Alarm(**saved.get("alarm", {}))
    if state.quota is not None and saved.get("quota") is not None:
        state.quota.current = saved["quota"]
    state.sound = saved.get("sound")
    state.rollbacks = saved.get("rollbacks", 0)
    state.lr_scale = saved.get("lr_scale", 1.0)
    if state.decay is not None and saved.get("decay") is not None:
        state.decay = DecayControl(**saved["decay"])  # (the decay in force is in the optimizer's state)
    if saved.get("steer_weights") is not None:
        state.steer_weights = Weights(*saved["steer_weights"])
    return state
