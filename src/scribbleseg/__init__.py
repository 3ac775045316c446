"""ScribbleSeg: train a MONAI network from a few scribbles, in napari or headless.

Importing the package is cheap: it imports neither torch, napari nor Qt. The
public API is loaded on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "ModelConfig": "scribbleseg.core.config",
    "LossConfig": "scribbleseg.core.config",
    "TrainConfig": "scribbleseg.core.config",
    "ImageSource": "scribbleseg.core.volume",
    "SparseTarget": "scribbleseg.core.annotations",
    "labels_to_target": "scribbleseg.core.annotations",
    "Trainer": "scribbleseg.core.engine",
    "TrainUpdate": "scribbleseg.core.engine",
    "predict_probabilities": "scribbleseg.core.inference",
    "probabilities_to_labels": "scribbleseg.core.inference",
    "load_sample": "scribbleseg.samples",
    "dice_iou": "scribbleseg.core.metrics",
    "save_model": "scribbleseg.io.checkpoint",
    "load_model": "scribbleseg.io.checkpoint",
    "read_array": "scribbleseg.io.arrays",
    "ScribbleSegError": "scribbleseg.errors",
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'scribbleseg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
