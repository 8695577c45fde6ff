"""One table of model builders, filled by a decorator (the timm pattern).

``create_model(name, **kw)`` and ``list_models()`` read the table; nothing looks
names up in ``globals()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from ..errors import AlexNetError


@dataclass(frozen=True)
class ModelInfo:
    """What a variant reproduces, next to its builder (torchvision's ``Weights.meta``)."""

    name: str
    reproduces: str
    native_size: int  # the input size the variant was designed for, in pixels
    num_params: int  # for 1000 classes and 3 input channels; asserted by the tests
    min_size: int  # the smallest input the feature extractor accepts


_REGISTRY: dict[str, tuple[Callable[..., nn.Module], ModelInfo]] = {}


def register_model(*, reproduces: str, native_size: int, num_params: int, min_size: int = 63):
    """Decorator: add a builder ``fn(*, num_classes, in_channels, dropout, **kw)`` to the table."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = (fn, ModelInfo(name, reproduces, native_size, num_params, min_size))
        return fn

    return wrap


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_info(name: str) -> ModelInfo:
    _check_name(name)
    return _REGISTRY[name][1]


def create_model(
    name: str, *, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5, **kw
) -> nn.Module:
    _check_name(name)
    if num_classes < 1:
        raise AlexNetError(f"num_classes must be at least 1, got {num_classes}")
    if in_channels < 1:
        raise AlexNetError(f"in_channels must be at least 1, got {in_channels}")
    if not 0.0 <= dropout < 1.0:
        raise AlexNetError(f"dropout must be in [0, 1), got {dropout}")
    builder = _REGISTRY[name][0]
    try:
        return builder(num_classes=num_classes, in_channels=in_channels, dropout=dropout, **kw)
    except TypeError as e:  # an unknown keyword for this variant
        raise AlexNetError(f"model {name!r}: {e}") from None


def _check_name(name: str) -> None:
    if name not in _REGISTRY:
        raise AlexNetError(f"unknown model {name!r}; choose from: {', '.join(list_models())}")
