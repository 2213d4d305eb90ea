"""RunConfig v1: one run's whole configuration, validated.

Every field has a default and the defaults are the seed's explosion scenario exactly
(x = z + noise, sigma_obs = 1e-6, x_obs = 0.3, prior N(0, 1), MLP 1-64-64-1 in float64,
MSE mean + EMA variance, T = 2, batch 128, one fresh batch of simulations per step).
Unknown fields are rejected; impossible values are rejected with the field named.
Names here are part of the REST and stress contracts (grid keys are dotted paths).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

PositiveInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SimulatorConfig(Strict):
    name: Literal["gaussian", "exp_noise"] = "gaussian"
    sigma_obs: PositiveFloat = 1e-6
    x_obs: list[Annotated[float, Field(allow_inf_nan=False)]] | None = Field(
        default=None,
        description="Observed x. Default: [0.3] for gaussian; exp(z_true) for exp_noise.",
    )
    z_true: list[Annotated[float, Field(allow_inf_nan=False)]] | None = Field(
        default=None,
        description="Ground-truth parameters that generate x_obs (exp_noise default [-5, 0, 5]).",
    )

    @model_validator(mode="after")
    def _fill_observation(self) -> SimulatorConfig:
        if self.name == "gaussian" and self.x_obs is None:
            object.__setattr__(self, "x_obs", list(self.z_true) if self.z_true else [0.3])
        if self.name == "exp_noise":
            if self.z_true is None and self.x_obs is None:
                object.__setattr__(self, "z_true", [-5.0, 0.0, 5.0])
            if self.x_obs is None:
                if any(z > 700 for z in self.z_true):
                    raise ValueError("z_true too large: exp(z_true) overflows (exp_noise needs z_true <= 700)")
                object.__setattr__(self, "x_obs", [math.exp(z) for z in self.z_true])
        if not self.x_obs:
            raise ValueError("x_obs must hold at least one value")
        if self.z_true is not None and len(self.z_true) != len(self.x_obs):
            raise ValueError("z_true and x_obs must have the same length")
        return self

    @property
    def dim(self) -> int:
        return len(self.x_obs)


class PriorConfig(Strict):
    name: Literal["normal", "uniform"] = "normal"
    loc: Annotated[float, Field(allow_inf_nan=False)] = Field(0.0, description="normal: mean")
    scale: PositiveFloat = Field(1.0, description="normal: standard deviation")
    low: Annotated[float, Field(allow_inf_nan=False)] = Field(-10.0, description="uniform: lower bound")
    high: Annotated[float, Field(allow_inf_nan=False)] = Field(10.0, description="uniform: upper bound")

    @model_validator(mode="after")
    def _bounds(self) -> PriorConfig:
        if self.name == "uniform" and not self.low < self.high:
            raise ValueError("uniform prior needs low < high")
        return self


class ProblemConfig(Strict):
    """A registered problem (entry-point group ``falcon_lite.problems``), its factory's
    parameters, and the observation: a named one of the problem's, or ``x_obs`` itself
    (nested lists of the shape of x); neither means the problem's first observation."""

    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$",
                      description="A registered problem (GET /problems lists them).")
    params: dict[str, Any] = Field(default_factory=dict, description="Keyword parameters of the problem's factory.")
    observation: str | None = Field(default=None, description="One of the problem's named observations.")
    x_obs: Any = Field(default=None, description="The observed x (nested lists of the shape of x).")

    @field_validator("x_obs")
    @classmethod
    def _finite(cls, v: Any) -> Any:
        if v is None:
            return v
        try:
            values = [float(f) for f in _flatten(v)]
        except (TypeError, ValueError):
            raise ValueError("must be a number or nested lists of numbers") from None
        if not values or not all(math.isfinite(f) for f in values):
            raise ValueError("must hold at least one value, all finite")
        return v

    @model_validator(mode="after")
    def _one_observation(self) -> ProblemConfig:
        if self.observation is not None and self.x_obs is not None:
            raise ValueError("give observation or x_obs, not both")
        return self


def _flatten(v: Any):
    if isinstance(v, (list, tuple)):
        for item in v:
            yield from _flatten(item)
    else:
        if isinstance(v, bool):
            raise TypeError("a boolean is not a number")
        yield v


# Named estimator settings. "calibrated": a residual mean head, mu(x) = base(x) + base'(x) r(x) with
# base the simulator's known inverse, on online-standardised inputs and outputs; it stays
# calibrated with prior mixing (docs/calibration.md).
PRESETS: dict[str, dict[str, Any]] = {"calibrated": {"residual": True, "normalize": True, "residual_base": "auto"}}


class EmbeddingConfig(Strict):
    """What the estimator conditions on instead of the raw x (falcon_lite/core/embeddings.py):
    ``identity`` (x flattened), ``mlp``, ``cnn1d`` (series), or a registered plugin
    (entry-point group ``falcon_lite.embeddings``) with its factory's ``params``."""

    name: str = Field("identity", min_length=1, max_length=200, pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$")
    hidden: list[PositiveInt] = Field(default_factory=lambda: [64], description="mlp: hidden widths")
    features: PositiveInt = Field(16, description="mlp, cnn1d: features out")
    channels: list[PositiveInt] = Field(default_factory=lambda: [8, 16], description="cnn1d: channels per layer")
    kernel: PositiveInt = Field(5, description="cnn1d: kernel size")
    params: dict[str, Any] = Field(default_factory=dict, description="a plugin's factory parameters")


class EstimatorConfig(Strict):
    name: Literal["gaussian_ema", "gaussian_nle", "flow"] = "gaussian_ema"
    preset: Literal["calibrated"] | None = Field(
        default=None, description="Named settings applied on top of the fields: " + ", ".join(PRESETS)
    )
    hidden: list[PositiveInt] = Field(default_factory=lambda: [64, 64])
    activation: Literal["tanh", "relu", "gelu", "silu"] = "tanh"
    dtype: Literal["float64", "float32"] = "float64"
    ema_momentum: Annotated[float, Field(gt=0, le=1)] = 0.01
    normalize: bool = False
    residual: bool = False
    residual_base: Literal["identity", "log", "auto"] = Field(
        "identity",
        description='With residual: the known inverse the residual is taken around, mu(x) = base(x) + base\'(x) r(x) '
        '("log" for x = exp(z) + noise; "auto": the simulator\'s own, identity for gaussian, log for exp_noise).',
    )
    center_output: bool = Field(
        True, description="With normalize: subtract the target's running mean (false: scale only, for residual targets)."
    )
    loss: Literal["mse", "nll"] = "mse"
    variance_source: Literal["batch", "validation", "proposal"] = Field(
        "batch",
        description="Residuals the EMA variance is taken from: the training batch, the VALIDATION set, or the "
        "training batch's proposal-origin rows only (the region of x_obs, where the width is measured).",
    )
    importance_weighting: bool = False
    embedding: EmbeddingConfig = Field(default_factory=EmbeddingConfig)
    flow: Literal["nsf", "maf"] = Field(
        "nsf", description='name = "flow": neural spline flow ("nsf") or masked autoregressive flow ("maf") (zuko).'
    )
    transforms: PositiveInt = Field(3, description='name = "flow": the number of autoregressive transforms.')
    bins: Annotated[int, Field(ge=2)] = Field(8, description='name = "flow", flow = "nsf": spline bins.')
    passes: Annotated[int, Field(ge=2)] | None = Field(
        None, description='name = "flow": the sequential passes of each transform\'s inverse (sampling). null: one '
        "per parameter (fully autoregressive); 2: a coupling flow (half the parameters condition the other half), "
        "whose sampling costs two passes whatever the dimension.",
    )

    @model_validator(mode="after")
    def _base_is_for_the_posterior(self) -> EstimatorConfig:
        if self.name == "gaussian_nle" and self.residual_base not in ("identity", "auto"):
            raise ValueError("residual_base applies to the posterior estimator (gaussian_ema) only")
        return self

    @model_validator(mode="after")
    def _apply_preset(self) -> EstimatorConfig:
        for name, value in PRESETS.get(self.preset, {}).items():
            if name in self.model_fields_set and getattr(self, name) != value:
                raise ValueError(f"preset {self.preset!r} sets {name}={value}: drop {name} or the preset")
            object.__setattr__(self, name, value)
        return self

    @model_validator(mode="after")
    def _options_fit_the_estimator(self) -> EstimatorConfig:
        # (after the preset, so that a preset's settings are checked too)
        fields = type(self).model_fields
        if self.name == "flow":
            for name in ("residual", "center_output", "loss", "variance_source"):
                if getattr(self, name) != fields[name].default:
                    raise ValueError(
                        f"estimator 'flow' does not use {name}={getattr(self, name)!r}: its loss is always "
                        "-log q(theta | x) and its width is the flow's own (use normalize for standardisation)"
                    )
        else:
            for name in ("flow", "transforms", "bins", "passes"):
                if getattr(self, name) != fields[name].default:
                    raise ValueError(f"{name} applies to estimator 'flow' only, not {self.name!r}")
        return self


class ProposalConfig(Strict):
    method: Literal["gaussian", "truncated"] = Field(
        "gaussian",
        description='How proposal rows are drawn. "gaussian": N(mean, var * temperature) of the estimate at x_obs '
        '(the seed\'s). "truncated": the prior restricted to the highest-density region of the estimate at x_obs '
        "holding 1 - hpd_epsilon of its mass (TSNPE; needs an estimator with a density, e.g. the flow; "
        "docs/flows.md).",
    )
    temperature: PositiveFloat = 2.0
    hpd_epsilon: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)] = Field(
        1e-4, description='method = "truncated": the mass of the estimate left outside the region.'
    )
    region_every: PositiveInt = Field(
        50, description='method = "truncated": steps between two regions (each from the weights of its step).'
    )
    region_draws: Annotated[int, Field(ge=100)] = Field(
        10_000, description='method = "truncated": draws from the estimate at x_obs behind the region\'s threshold.'
    )
    discard_log_ratio: Annotated[float, Field(allow_inf_nan=False)] | None = Field(
        default=None,
        description="Mark proposal samples DISFAVOURED when log q_now - log q_drawn falls below this.",
    )

    @model_validator(mode="after")
    def _discard_is_gaussian(self) -> ProposalConfig:
        if self.method == "truncated" and self.discard_log_ratio is not None:
            raise ValueError('discard_log_ratio compares Gaussian proposals: it does not apply to method "truncated"')
        return self


Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


class AdaptiveQuotaConfig(Strict):
    """`buffer.prior_fraction = "adaptive"`: the explosion alarm steers the prior share."""

    low: Fraction = Field(0.0, description="The share while the run is healthy (the base).")
    high: Fraction = Field(
        0.0, description="The share the alarm raises it to (0: the alarm rolls back instead; see docs/calibration.md)."
    )
    half_life: PositiveInt = Field(
        500, description="Batches for the share's excess over `low` to halve once the alarm has cleared."
    )
    rollback: bool = Field(
        True,
        description="When the alarm fires, restore the estimator, optimizer and alarm to the last healthy "
        "snapshot (taken while the alarm's average was below half its threshold) and cool the learning rate.",
    )
    lr_factor: float = Field(
        0.1, gt=0, le=1, allow_inf_nan=False,
        description="Each rollback multiplies the learning rate by this (1: keep it).",
    )

    @model_validator(mode="after")
    def _bounds(self) -> AdaptiveQuotaConfig:
        if self.low > self.high:
            raise ValueError("low must not exceed high")
        return self


def number_or_adaptive(v: float | str, fits, number: str, bounds: str) -> float | str:
    """A field that is a finite number that `fits`, or "adaptive", with one clear error for
    either form (a plain union would report one per member): `number` names the numbers in the
    error for a string, `bounds` in the error for a number."""
    if isinstance(v, str):
        if v != "adaptive":
            raise ValueError(f'must be {number} or "adaptive", got {v!r}')
        return v
    if not (math.isfinite(v) and fits(v)):
        raise ValueError(f"must be {bounds}, got {v}")
    return v


class BufferConfig(Strict):
    validation_size: NonNegInt = 0
    min_training: NonNegInt = 128
    max_training: PositiveInt = 128
    prior_fraction: float | str = Field(
        0.0, description='The prior-mixing quota f in [0, 1], or "adaptive" (see `adaptive`).', examples=[0.2, "adaptive"]
    )
    adaptive: AdaptiveQuotaConfig = Field(default_factory=AdaptiveQuotaConfig)
    simulations_per_step: PositiveInt = 128

    @model_validator(mode="after")
    def _sizes(self) -> BufferConfig:
        if self.min_training > self.max_training:
            raise ValueError("min_training must not exceed max_training")
        return self

    @field_validator("prior_fraction")
    @classmethod
    def _fraction_or_adaptive(cls, v: float | str) -> float | str:
        return number_or_adaptive(v, lambda f: 0.0 <= f <= 1.0, "a number in [0, 1]",
                                  "greater than or equal to 0 and less than or equal to 1")

    @property
    def initial_fraction(self) -> float:
        """The quota a run starts with (the adaptive policy's base)."""
        return self.adaptive.low if self.prior_fraction == "adaptive" else self.prior_fraction


class AdaptiveDecayConfig(Strict):
    """`training.weight_decay = "adaptive"`: the decay follows the held-out gap (core/decay.py)."""

    ceiling: PositiveFloat = Field(0.2, description="The decay at a gap of `scale` nats or more.")
    scale: PositiveFloat = Field(
        2.0, description="The gap (held-out loss minus training loss, nats) at which the decay reaches `ceiling`; "
        "below it the decay is in proportion.")


class EarlyStopConfig(Strict):
    """`training.early_stop`: of each batch's k optimizer steps, fewer where the held-out gap is
    wide (core/decay.py)."""

    limit: PositiveFloat = Field(
        1.0, description="The gap (held-out loss minus training loss, nats) above which a batch's later steps are "
        "passed over: of its k steps, k * limit / gap are taken.")
    min_share: float = Field(0.2, gt=0.0, le=1.0, allow_inf_nan=False,
                             description="The least share of a batch's steps taken (at least one).")


class TrainingConfig(Strict):
    steps: PositiveInt = 10_000
    batch_size: PositiveInt = 128
    lr: PositiveFloat = 1e-2
    warmup_steps: NonNegInt = 1000
    lr_after_warmup: PositiveFloat = 1e-3
    lr_decay: Literal["none", "cosine"] = Field(
        "none", description='After the warm-up: "none" keeps lr_after_warmup; "cosine" lowers it along a half '
        "cosine to zero at the last step (for a run of known length: the last steps average out the noise "
        "of the batches).",
    )
    weight_decay: float | str = Field(
        0.0, description="Adam's L2 penalty on every weight (torch.optim.Adam's weight_decay: added to the "
        "gradient). 0: none. A flow trained many steps on a small pool overfits without it (docs/flows.md). "
        '"adaptive" (an estimator with a density): set after every batch from the gap between its held-out '
        "and its training loss (see `adaptive_decay`; core/decay.py).",
        examples=[0.1, "adaptive"],
    )
    adaptive_decay: AdaptiveDecayConfig = Field(default_factory=AdaptiveDecayConfig)
    early_stop: EarlyStopConfig | None = Field(
        None, description="An estimator with a density, k steps per batch (`runtime.steps_per_batch`): a batch's "
        "later optimizer steps are passed over while its held-out gap is wide, sbi's early stop made for a stream "
        "(core/decay.py; docs/flows.md). null: every step is taken.",
        examples=[{"limit": 1.0, "min_share": 0.2}],
    )

    @field_validator("weight_decay")
    @classmethod
    def _decay_or_adaptive(cls, v: float | str) -> float | str:
        return number_or_adaptive(v, lambda d: d >= 0.0, "a number >= 0", 'a number >= 0 or "adaptive"')
    diagnostics_every: PositiveInt = 1
    batch_checks: bool = Field(
        True, description="The explosion alarm and the expected coverage on every fresh batch's proposal rows, "
        "before it is trained on (alarm_* and coverage in the metrics rows, alarm events). false: none; for "
        "an estimator whose posterior at each row takes draws (the flow), they are a tenth of a run's time. "
        'buffer.prior_fraction = "adaptive" needs them (the alarm steers its quota).')
    c2st_every: PositiveInt | None = Field(
        default=None,
        description="Steps between C2STs of the estimate at x_obs against the problem's reference samples (and at "
        "the last step); null: never. Seconds each (a classifier is trained).",
    )
    coverage_every: PositiveInt | None = Field(
        default=None,
        description="Steps between expected-coverage checks (TARP; HPD for an estimator with a density) on the "
        "VALIDATION rows, with per-parameter marginals at x_obs (and at the last step); null: never.",
    )
    checkpoint_every: PositiveInt = 500
    seed: int = 42
    device: Literal["cpu", "cuda"] = Field(
        "cpu", description="Where the estimator trains: cuda needs a CUDA device where the trainer runs "
        "(on Ray the trainer asks for a GPU). Samples, proposals and diagnostics stay on the CPU.")


class RuntimeConfig(Strict):
    simulators: PositiveInt = 2
    in_flight: PositiveInt = Field(4, description="Simulation batches in flight ahead of training (Ray).")
    steps_per_batch: PositiveInt | None = Field(
        default=1,
        description=(
            "Optimizer steps the trainer may take per simulated batch it ingests. 1 (default) is the "
            "seed's lock-step (each batch trained once); k trains up to k steps per batch (exactly k "
            "inline: a run of S steps simulates ceil(S / k) batches); null trains continuously on the "
            "buffer while batches arrive (falcon-style; Ray only, the inline runtime runs it lock-step)."
        ),
    )
    simulator_fail_every: PositiveInt | None = Field(
        default=None,
        description="Fault injection: every Nth call of a simulator actor raises (to test recovery).",
    )
    simulation_chunk: PositiveInt | None = Field(
        default=None,
        description=(
            "Rows per simulator call. A step's batch is simulated in chunks of this many rows, chunk k "
            "with its own noise stream (seed, noise, step, k), spread over the simulator actors on Ray and "
            "one after another inline: the same numbers whichever actor ran which chunk. null: the whole "
            "batch in one call (the step's own stream)."
        ),
    )
    simulator_delay_ms: float | None = Field(
        default=None, ge=0, allow_inf_nan=False,
        description="Bench knob: each call of a simulator actor (Ray) sleeps this many milliseconds per row.",
    )


class RunConfig(Strict):
    name: str = Field("run", min_length=1, max_length=200)
    problem: ProblemConfig | None = Field(
        default=None,
        description="The problem (v2). Without it the v1 sections `simulator` and `prior` name the built-in "
        "problem (`gaussian` or `exp_noise`) and its parameters: the same run.",
    )
    simulator: SimulatorConfig = Field(default_factory=SimulatorConfig)
    prior: PriorConfig = Field(default_factory=PriorConfig)
    estimator: EstimatorConfig = Field(default_factory=EstimatorConfig)
    proposal: ProposalConfig = Field(default_factory=ProposalConfig)
    buffer: BufferConfig = Field(default_factory=BufferConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    @model_validator(mode="after")
    def _one_problem(self) -> RunConfig:
        # (a stored v2 config holds the v1 sections' defaults: those mean nothing)
        if self.problem is not None and (self.simulator != SimulatorConfig() or self.prior != PriorConfig()):
            raise ValueError("give either `problem` or the v1 sections `simulator` and `prior`, not both")
        return self

    def problem_spec(self) -> ProblemConfig:
        """The problem this run infers, the v1 sections translated to their built-in plugin."""
        if self.problem is not None:
            return self.problem
        s, p = self.simulator, self.prior
        params: dict[str, Any] = {"dim": s.dim, "sigma_obs": s.sigma_obs, "prior": p.name, "loc": p.loc,
                                  "scale": p.scale, "low": p.low, "high": p.high}
        if s.z_true is not None:
            params["z_true"] = list(s.z_true)
        return ProblemConfig(name=s.name, params=params, x_obs=list(s.x_obs))

    @field_validator("name")
    @classmethod
    def _printable(cls, v: str) -> str:
        if not v.isprintable():
            raise ValueError("name must be printable text")
        return v


def with_overrides(config: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """Return a copy of `config` with dotted-path overrides applied and re-validated.

    >>> with_overrides(RunConfig(), {"buffer.prior_fraction": 0.2}).buffer.prior_fraction
    0.2
    """
    known = config.model_dump()
    data = config.model_dump(exclude_unset=True)  # defaults and presets are applied again
    for path, value in overrides.items():
        node, known_node = data, known
        *parents, leaf = path.split(".")
        for key in parents:
            if not isinstance(known_node.get(key), dict):
                raise KeyError(f"unknown config key {path!r}")
            known_node = known_node[key]
            node = node.setdefault(key, {})
        if leaf not in known_node:
            raise KeyError(f"unknown config key {path!r}")
        node[leaf] = value
    return RunConfig.model_validate(data)
