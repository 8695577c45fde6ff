"""The model zoo: builders registered by name."""

from . import alexnet as _alexnet  # noqa: F401  (registers the builders)
from .alexnet import AlexNet, AlexNetOWT
from .lrn import LocalResponseNorm
from .registry import ModelInfo, create_model, list_models, model_info, register_model

__all__ = [
    "AlexNet",
    "AlexNetOWT",
    "LocalResponseNorm",
    "ModelInfo",
    "create_model",
    "list_models",
    "model_info",
    "register_model",
]
