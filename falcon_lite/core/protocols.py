"""The typed faces of what a run is made of: simulators, priors and estimators.

The engine calls these and nothing else: it never asks for a class or a registered name.
What differs between estimators is said as a capability (`Estimator.amortized`; an estimator
that trains by its own density loss is a `DensityEstimator`), so that a
new estimator or problem joins by implementing the protocol and being registered.
Shapes: theta ``(n, D)``, x ``(n, *x_shape)``; a single x_obs is ``x_shape``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    import torch


@runtime_checkable
class Prior(Protocol):
    """A distribution over theta ``(D,)``; randomness only from the generator passed in."""

    name: str
    dim: int
    mean: np.ndarray  # (D,)
    std: np.ndarray  # (D,)
    support: tuple[np.ndarray, np.ndarray] | None  # (low (D,), high (D,)) proposals are truncated to, or None

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``(n, D)`` draws."""
        ...

    def log_prob(self, theta: np.ndarray) -> np.ndarray:
        """``(n,)`` log densities of ``(n, D)`` parameters (-inf outside the support)."""
        ...


@runtime_checkable
class Simulator(Protocol):
    """A batch simulator with its observation: ``simulator(theta (n, D), rng) -> x (n, *x_shape)``."""

    name: str
    dim: int
    x_obs: np.ndarray
    residual_base: str  # the known inverse a residual head may be taken around ("identity", "log")

    def __call__(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray: ...

    def true_posterior(self, prior: Prior) -> tuple[np.ndarray, np.ndarray]:
        """The reference posterior at x_obs as (mean (D,), std (D,))."""
        ...


@runtime_checkable
class Estimator(Protocol):
    """A posterior estimate the engine trains (``torch.nn.Module``s in practice).

    ``amortized``: its posterior at any x is one forward pass, so the engine may evaluate it
    on a whole batch (`posterior_batch`, the held-out checks) and reuse the one at x_obs until
    the weights change. A likelihood estimator fits each posterior (a MAP search) instead.
    """

    amortized: ClassVar[bool]
    variance_source: str
    # (optional) runs_on_cuda: ClassVar[bool] — it can train with training.device = "cuda"

    def posterior(self, x_obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean (D,), var (D,)) at one observation."""
        ...

    def posterior_batch(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean (n, D), var (n, D)) at each of ``n`` observations."""
        ...

    def sample(self, x_obs: np.ndarray, n: int, generator: torch.Generator) -> np.ndarray:
        """``(n, D)`` draws from the posterior at x_obs."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


@runtime_checkable
class DensityEstimator(Protocol):
    """An estimator trained on its own loss (a normalizing flow: the NPE negative log-likelihood)
    rather than through a Gaussian regression head. Tensors: theta ``(n, D)``, x ``(n, x_dim)``
    in the estimator's ``dtype``; weights ``w`` ``(n,)`` summing to one, or None for 1/n."""

    dtype: torch.dtype

    def observe(self, theta: torch.Tensor, x: torch.Tensor) -> None:
        """Update running statistics (standardisation) from a training batch, before its step."""
        ...

    def loss(self, theta: torch.Tensor, x: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        """The scalar training loss of one batch (differentiable)."""
        ...

    def log_prob(self, theta, x) -> torch.Tensor:
        """``(n,)`` log q(theta_i | x_i)."""
        ...

    def sample_and_log_prob(self, x_obs: np.ndarray, n: int, generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
        """n draws ``(n, D)`` from q(theta | x_obs) and their log q ``(n,)``, float64 (a truncated
        proposal's region needs both)."""
        ...
