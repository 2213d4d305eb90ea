"""Estimators by registered name: ``gaussian_ema`` (the seed's NPE), ``gaussian_nle`` (its NLE) and
``flow`` (a conditional normalizing flow, zuko's NSF or MAF, trained by NPE).

All are ``nn.Module``s with the interface the engine uses:
``posterior(x_obs (D,)) -> (mean (D,), var (D,))``, ``posterior_batch(x (n, D))``,
``sample(x_obs, n, torch.Generator) -> (n, D)``, ``pair(theta, x) -> (input, output)`` of the
regression their ``head`` (a ``GaussianHead``) learns, ``state_dict``/``load_state_dict``
(everything: weights, EMA log_var, normaliser statistics, NLE's MAP warm start) and
``extra_stats``. The Gaussian two regress through their head; the flow instead offers
``observe(theta, x)``, ``loss(theta, x, w)`` and ``log_prob(theta, x)`` (``protocols.DensityEstimator``).
Training is in ``falcon_lite.core.training``.
"""

from __future__ import annotations

import torch

from falcon_lite.core.estimators.flow import FlowPosterior
from falcon_lite.core.estimators.head import GaussianHead
from falcon_lite.core.estimators.nle import GaussianNLE
from falcon_lite.core.estimators.npe import GaussianEMA

ESTIMATORS: dict[str, type] = {"gaussian_ema": GaussianEMA, "gaussian_nle": GaussianNLE, "flow": FlowPosterior}

Estimator = GaussianEMA | GaussianNLE | FlowPosterior

__all__ = ["ESTIMATORS", "Estimator", "FlowPosterior", "GaussianEMA", "GaussianHead", "GaussianNLE",
           "make_estimator"]


def make_estimator(cfg, dim: int, prior, generator: torch.Generator | None = None, *,
                   residual_base: str = "identity", x_shape: tuple[int, ...] | None = None,
                   embedding_plugin=None) -> Estimator:
    """Build the estimator named by ``cfg.name`` (an EstimatorConfig) for a ``dim``-dim problem.

    The initial weights come from ``generator`` if given, else from torch's global generator
    (which the caller seeds). `residual_base` is the simulator's known inverse, for an estimator
    whose config says ``residual_base = "auto"``; `x_shape` the shape of one x (default
    ``(dim,)``); `embedding_plugin` the factory of a plugin embedding the config names.
    """
    try:
        cls = ESTIMATORS[cfg.name]
    except KeyError:
        raise ValueError(f"unknown estimator {cfg.name!r}; known: {sorted(ESTIMATORS)}") from None
    return cls(cfg, dim, prior, generator, residual_base=residual_base, x_shape=x_shape,
               embedding_plugin=embedding_plugin)
