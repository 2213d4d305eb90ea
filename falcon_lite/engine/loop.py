"""One run's step, written once: propose -> simulate -> store -> train -> diagnose.

The inline runtime calls these in a plain loop; the Ray runtime calls the same functions
from its actors (proposal sampler, simulators, trainer). Importing it does not import torch
(the training functions do, when called): the Ray actors that only propose, simulate or
write start without it.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import numpy as np

from falcon_lite.core import alarm, diagnostics
from falcon_lite.core.policy import Origin, Sizes, prior_draws
from falcon_lite.core.proposal import TemperedProposal, disfavour_mask, draw_parameters
from falcon_lite.core.protocols import Prior, Simulator
from falcon_lite.core.samples import Delta, Samples, finite_rows
from falcon_lite.core.truncation import TruncatedPrior
from falcon_lite.engine import regions
from falcon_lite.engine.checks import sample_checks
from falcon_lite.engine.streams import BATCH, NOISE, PRIOR, PROPOSAL, rng

if TYPE_CHECKING:
    from falcon_lite.config import RunConfig
    from falcon_lite.engine.state import RunState
    from falcon_lite.store.buffer import SampleStore
    from falcon_lite.store.mirror import Mirror

Posterior = tuple[np.ndarray, np.ndarray]  # (mean (D,), var (D,)) at x_obs


class RunDiverged(RuntimeError):
    """The estimate became non-finite (or its variance zero): the run cannot go on."""


def sizes_of(state: RunState) -> Sizes:
    return sizes_for(state.config, state.prior_fraction)


def sizes_for(config: RunConfig, prior_fraction: float) -> Sizes:
    b = config.buffer
    return Sizes(b.validation_size, b.min_training, b.max_training, prior_fraction)


def posterior_at_obs(state: RunState) -> Posterior:
    """The learned posterior (mean, var) at x_obs with the current weights (read-only arrays).

    For an amortized estimator one forward pass per optimizer step: `diagnose` after step s and
    the proposal of step s + 1 see the same weights, so the second reuses the first's result
    until `train` changes them. (A likelihood estimator's posterior moves its MAP warm start,
    so it is not reused.)
    """
    cached = state.at_obs
    if cached is not None and cached[0] == state.step:
        return cached[1], cached[2]
    mean, var = state.estimator.posterior(state.simulator.x_obs)
    if state.estimator.amortized:
        mean.setflags(write=False)
        var.setflags(write=False)
        state.at_obs = (state.step, mean, var)
    return mean, var


def posterior_for(state: RunState, step: int) -> Posterior | None:
    """The posterior (mean, var) at x_obs that steers step `step`; None during the prior-only warm-up."""
    if step < state.config.training.warmup_steps:
        return None
    mean, var = posterior_at_obs(state)
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(var)) and np.all(var > 0)):
        raise RunDiverged(f"step {step}: posterior at x_obs has mean {mean} and variance {var}")
    return mean, var


Steer = Posterior | regions.Weights  # what steers a batch's proposal (None: the warm-up)


def steer_for(state: RunState, step: int) -> Steer | None:
    """What steers step `step`'s proposal: None during the warm-up; the (mean, var) at x_obs
    for a Gaussian proposal; for a truncated one the weights version in force (a copy, taken
    afresh once `proposal.region_every` steps have passed since the last: engine/regions.py).

    The divergence check (`posterior_for`) runs wherever the proposal changes: every step for a
    Gaussian one, with each new weights version for a truncated one (whose proposal does not
    read the moments, which cost a flow ~1000 draws).
    """
    if state.config.proposal.method == "gaussian" or step < state.config.training.warmup_steps:
        return posterior_for(state, step)
    held = state.steer_weights
    if held is None or state.step - held.version >= state.config.proposal.region_every:
        posterior_for(state, step)
        held = state.steer_weights = regions.Weights(state.step, copy.deepcopy(state.estimator.state_dict()))
    return held


def propose_from(config: RunConfig, prior: Prior, step: int, posterior: Posterior | TruncatedPrior | None,
                 fraction: float) -> Samples:
    """Draw step `step`'s parameters for a run of `config`: the prior share by the quota
    `fraction`, the rest from N(mean, var * T) or from the truncated prior given.

    A function of (seed, step, posterior, fraction) alone, so a sampler anywhere draws the same numbers.
    """
    n = config.buffer.simulations_per_step
    if posterior is None:
        proposal, n_prior = None, n
    elif isinstance(posterior, TruncatedPrior):
        proposal, n_prior = posterior, prior_draws(fraction, n)
    else:
        proposal = TemperedProposal(posterior[0], posterior[1], config.proposal.temperature, prior.support)
        n_prior = prior_draws(fraction, n)
    seed = config.training.seed
    # a stream's generator only where it draws (making one costs as much as the draw)
    theta, origin, log_q, log_prior = draw_parameters(
        prior, proposal, n, n_prior,
        rng(seed, PRIOR, step) if n_prior else None, rng(seed, PROPOSAL, step) if n_prior < n else None,
    )
    return Samples(theta, None, origin, log_q, log_prior, step=step)


def propose(state: RunState, step: int) -> Samples:
    steer = steer_for(state, step)
    if isinstance(steer, regions.Weights):  # the run's own RegionCache, as a Ray sampler has one
        steer = state.regions.region(steer)
    return propose_from(state.config, state.prior, step, steer, state.prior_fraction)


def chunk_count(n: int, chunk: int | None) -> int:
    """Chunks of a batch of `n` rows simulated `chunk` rows at a time (None: one, the whole batch)."""
    return 1 if chunk is None else -(-n // chunk)


def chunk_rows(proposed: Samples, chunk: int | None, k: int) -> Samples:
    """Chunk `k` of a proposed batch: rows [k c, (k + 1) c), the last one shorter (None: all rows)."""
    return proposed if chunk is None else proposed.take(slice(k * chunk, (k + 1) * chunk))


def simulate_chunk(simulator: Simulator, proposed: Samples, seed: int, chunk: int | None, k: int) -> Samples:
    """Simulate chunk `k` of a step's batch with its own noise stream (seed, NOISE, step, k);
    with `chunk` None the whole batch with the step's stream (seed, NOISE, step), as always.
    Its numbers depend on (seed, step, k) and its parameters alone, not on where it runs."""
    rows = chunk_rows(proposed, chunk, k)
    stream = rng(seed, NOISE, proposed.step) if chunk is None else rng(seed, NOISE, proposed.step, k)
    return rows.with_x(simulator(rows.theta, stream))


def simulate(simulator: Simulator, proposed: Samples, seed: int, chunk: int | None = None) -> Samples:
    """Run the simulator on a step's parameters: in one call with that step's noise stream, or
    chunk by chunk (`runtime.simulation_chunk` rows each, with their own streams) one after
    another: the same rows a pool of simulators gives, each running some of the chunks."""
    parts = range(chunk_count(len(proposed), chunk))
    return Samples.concat([simulate_chunk(simulator, proposed, seed, chunk, k) for k in parts])


def unsimulated(rows: Samples, x_shape: tuple[int, ...]) -> Samples:
    """`rows` with non-finite x (a failed simulation): the store rejects and counts them."""
    return rows.with_x(np.full((len(rows), *x_shape), np.nan))


def follow(state: RunState, mirror: Mirror, batch: Samples, delta: Delta) -> Delta:
    """Take a stored batch into the mirror (without a query when `delta` is the change after
    the mirror's version) and into the run's counters."""
    mirror.apply(delta)
    state.drawn_prior += int(np.count_nonzero(batch.origin == Origin.PRIOR))
    state.drawn_total += len(batch)
    state.next_proposal = max(state.next_proposal, batch.step + 1)
    return delta


def held_out(state: RunState, batch: Samples) -> dict:
    """Ground-truth-free checks on a fresh batch before it is trained on: for an estimator
    with its own density (the flow) its loss on the batch (`held_out_loss`); on the batch's
    proposal rows, the explosion alarm (core/alarm.py) and the expected coverage of the current
    posterior, both from one forward pass (`training.batch_checks`; a flow's pass is draws).

    Only for an amortized estimator (a likelihood estimator's posterior at every x would
    need a MAP fit each).
    """
    if not state.estimator.amortized:
        return {}
    row = held_out_loss(state.estimator, batch)
    if state.decay is not None and "held_out_loss" in row:  # training.weight_decay = "adaptive"
        decay = state.decay.observe_held_out(row["held_out_loss"])
        if decay is not None:
            from falcon_lite.core.training import set_weight_decay

            set_weight_decay(state.optimizer, decay)
            row["weight_decay"] = decay
    keep = (batch.origin == Origin.PROPOSAL) & finite_rows(batch.x)
    if not state.config.training.batch_checks or np.count_nonzero(keep) < 2:
        return row
    theta, x = batch.theta[keep], batch.x[keep]
    mean, var = state.estimator.posterior_batch(x)  # (no grad)
    z = float(np.max(alarm.residual_z(theta, mean)))
    raised = state.alarm.observe(z)
    row.update({"alarm_z": z, "alarm_ema": state.alarm.ema, "alarm": float(raised)})
    row.update(diagnostics.coverage(theta, mean, var, per_dim=False))
    if state.quota is not None:  # buffer.prior_fraction = "adaptive": the quota follows the alarm
        state.quota.observe(raised)
        respond(state, raised)
        row["rollbacks"] = float(state.rollbacks)
    return row


def held_out_loss(est, batch: Samples) -> dict:
    """``held_out_loss``: the training loss of an estimator with its own density (the flow's
    -mean log q(theta | x), importance-weighted where its training is) on a fresh batch's rows
    with finite x, under the weights before any step has seen them: a held-out loss that costs
    no simulation. Falling, the flow learns the posterior; rising while the training loss falls,
    it learns the pool (docs/flows.md, "Overfitting seen as it happens"). {} for another
    estimator, or a batch with no finite row."""
    from falcon_lite.core import training

    keep = finite_rows(batch.x)
    if not training.trains_its_own_density(est) or not np.any(keep):
        return {}
    return {"held_out_loss": training.held_out_loss(est, batch.take(keep))}


SOUND_EVERY = 50  # steps between snapshots of a healthy run (adaptive rollback)


def respond(state: RunState, raised: bool) -> None:
    """The adaptive policy's rollback (`buffer.adaptive.rollback`): while the run is sound
    (its alarm's average below half the threshold, after a full healthy stretch), keep a
    snapshot every SOUND_EVERY steps; when the alarm fires, go back to the last one."""
    if not state.config.buffer.adaptive.rollback:
        return
    if raised and state.sound is not None:
        state.roll_back()
    elif (state.alarm.sound and state.alarm.healthy >= alarm.ARM_STEPS
          and (state.sound is None or state.step - state.sound["step"] >= SOUND_EVERY)):
        state.keep_sound()


def train_and_diagnose(state: RunState, store: SampleStore, mirror: Mirror, step: int,
                       checks: dict | None = None, passed: bool = False) -> dict | None:
    """Disfavour stale proposal samples, take one optimizer step (none where the early stop
    `passed` over it), and return the metrics row (with the held-out `checks` of the step's
    fresh batch) when diagnostics are due."""
    if store.sizes.prior_fraction != state.prior_fraction:  # the adaptive quota moved
        store.sizes = sizes_of(state)
    seqs = disfavoured(state, mirror, step)
    if len(seqs):
        mirror.apply(store.disfavour(seqs))
    stats = passed_over(state) if passed else train(state, mirror, step)
    state.step = step + 1
    every = state.config.training.diagnostics_every
    sampled = sample_checks(state, mirror, step)
    if step % every == 0 or state.step == state.config.training.steps or sampled:
        row = diagnose(state, step, stats, mirror)
        row.update(checks or {})
        row.update(sampled)
        return row
    return None


def passes_over(state: RunState, position: int, k: int) -> bool:
    """`training.early_stop`: whether the step at `position` of a batch's `k` steps (0: the first
    after the batch came in) is passed over, as the held-out gap says (core/decay.py)."""
    early = state.config.training.early_stop
    return early is not None and position >= state.decay.steps_to_take(k, early.limit, early.min_share)


def passed_over(state: RunState) -> dict:
    """A step the early stop passes over: no optimizer step; its loss is the running training loss."""
    state.decay.passed += 1
    return {"loss": state.decay.train, "ess": 1.0}


def train(state: RunState, mirror: Mirror, step: int) -> dict:
    """One optimizer step on a batch drawn from the mirror of the trainable pool.

    While the pool is still empty (VALIDATION fills first) there is nothing to train on.
    """
    from falcon_lite.core.training import set_lr, train_step

    cfg = state.config
    if mirror.trainable_size == 0:
        return {"loss": float("nan"), "ess": 1.0}
    set_lr(state.optimizer, state.lr(step))
    state.at_obs = None  # the weights change below
    batch = mirror.draw(cfg.training.batch_size, rng(state.seed, BATCH, step), state.prior_fraction)
    validation = mirror.validation() if cfg.estimator.variance_source == "validation" else None
    stats = train_step(state.estimator, state.optimizer, batch, validation)
    if state.decay is not None:
        state.decay.observe_step(stats["loss"])
    return stats


def disfavoured(state: RunState, mirror: Mirror, step: int) -> np.ndarray:
    """Seqs of trainable proposal samples whose log q ratio fell below the configured threshold."""
    threshold = state.config.proposal.discard_log_ratio
    posterior = None if threshold is None else posterior_for(state, step)
    if posterior is None:
        return np.empty(0, dtype=np.int64)
    proposal = TemperedProposal(posterior[0], posterior[1], state.config.proposal.temperature, state.prior.support)
    pool = mirror.trainable()
    mask = pool.origin == Origin.PROPOSAL
    mask &= disfavour_mask(pool.log_q, proposal.log_prob(pool.theta), threshold)
    return pool.seq[mask]


def diagnose(state: RunState, step: int, stats: dict, mirror: Mirror) -> dict:
    """The step's metrics row: the estimate against the reference posterior (where the problem
    has one; per parameter too), the loss, and the buffer's mix."""
    mean, var = posterior_at_obs(state)
    row = {"step": step, "loss": stats["loss"], "ess": stats.get("ess", 1.0), "lr": state.lr(step)}
    if state.truth is not None:
        summary = diagnostics.summarize(mean, var, *state.truth)
        row.update({k: float(v) for k, v in summary.items() if isinstance(v, (int, float, np.floating))})
        row["constant_regime"] = float(summary["regime"] == "constant")
    else:  # ground-truth free: the estimate itself (the alarm and coverage come with the held-out checks)
        row.update({f"mean_{d}": float(m) for d, m in enumerate(np.ravel(mean))})
        row.update({f"learned_var_{d}": float(v) for d, v in enumerate(np.ravel(var))})
    row["learned_var"] = float(np.max(var))
    row["proposal_width"] = float(np.max(np.sqrt(var * state.config.proposal.temperature)))
    row["prior_fraction"] = state.prior_fraction
    row["prior_drawn_share"] = state.drawn_prior / state.drawn_total if state.drawn_total else 0.0
    if state.config.training.early_stop is not None:
        row["passed_steps"] = float(state.decay.passed)
    row.update(pool_mix(mirror))
    return row


def posterior_draws(state: RunState, n: int, generator, rounds: int = 100) -> np.ndarray:
    """n draws ``(n, D)`` from the run's estimate at x_obs, within the prior's support where it is
    bounded (the posterior has no mass outside it): draws outside are drawn again, up to
    `rounds` times; a posterior that keeps missing the support raises `ValueError`."""
    draws = state.estimator.sample(state.simulator.x_obs, n, generator)
    support = state.prior.support
    if support is None:
        return draws
    kept = draws[np.all((draws >= support[0]) & (draws <= support[1]), axis=1)]
    for _ in range(rounds):
        if len(kept) >= n:
            return kept[:n]
        more = state.estimator.sample(state.simulator.x_obs, n, generator)
        kept = np.concatenate([kept, more[np.all((more >= support[0]) & (more <= support[1]), axis=1)]])
    if len(kept) >= n:
        return kept[:n]
    raise ValueError(f"the estimate at x_obs puts almost no mass inside the prior's support "
                     f"({len(kept)} of {n * (rounds + 1)} draws): it cannot be sampled there")


def pool_mix(mirror: Mirror) -> dict:
    """The buffer's live composition as the trainer sees it (no query, no copy)."""
    n, n_prior = mirror.trainable_size, mirror.trainable_prior_size
    return {
        "trainable": float(n),
        "trainable_prior": float(n_prior),
        "validation": float(mirror.validation_size),
        "prior_share": n_prior / n if n else 0.0,
    }
