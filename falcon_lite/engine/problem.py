"""A run's problem: the registered plugin its config names, at its observation; the check
of a run config against it (`check_config`), and what `GET /problems` lists (`catalogue`).

`bind_problem(config)` calls the factory the config names (the v1 sections ``simulator`` and
``prior`` name the built-in ``gaussian``/``exp_noise`` plugins: one path for every run) and
picks the observation: ``problem.x_obs`` if given, else the named one, else the problem's
first. What it returns, `BoundProblem`, is what the engine calls a simulator
(`falcon_lite.core.protocols.Simulator`): the batch simulator, x_obs, and the reference
posterior at x_obs where the problem has one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from falcon_lite import plugins
from falcon_lite.config import RunConfig
from falcon_lite.core.problems import Problem, ProblemError, Reference
from falcon_lite.core.protocols import DensityEstimator


@dataclass(frozen=True)
class BoundProblem:
    """A problem at one observation (the engine's `Simulator`)."""

    problem: Problem
    observation: str | None  # its name, or None for an x_obs given in the config
    x_obs: np.ndarray

    @property
    def name(self) -> str:
        return self.problem.name

    @property
    def dim(self) -> int:
        return self.problem.dim

    @property
    def x_shape(self) -> tuple[int, ...]:
        return self.problem.x_shape

    @property
    def residual_base(self) -> str:
        return self.problem.residual_base

    @property
    def prior(self):
        return self.problem.prior

    def __call__(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """x (n, *x_shape) for theta (n, d). A simulator that raises gives NaN rows (rejected
        and counted by the store: the run goes on); one that returns another shape is a bug
        in the problem, which fails the run naming it."""
        try:
            x = np.asarray(self.problem.simulate(theta, rng), dtype=np.float64)
        except Exception:  # noqa: BLE001 - a failing simulation is data (rejected rows), not a crash
            return np.full((len(theta), *self.x_shape), np.nan)
        if x.shape != (len(theta), *self.x_shape):
            raise ProblemError(f"problem {self.name!r}: simulate returned x of shape {x.shape} for "
                               f"{len(theta)} parameters; expected {(len(theta), *self.x_shape)}")
        return x

    def reference(self) -> Reference | None:
        return self.problem.reference_at(self.observation, self.x_obs)

    def true_posterior(self, prior=None) -> tuple[np.ndarray, np.ndarray] | None:
        """(mean (d,), std (d,)) of the reference posterior at x_obs, or None without one."""
        found = self.reference()
        return None if found is None else (found.mean, found.std)


def bind_problem(config: RunConfig) -> BoundProblem:
    """The config's problem at its observation; `plugins.PluginError` or `ProblemError` names
    what does not fit (the field under ``problem``)."""
    spec = config.problem_spec()
    problem = plugins.bind(plugins.PROBLEMS, spec.name, dict(spec.params))()
    if not isinstance(problem, Problem):
        raise plugins.PluginError(f"{spec.name!r}'s factory returned {type(problem).__name__}, not a Problem")
    if spec.x_obs is not None:
        x_obs = np.asarray(spec.x_obs, np.float64)
        if x_obs.shape != problem.x_shape:
            raise plugins.PluginError(f"x_obs has shape {x_obs.shape}; problem {spec.name!r} simulates x of "
                                      f"shape {problem.x_shape}", field="x_obs")
        return BoundProblem(problem, None, x_obs)
    try:
        name, x_obs = problem.observation(spec.observation)
    except ProblemError as exc:
        raise plugins.PluginError(str(exc), field="observation") from None
    return BoundProblem(problem, name, x_obs)


def embedding_plugin(config: RunConfig):
    """The factory of the plugin embedding the config names, or None for a built-in one."""
    from falcon_lite.core.embeddings import BUILT_IN  # (torch: only where an estimator is made)

    name = config.estimator.embedding.name
    if name in BUILT_IN:
        return None
    return plugins.factory(plugins.EMBEDDINGS, name)


class ConfigError(ValueError):
    """A run config that does not fit its problem or estimator; ``loc`` names the field
    (e.g. ``("problem", "params", "sigma")``), as a 422 does."""

    def __init__(self, loc: tuple[str, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


def check_config(config: RunConfig) -> BoundProblem:
    """Everything a run will build from its config, built once here so that a config that does
    not fit fails when the run is created, naming the field: the problem (registered? its
    params? its observation or x_obs?), the embedding, and the estimator for that x."""
    from falcon_lite.core.estimators import make_estimator

    section = "problem" if config.problem is not None else "simulator"
    try:
        bound = bind_problem(config)
    except plugins.PluginError as exc:
        raise ConfigError((section, *exc.field.split(".")), str(exc)) from None
    except (ProblemError, TypeError, ValueError) as exc:  # the factory refused its params
        raise ConfigError((section, "params"), f"{config.problem_spec().name!r}: {exc}") from None
    try:
        plugin = embedding_plugin(config)
        estimator = make_estimator(config.estimator, bound.dim, bound.prior, residual_base=bound.residual_base,
                                   x_shape=bound.x_shape, embedding_plugin=plugin)
    except plugins.PluginError as exc:
        raise ConfigError(("estimator", "embedding", "name"), str(exc)) from None
    except ValueError as exc:
        raise ConfigError(("estimator",), str(exc)) from None
    if config.proposal.method == "truncated" and not isinstance(estimator, DensityEstimator):
        raise ConfigError(("proposal", "method"), 'method "truncated" needs an estimator with a density '
                          f'(log_prob), e.g. "flow"; {config.estimator.name!r} has none')
    if config.training.weight_decay == "adaptive" and not isinstance(estimator, DensityEstimator):
        raise ConfigError(("training", "weight_decay"), '"adaptive" follows the held-out loss of an estimator with '
                          f'a density (log_prob), e.g. "flow"; {config.estimator.name!r} has none')
    if config.training.early_stop is not None:
        if not isinstance(estimator, DensityEstimator):
            raise ConfigError(("training", "early_stop"), "the early stop follows the held-out loss of an estimator "
                              f'with a density (log_prob), e.g. "flow"; {config.estimator.name!r} has none')
        if config.runtime.steps_per_batch is None:
            raise ConfigError(("training", "early_stop"), "the early stop passes over the later of a batch's k "
                              "steps: it needs runtime.steps_per_batch = k, not null (continuous training)")
    if not config.training.batch_checks and config.buffer.prior_fraction == "adaptive":
        raise ConfigError(("training", "batch_checks"), 'buffer.prior_fraction = "adaptive" follows the explosion '
                          "alarm of the batch checks: keep batch_checks true, or give a fixed prior_fraction")
    return bound


def catalogue() -> list[dict]:
    """Every registered problem: its parameters with their priors, the shape of x, its named
    observations, whether it has a reference posterior, and its factory's parameters as a JSON
    schema. A problem whose factory fails with its defaults is listed with the error."""
    found = []
    for name in plugins.names(plugins.PROBLEMS):
        entry: dict = {"name": name}
        try:
            entry["factory"] = plugins.schema(plugins.PROBLEMS, name)
            problem = plugins.bind(plugins.PROBLEMS, name, {})()
            entry.update({k: v for k, v in problem.describe().items() if k != "name"})
        except Exception as exc:  # noqa: BLE001 - a broken plugin is listed, not fatal
            entry["error"] = f"{type(exc).__name__}: {exc}"
        found.append(entry)
    return found
