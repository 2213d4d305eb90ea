"""A user's inference problem: named parameters with their priors, a batch simulator,
observations, and optionally a reference posterior.

A problem package returns a `Problem` from a factory (see docs/problems.md)::

    Problem(
        name="two_moons",
        parameters=[Parameter("a", Uniform(-1, 1)), Parameter("b", Uniform(-1, 1))],
        simulate=simulate,              # (theta (n, d), rng) -> x (n, *x_shape), numpy in and out
        x_shape=(2,),
        observations={"1": x_obs_1},    # named observations, each of shape x_shape
        references={"1": Reference.from_samples(samples)},   # optional, per observation
    )

The prior is the product of the parameters' independent marginals (`ProductPrior`):
`Uniform(low, high)`, `Normal(loc, scale)`, `LogUniform(low, high)`. Its support bounds
(`low`, `high`, infinite where unbounded) are what proposals respect. The simulator takes
its randomness only from the generator passed in, so that it is deterministic given it; it
may be slow; it may raise, or return non-finite rows: those rows are rejected and counted,
and the run goes on. Shapes: theta ``(n, d)``, x ``(n, *x_shape)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

Simulate = Callable[[np.ndarray, np.random.Generator], np.ndarray]
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class ProblemError(ValueError):
    """A problem that cannot be used as given: the message names what is wrong."""


@dataclass(frozen=True)
class Uniform:
    """U(low, high)."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise ProblemError(f"Uniform needs finite low < high, got low={self.low!r}, high={self.high!r}")

    @property
    def mean(self) -> float:
        return 0.5 * (self.low + self.high)

    @property
    def std(self) -> float:
        return (self.high - self.low) / math.sqrt(12.0)

    @property
    def support(self) -> tuple[float, float]:
        return self.low, self.high

    def sample(self, n_and_k: tuple[int, int], rng: np.random.Generator, params: np.ndarray) -> np.ndarray:
        low, high = params
        return rng.uniform(low, high, size=n_and_k)

    def log_prob(self, v: np.ndarray) -> np.ndarray:
        inside = (v >= self.low) & (v <= self.high)
        return np.where(inside, -math.log(self.high - self.low), -np.inf)

    def describe(self) -> dict[str, Any]:
        return {"family": "uniform", "low": self.low, "high": self.high}


@dataclass(frozen=True)
class Normal:
    """N(loc, scale^2)."""

    loc: float
    scale: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.loc) and math.isfinite(self.scale) and self.scale > 0):
            raise ProblemError(f"Normal needs a finite loc and scale > 0, got loc={self.loc!r}, scale={self.scale!r}")

    @property
    def mean(self) -> float:
        return self.loc

    @property
    def std(self) -> float:
        return self.scale

    @property
    def support(self) -> tuple[float, float]:
        return -math.inf, math.inf

    def sample(self, n_and_k: tuple[int, int], rng: np.random.Generator, params: np.ndarray) -> np.ndarray:
        loc, scale = params
        return loc + scale * rng.standard_normal(n_and_k)

    def log_prob(self, v: np.ndarray) -> np.ndarray:
        u = (v - self.loc) / self.scale
        return -0.5 * u * u - math.log(self.scale) - _LOG_SQRT_2PI

    def describe(self) -> dict[str, Any]:
        return {"family": "normal", "loc": self.loc, "scale": self.scale}


@dataclass(frozen=True)
class LogUniform:
    """log v ~ U(log low, log high), 0 < low < high."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.high) and 0 < self.low < self.high):
            raise ProblemError(f"LogUniform needs 0 < low < high, got low={self.low!r}, high={self.high!r}")

    @property
    def mean(self) -> float:
        return (self.high - self.low) / math.log(self.high / self.low)

    @property
    def std(self) -> float:
        second = (self.high**2 - self.low**2) / (2 * math.log(self.high / self.low))
        return math.sqrt(max(second - self.mean**2, 0.0))

    @property
    def support(self) -> tuple[float, float]:
        return self.low, self.high

    def sample(self, n_and_k: tuple[int, int], rng: np.random.Generator, params: np.ndarray) -> np.ndarray:
        low, high = params
        return np.exp(rng.uniform(np.log(low), np.log(high), size=n_and_k))

    def log_prob(self, v: np.ndarray) -> np.ndarray:
        inside = (v >= self.low) & (v <= self.high)
        with np.errstate(divide="ignore", invalid="ignore"):
            density = -np.log(np.where(inside, v, 1.0)) - math.log(math.log(self.high / self.low))
        return np.where(inside, density, -np.inf)

    def describe(self) -> dict[str, Any]:
        return {"family": "log_uniform", "low": self.low, "high": self.high}


Marginal = Uniform | Normal | LogUniform
_PARAMS = {Uniform: ("low", "high"), Normal: ("loc", "scale"), LogUniform: ("low", "high")}


@dataclass(frozen=True)
class Parameter:
    """A named parameter and its prior."""

    name: str
    prior: Marginal

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ProblemError(f"a parameter's name must be an identifier, got {self.name!r}")
        if not isinstance(self.prior, (Uniform, Normal, LogUniform)):
            raise ProblemError(f"parameter {self.name!r}: prior must be Uniform, Normal or LogUniform, "
                               f"got {type(self.prior).__name__}")


class ProductPrior:
    """The product of independent marginals, one per parameter (the `Prior` protocol).

    `sample` draws each family's columns in one call (all normal columns from one standard
    normal matrix, and so on), so a product of one family draws exactly what that family's
    vectorised draw would.
    """

    name = "product"

    def __init__(self, parameters: Sequence[Parameter]) -> None:
        self.parameters = tuple(parameters)
        self.dim = len(self.parameters)
        marginals = [p.prior for p in self.parameters]
        self.mean = np.array([m.mean for m in marginals], np.float64)
        self.std = np.array([m.std for m in marginals], np.float64)
        self.low = np.array([m.support[0] for m in marginals], np.float64)
        self.high = np.array([m.support[1] for m in marginals], np.float64)
        bounded = bool(np.isfinite(self.low).any() or np.isfinite(self.high).any())
        self.support = (self.low, self.high) if bounded else None  # what proposals are truncated to
        self._groups = []
        for kind, names in _PARAMS.items():
            columns = [j for j, m in enumerate(marginals) if type(m) is kind]
            if columns:
                values = np.array([[getattr(marginals[j], a) for j in columns] for a in names], np.float64)
                self._groups.append((marginals[columns[0]], np.array(columns), values))

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        theta = np.empty((n, self.dim))
        for family, columns, values in self._groups:
            theta[:, columns] = family.sample((n, len(columns)), rng, values)
        return theta

    def log_prob(self, theta: np.ndarray) -> np.ndarray:
        theta = np.asarray(theta, np.float64)
        total = np.zeros(theta.shape[:-1])
        for j, p in enumerate(self.parameters):
            total = total + p.prior.log_prob(theta[..., j])
        return total

    def log_prob_t(self, theta: torch.Tensor) -> torch.Tensor:
        """The same in torch (differentiable inside the support), for a likelihood's MAP search."""
        import torch

        total = torch.zeros(theta.shape[:-1], dtype=theta.dtype)
        for j, p in enumerate(self.parameters):
            v, m = theta[..., j], p.prior
            if isinstance(m, Normal):
                u = (v - m.loc) / m.scale
                total = total - 0.5 * u * u - math.log(m.scale) - _LOG_SQRT_2PI
            else:
                inside = (v >= m.low) & (v <= m.high)
                density = (-torch.log(v.clamp_min(m.low)) - math.log(math.log(m.high / m.low))
                           if isinstance(m, LogUniform) else torch.full_like(v, -math.log(m.high - m.low)))
                total = total + torch.where(inside, density, torch.full_like(v, -math.inf))
        return total

    def inside(self, theta: np.ndarray) -> np.ndarray:
        """``(n,)``: whether each row lies in the support."""
        return np.all((theta >= self.low) & (theta <= self.high), axis=-1)


@dataclass(frozen=True)
class Reference:
    """A reference posterior at one observation: its per-parameter mean and std, and samples
    where there are some (for sample-based diagnostics such as C2ST)."""

    mean: np.ndarray
    std: np.ndarray
    samples: np.ndarray | None = field(default=None, repr=False)

    @staticmethod
    def gaussian(mean, std) -> Reference:
        """An exact Gaussian posterior (independent per parameter)."""
        return Reference(np.asarray(mean, np.float64).reshape(-1), np.asarray(std, np.float64).reshape(-1))

    @staticmethod
    def from_samples(samples) -> Reference:
        samples = np.asarray(samples, np.float64)
        if samples.ndim != 2 or len(samples) < 2:
            raise ProblemError(f"reference samples must have shape (m >= 2, d), got {samples.shape}")
        return Reference(samples.mean(axis=0), samples.std(axis=0, ddof=1), samples)


@dataclass(frozen=True)
class Problem:
    """One inference problem (see the module doc). `reference` (optional) computes a reference
    posterior at any x_obs (an exact one); `references` holds them per named observation."""

    name: str
    parameters: Sequence[Parameter]
    simulate: Simulate
    x_shape: tuple[int, ...]
    observations: Mapping[str, np.ndarray] = field(default_factory=dict)
    references: Mapping[str, Reference] = field(default_factory=dict)
    reference: Callable[[np.ndarray], Reference | None] | None = None
    prior: Any = None  # the Prior; default: the product of the parameters' marginals
    residual_base: str = "identity"  # the simulator's known inverse, if any ("identity", "log")
    description: str = ""

    def __post_init__(self) -> None:
        if not self.parameters:
            raise ProblemError(f"problem {self.name!r} needs at least one parameter")
        names = [p.name for p in self.parameters]
        if len(set(names)) != len(names):
            raise ProblemError(f"problem {self.name!r}: parameter names repeat: {names}")
        shape = tuple(int(s) for s in self.x_shape)
        if not shape or any(s < 1 for s in shape):
            raise ProblemError(f"problem {self.name!r}: x_shape must be positive sizes, got {self.x_shape!r}")
        object.__setattr__(self, "x_shape", shape)
        if not callable(self.simulate):
            raise ProblemError(f"problem {self.name!r}: simulate must be callable")
        observations = {str(k): np.asarray(v, np.float64) for k, v in self.observations.items()}
        for key, value in observations.items():
            if value.shape != shape:
                raise ProblemError(f"problem {self.name!r}: observation {key!r} has shape {value.shape}, "
                                   f"x has shape {shape}")
        object.__setattr__(self, "observations", observations)
        unknown = set(self.references) - set(observations)
        if unknown:
            raise ProblemError(f"problem {self.name!r}: references for unknown observations {sorted(unknown)}")
        if self.prior is None:
            object.__setattr__(self, "prior", ProductPrior(self.parameters))

    @property
    def dim(self) -> int:
        return len(self.parameters)

    @property
    def parameter_names(self) -> list[str]:
        return [p.name for p in self.parameters]

    def observation(self, name: str | None) -> tuple[str | None, np.ndarray]:
        """The named observation (None: the first); `ProblemError` names the known ones."""
        if name is None:
            if not self.observations:
                raise ProblemError(f"problem {self.name!r} has no named observations: give x_obs")
            name = next(iter(self.observations))
        if name not in self.observations:
            raise ProblemError(f"problem {self.name!r} has no observation {name!r}; "
                               f"known: {', '.join(self.observations) or 'none'}")
        return name, self.observations[name]

    def reference_at(self, name: str | None, x_obs: np.ndarray) -> Reference | None:
        """The reference posterior at a named observation, or at any x_obs if exact."""
        if name is not None and name in self.references:
            return self.references[name]
        return None if self.reference is None else self.reference(x_obs)

    def describe(self) -> dict[str, Any]:
        """What `GET /problems` lists of it (the factory's own parameters come from the registry)."""
        return {
            "name": self.name,
            "description": self.description,
            "parameters": [{"name": p.name, "prior": p.prior.describe()} for p in self.parameters],
            "x_shape": list(self.x_shape),
            "observations": list(self.observations),
            "reference": sorted(self.references) or (["exact"] if self.reference is not None else []),
        }
