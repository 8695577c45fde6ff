"""AlexNet from scratch in PyTorch."""

from .errors import AlexNetError
from .models import create_model, list_models, model_info

__version__ = "0.1.0"


def load_checkpoint(path, map_location="cpu"):
    """Load a training checkpoint: returns ``(model, class_names, preprocess)``.

    The model is in eval mode; ``preprocess`` turns a PIL image or a uint8 (C, H, W)
    tensor into the normalised float tensor the model was trained on.
    """
    # Imported on first use: ``import alexnet`` loads the models only, not the data layer and the engine.
    from .engine.checkpoint import load_for_inference

    return load_for_inference(path, map_location=map_location)


__all__ = ["AlexNetError", "create_model", "list_models", "load_checkpoint", "model_info", "__version__"]
