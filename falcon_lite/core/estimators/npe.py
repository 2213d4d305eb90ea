"""``gaussian_ema``: the seed's neural posterior estimator.

q(theta | x) = N(mu(x), diag(exp(log_var))): an MLP mean mu(x) trained by MSE on (x, theta)
pairs, and a variance that is not a function of x but an EMA of the batch residual
log-variance (see ``head.GaussianHead``). The options (normalize, residual, nll loss) live in
the head; importance weighting and the variance source live in ``training.train_step``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from falcon_lite.core import embeddings
from falcon_lite.core.estimators.common import gaussian_sample, head_from_config
from falcon_lite.core.estimators.head import DTYPES


class GaussianEMA(nn.Module):
    """Posterior estimator: regression of theta on the embedded x with an EMA (or NLL-trained)
    variance. x has shape `x_shape` (default ``(dim,)``); the embedding (``cfg.embedding``;
    a plugin's factory is passed as `embedding_plugin`) is trained with the head.

    ``residual_base = "auto"`` takes `residual_base`: the simulator's known inverse.
    """

    amortized = True  # its posterior at any x is one forward pass
    runs_on_cuda = True  # training.device = "cuda": every tensor it makes follows its parameters

    def __init__(self, cfg, dim: int, prior, generator: torch.Generator | None = None, *,
                 residual_base: str = "identity", x_shape: tuple[int, ...] | None = None, embedding_plugin=None):
        super().__init__()
        self.dim = dim
        self.x_shape = (dim,) if x_shape is None else tuple(x_shape)
        self.importance_weighting = cfg.importance_weighting
        self.variance_source = cfg.variance_source
        features = embeddings.features_of(cfg.embedding, self.x_shape)
        made = None
        if features is None:  # a plugin: its size is known once it is built
            made = embeddings.build(cfg.embedding, self.x_shape, cfg.activation, DTYPES[cfg.dtype], generator,
                                    embedding_plugin)
            features = made.features
        self.head = head_from_config(cfg, dim, generator, auto_base=residual_base, in_dim=features)
        self.embedding = made or embeddings.build(cfg.embedding, self.x_shape, cfg.activation, self.head.dtype,
                                                  generator)
        # the identity embedding as a plain reshape: a module call costs ~5 us, three times a step
        self._flat = features if isinstance(self.embedding, embeddings.Flatten) else None
        self.extra_stats: dict = {}

    @property
    def device(self) -> torch.device:
        return self.head.log_var.device

    def pair(self, theta: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(input, output) of the regression: embedded x -> theta."""
        return self._embed(x), theta

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(len(x), self._flat) if self._flat is not None else self.embedding(x)

    def _features(self, x) -> torch.Tensor:
        x_t = torch.as_tensor(np.asarray(x), dtype=self.head.dtype, device=self.head.log_var.device)
        return self._embed(x_t.reshape(-1, *self.x_shape))

    @torch.no_grad()
    def posterior_batch(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior means and variances (n, D) at every row of x (n, *x_shape)."""
        x_t = self._features(x)
        mean = self.head.mean(x_t).to("cpu", torch.float64).numpy()
        var = self.head.variance(x_t).to("cpu", torch.float64).numpy()
        return mean, np.array(var)

    def posterior(self, x_obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean (D,), var (D,)) of the learned Gaussian posterior at x_obs (fresh float64 arrays).

        Called twice per step by the engine, so kept to one small forward pass.
        """
        with torch.no_grad():
            x_t = self._features(x_obs)
            mean = self.head.mean(x_t)[0].to("cpu", torch.float64)
            var = self.head.variance(x_t)[0].to("cpu", torch.float64)
        return mean.numpy(), var.numpy()

    def sample(self, x_obs: np.ndarray, n: int, generator: torch.Generator) -> np.ndarray:
        """n draws (n, D) from the learned posterior at x_obs."""
        return gaussian_sample(*self.posterior(x_obs), n, generator)
