"""What both estimators share beyond the head: building it from a config, and Gaussian sampling."""

from __future__ import annotations

import numpy as np
import torch

from falcon_lite.core.estimators.head import GaussianHead


def head_from_config(cfg, dim: int, generator: torch.Generator | None, auto_base: str = "identity",
                     in_dim: int | None = None) -> GaussianHead:
    """The GaussianHead an EstimatorConfig describes (output `dim`, input `in_dim`, default `dim`);
    ``residual_base = "auto"`` means `auto_base`."""
    base = auto_base if cfg.residual_base == "auto" else cfg.residual_base
    return GaussianHead(dim, list(cfg.hidden), cfg.activation, cfg.dtype, cfg.ema_momentum,
                        cfg.normalize, cfg.residual, cfg.loss, generator, residual_base=base,
                        center_output=cfg.center_output, in_dim=in_dim)


def gaussian_sample(mean: np.ndarray, var: np.ndarray, n: int, generator: torch.Generator) -> np.ndarray:
    """n draws (n, D) from N(mean, diag(var)), the noise from `generator` (float64)."""
    eps = torch.randn((n, mean.shape[0]), generator=generator, dtype=torch.float64).numpy()
    return mean + np.sqrt(var) * eps
