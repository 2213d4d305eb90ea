"""Request and response models of the REST contract (v1), one family per entity.

``RunCreate`` is a ``RunConfig`` plus ``start``; unknown fields are rejected, so a request
can only pick simulators and estimators by their registered names, never name code.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from falcon_lite.config import RunConfig, with_overrides
from falcon_lite.store.status import RunStatus


_RUN_EXAMPLE = {
    "name": "explosion-20pct",
    "buffer": {"prior_fraction": 0.2},
    "training": {"steps": 2000, "seed": 1},
    "start": True,
}


def _no_arithmetic_errors(data: Any, handler):
    """Validation that overflows (e.g. x_obs = exp(z_true) for a huge z_true) is bad input, not a 500."""
    try:
        return handler(data)
    except ArithmeticError as exc:
        raise ValueError(f"a value is out of numeric range ({type(exc).__name__}: {exc})") from None


class RunCreate(RunConfig):
    """A run's configuration (every field optional, defaults = the seed's scenario)."""

    model_config = ConfigDict(json_schema_extra={"examples": [_RUN_EXAMPLE]})

    start: bool = Field(True, description="false: only create the run (status pending)")

    @model_validator(mode="wrap")
    @classmethod
    def _in_range(cls, data: Any, handler):
        return _no_arithmetic_errors(data, handler)

    def config(self) -> RunConfig:
        return RunConfig.model_validate(self.model_dump(exclude={"start"}))


class RunPublic(BaseModel):
    """One run as the API shows it."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 1,
                    "name": "explosion-20pct",
                    "status": "running",
                    "step": 1200,
                    "config": RunConfig(name="explosion-20pct").model_dump(),
                    "diagnostics": {"step": 1200, "std_ratio": 1.03, "bias_over_sigma": 0.2,
                                    "loss": 1.1e-12},
                    "reason": None,
                }
            ]
        }
    )

    id: int
    name: str
    status: RunStatus
    step: int = Field(0, description="training steps done")
    config: dict[str, Any]
    diagnostics: dict[str, float | int | None] | None = Field(
        None, description="the latest metrics row, or null before the first step"
    )
    reason: str | None = Field(None, description="why the run stopped or failed, if it did")
    outcome: str | None = Field(
        None, description="the verdict on a run that ended: calibrated, exploded, miscalibrated or diverged "
        "(against the problem's reference posterior), else alarm_raised or alarm_quiet (the explosion alarm)")
    created: datetime | None = None
    updated: datetime | None = None


class RunsPublic(BaseModel):
    """A page of runs and the total count."""

    data: list[RunPublic]
    count: int = Field(description="number of runs in total (all pages)")


class Accepted(BaseModel):
    """Answer of stop/resume/start: accepted, the run moves on its own."""

    id: int
    status: RunStatus
    detail: str


class BufferPublic(BaseModel):
    """Composition of a run's sample buffer."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "counts": {"VALIDATION": {"prior": 0, "proposal": 0},
                               "TRAINING": {"prior": 26, "proposal": 102},
                               "DISFAVOURED": {"prior": 0, "proposal": 0},
                               "TOMBSTONE": {"prior": 0, "proposal": 0}},
                    "purged": 5000, "total": 5128,
                    "prior_share_trainable": 0.203, "prior_fraction": 0.2,
                }
            ]
        }
    )

    counts: dict[str, dict[str, int]]
    purged: int
    total: int
    prior_share_trainable: float | None
    prior_fraction: float | str | None


class PosteriorPublic(BaseModel):
    """Samples drawn from the run's current posterior estimate, shape (n, dim)."""

    run_id: int
    step: int = Field(description="the training step of the checkpoint they come from")
    n: int
    dim: int
    parameters: list[str] = Field(default_factory=list, description="the parameters' names, in column order")
    samples: list[list[float]]


class ReferencePublic(BaseModel):
    """Draws from the reference posterior of the run's problem at the run's observation, shape (n, dim)."""

    run_id: int
    problem: str
    kind: Literal["samples", "gaussian"] = Field(
        description="samples: rows of the reference's own samples; gaussian: draws from its exact Gaussian")
    n: int
    dim: int
    parameters: list[str] = Field(description="the parameters' names, in column order")
    mean: list[float] = Field(description="the reference's mean per parameter")
    std: list[float] = Field(description="the reference's standard deviation per parameter")
    samples: list[list[float]]


class Health(BaseModel):
    status: Literal["ok"]
    database: str
    version: str


class StressCreate(BaseModel):
    """A stress matrix: grid of dotted RunConfig overrides x seeds."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"grid": {"buffer.prior_fraction": [0.0, 0.2]}, "seeds": 2, "steps": 500}]
        },
    )

    grid: dict[str, list[Any]] = Field(
        description="dotted RunConfig paths -> values to try, e.g. {\"buffer.prior_fraction\": [0, 0.2]}",
        max_length=8,
    )
    seeds: int = Field(1, ge=1, le=100)
    steps: int = Field(1000, ge=1, le=1_000_000)
    base: RunConfig | None = None

    @model_validator(mode="wrap")
    @classmethod
    def _in_range(cls, data: Any, handler):
        return _no_arithmetic_errors(data, handler)

    @model_validator(mode="after")
    def _grid_applies(self) -> StressCreate:
        """Every grid value must give a valid RunConfig; the error names the key."""
        base = self.base or RunConfig()
        for key, values in self.grid.items():
            if not values:
                raise ValueError(f"grid[{key!r}] is empty: give at least one value")
            for value in values:
                try:
                    with_overrides(base, {key: value})
                except KeyError:
                    raise ValueError(f"grid key {key!r} is not a RunConfig field") from None
                except ValueError as exc:
                    first = exc.errors()[0]["msg"] if hasattr(exc, "errors") else str(exc)
                    raise ValueError(f"grid[{key!r}] value {value!r} is invalid: {first}") from None
        return self


class StressProgress(BaseModel):
    done: int = Field(description="runs finished")
    total: int | None = Field(None, description="runs in the matrix (null until the worker has planned them)")


class StressPublic(BaseModel):
    """A stress job: its status and, once done, results.json, report.md and plot URLs.

    A cancelled job keeps the runs that finished: ``results`` (with ``"complete": false``)
    and, if any run finished, ``report`` and ``plots``.
    """

    id: str
    status: Literal["queued", "running", "completed", "failed", "cancelled"]
    error: str | None = None
    progress: StressProgress = Field(default_factory=lambda: StressProgress(done=0))
    request: dict[str, Any] | None = None
    results: dict[str, Any] | None = None
    report: str | None = None
    plots: list[str] = Field(default_factory=list)


class ParameterPublic(BaseModel):
    name: str
    prior: dict[str, Any] = Field(description='{"family": "uniform" | "normal" | "log_uniform", ...its numbers}')


class ProblemPublic(BaseModel):
    """A registered problem (entry-point group ``falcon_lite.problems``), built with its factory's defaults."""

    name: str
    description: str | None = None
    parameters: list[ParameterPublic] | None = None
    x_shape: list[int] | None = None
    observations: list[str] | None = Field(default=None, description="its named observations (the first is the default)")
    reference: list[str] | None = Field(
        default=None, description='observations with a reference posterior ("exact": at any x_obs)')
    factory: dict[str, Any] | None = Field(default=None, description="the factory's parameters, as a JSON schema")
    error: str | None = Field(default=None, description="why the factory fails with its defaults, if it does")


class ProblemsPublic(BaseModel):
    data: list[ProblemPublic]
    count: int
