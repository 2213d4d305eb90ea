"""Embedding networks: what an estimator conditions on instead of the raw x.

An embedding maps x ``(n, *x_shape)`` to features ``(n, features)``, is trained with the
estimator (its parameters are the estimator's), and is saved in its state. Built in:

- ``identity``: x flattened, ``features = prod(x_shape)``;
- ``mlp``: x flattened -> hidden layers -> ``features``;
- ``cnn1d``: for series, x of shape ``(L,)`` or ``(C, L)``: 1-D convolutions (``channels``,
  ``kernel``, each followed by the activation and a max-pool of 2), then a linear layer to
  ``features``.

A package registers its own under the entry-point group ``falcon_lite.embeddings``: a factory
``make(x_shape: tuple[int, ...], **params) -> torch.nn.Module`` whose module maps
``(n, *x_shape)`` to ``(n, k)``; `build` finds k with one forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from falcon_lite.core.estimators.head import ACTIVATIONS, mlp

BUILT_IN = ("identity", "mlp", "cnn1d")


class Flatten(nn.Module):
    """x as it is, one row of ``prod(x_shape)`` values."""

    def __init__(self, x_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.features = math.prod(x_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(len(x), self.features)


class MLPEmbedding(nn.Module):
    def __init__(self, x_shape: tuple[int, ...], hidden: list[int], features: int, activation: str,
                 dtype: torch.dtype) -> None:
        super().__init__()
        self.flat = math.prod(x_shape)
        self.features = features
        self.net = mlp(self.flat, list(hidden), features, activation, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.reshape(len(x), self.flat))


class CNN1d(nn.Module):
    def __init__(self, x_shape: tuple[int, ...], channels: list[int], kernel: int, features: int,
                 activation: str, dtype: torch.dtype) -> None:
        super().__init__()
        if len(x_shape) not in (1, 2):
            raise ValueError(f"cnn1d embeds series of shape (L,) or (C, L), got x of shape {x_shape}")
        self.x_shape = (1, *x_shape) if len(x_shape) == 1 else tuple(x_shape)
        layers: list[nn.Module] = []
        width, length = self.x_shape
        for c in channels:
            if length < kernel:
                raise ValueError(f"cnn1d: a series of {self.x_shape[1]} values is too short for "
                                 f"{len(channels)} layers of kernel {kernel}")
            layers += [nn.Conv1d(width, c, kernel, padding=kernel // 2, dtype=dtype), ACTIVATIONS[activation](),
                       nn.MaxPool1d(2)]
            width, length = c, length // 2
        self.convs = nn.Sequential(*layers)
        self.out = nn.Linear(width * length, features, dtype=dtype)
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.convs(x.reshape(len(x), *self.x_shape))
        return self.out(h.reshape(len(x), -1))


def features_of(cfg, x_shape: tuple[int, ...]) -> int | None:
    """The number of features a built-in embedding makes (None: a plugin, known once built)."""
    if cfg.name == "identity":
        return math.prod(x_shape)
    return cfg.features if cfg.name in BUILT_IN else None


def build(cfg, x_shape: tuple[int, ...], activation: str, dtype: torch.dtype,
          generator: torch.Generator | None = None,
          plugin: Callable[..., nn.Module] | None = None) -> nn.Module:
    """The embedding `cfg` names (an EmbeddingConfig), its weights drawn from `generator`.
    A plugin's factory is passed in as `plugin` (the engine looks it up by name)."""
    if cfg.name == "identity":
        return Flatten(x_shape)
    if cfg.name == "mlp":
        module = MLPEmbedding(x_shape, cfg.hidden, cfg.features, activation, dtype)
    elif cfg.name == "cnn1d":
        module = CNN1d(x_shape, cfg.channels, cfg.kernel, cfg.features, activation, dtype)
    else:
        if plugin is None:
            raise ValueError(f"embedding {cfg.name!r} is a plugin: pass its factory")
        with torch.random.fork_rng(devices=[]):
            if generator is not None:
                torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
            module = plugin(tuple(x_shape), **cfg.params).to(dtype)
        with torch.no_grad():
            probe = module(torch.zeros((2, *x_shape), dtype=dtype))
        if probe.ndim != 2 or len(probe) != 2:
            raise ValueError(f"embedding {cfg.name!r} maps (n, *x_shape) to {tuple(probe.shape[1:])}, "
                             "not to (n, features)")
        module.features = int(probe.shape[1])
        return module
    if generator is not None:
        _draw(module, generator)
    return module


def _draw(module: nn.Module, generator: torch.Generator) -> None:
    """Every Linear and Conv1d layer drawn like torch's default init, but from `generator`."""
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, (nn.Linear, nn.Conv1d)):
                fan_in = layer.weight[0].numel()
                bound = 1.0 / math.sqrt(fan_in)
                for p in (layer.weight, layer.bias):
                    p.copy_(torch.rand(p.shape, generator=generator, dtype=p.dtype) * 2 * bound - bound)
