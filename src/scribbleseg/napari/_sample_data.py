"""Sample data contributions for napari (npe2 ``sample_data``).

Each function returns a list of napari layer-data tuples ``(data, kwargs, layer_type)``: the
image and its scribbles as a Labels layer, both scaled to the sample's physical spacing. Plain
tuples need no napari import, so this module imports neither napari nor Qt.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from scribbleseg.samples import Sample, load_sample

__all__ = ["mri3d", "nuclei2d", "sample_layers"]

LayerDataTuple = tuple[np.ndarray, dict[str, Any], str]

SCRIBBLES_LAYER_NAME = "scribbles"


def _contrast_limits(image: np.ndarray) -> tuple[float, float]:
    """Contrast from robust percentiles, so a few saturated pixels do not wash out the image."""
    low, high = (float(v) for v in np.percentile(image, (0.5, 99.8)))
    if high <= low:
        low, high = float(image.min()), float(image.max())
    if high <= low:  # a constant image
        high = low + 1.0
    return low, high


def sample_layers(sample: Sample) -> list[LayerDataTuple]:
    """Return napari layer-data tuples for a sample: its image and its scribbles.

    Parameters
    ----------
    sample : Sample
        A sample from `scribbleseg.samples.load_sample`.

    Returns
    -------
    list of (ndarray, dict, str)
        ``[(image, image_kwargs, "image"), (scribbles, labels_kwargs, "labels")]``. Both layers
        have ``scale`` = ``sample.spacing``; the Labels layer is named ``"scribbles"`` and its
        ``metadata`` holds the class names and the background class.
    """
    scale = tuple(float(s) for s in sample.spacing)
    image_kwargs: dict[str, Any] = {
        "name": sample.name,
        "scale": scale,
        "colormap": "gray",
        "contrast_limits": _contrast_limits(sample.image),
        "metadata": {"unit": sample.unit},
    }
    labels_kwargs: dict[str, Any] = {
        "name": SCRIBBLES_LAYER_NAME,
        "scale": scale,
        "opacity": 0.8,
        "metadata": {
            "class_names": dict(sample.class_names),
            "background_class": sample.background_class,
            "unit": sample.unit,
        },
    }
    return [(sample.image, image_kwargs, "image"), (sample.scribbles, labels_kwargs, "labels")]


def nuclei2d() -> list[LayerDataTuple]:
    """Fluorescent nuclei (2D, 512 × 512) with scribbles: 1 = background, 2 = nucleus."""
    return sample_layers(load_sample("nuclei2d"))


def mri3d() -> list[LayerDataTuple]:
    """T1 brain MRI (3D, 2 mm axial slices) with scribbles: background, grey and white matter."""
    return sample_layers(load_sample("mri3d"))
