"""Whole-image prediction block by block, as a generator (Qt-free).

Yielding after every block lets the widget show progress, write each block into the prediction
layer as it arrives, and cancel between blocks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from scribbleseg.core.inference import predict_probabilities, probabilities_to_labels
from scribbleseg.core.models import ScribbleNet
from scribbleseg.core.refine import with_refinement_weight
from scribbleseg.core.volume import ImageSource, block_regions
from scribbleseg.napari._model import Region, normalised_entropy

__all__ = ["BlockPrediction", "default_block_shape", "predict_blocks"]

#: Block shape of whole-image prediction per spatial dimensionality (cut to the image).
_BLOCK_SHAPE = {2: (512, 512), 3: (64, 256, 256)}


@dataclass(frozen=True)
class BlockPrediction:
    """The prediction of one block.

    Attributes
    ----------
    region : tuple of slice
        The block, in image coordinates.
    labels : ndarray
        Class values over the block.
    uncertainty : float32 ndarray
        Normalised entropy over the block (0 = certain, 1 = undecided).
    done : int
        Blocks done so far, this one included.
    total : int
        Blocks in all.
    """

    region: Region
    labels: np.ndarray
    uncertainty: np.ndarray
    done: int
    total: int


def default_block_shape(spatial_shape: Sequence[int]) -> tuple[int, ...]:
    """Block shape for :func:`predict_blocks`: 512² in 2D, 64 × 256² in 3D, cut to the image."""
    return tuple(min(int(s), b) for s, b in zip(spatial_shape, _BLOCK_SHAPE[len(spatial_shape)], strict=True))


def predict_blocks(
    model: ScribbleNet,
    source: ImageSource,
    class_values: Sequence[int],
    *,
    block_shape: Sequence[int] | None = None,
    device: str = "auto",
    crf_refinement: float | None = None,
) -> Iterator[BlockPrediction]:
    """Predict the whole image block by block (windows on the image's grid: no seams).

    Parameters
    ----------
    model : ScribbleNet
    source : ImageSource
    class_values : sequence of int
        The class value of each network output.
    block_shape : tuple of int, optional
        Default :func:`default_block_shape`.
    device : str
        ``auto``, ``cpu`` or ``cuda``.
    crf_refinement : float, optional
        Weight of the CRF refinement (0 = none); default the model's own
        (:func:`~scribbleseg.core.refine.with_refinement_weight`; in the worker, as it may read
        the image to estimate its noise).

    Yields
    ------
    BlockPrediction
        One per block, in C order.
    """
    if crf_refinement is not None:
        model = with_refinement_weight(model, crf_refinement, source)
    shape = source.spatial_shape
    blocks = list(block_regions(shape, block_shape or default_block_shape(shape)))
    for done, region in enumerate(blocks, start=1):
        probabilities = predict_probabilities(model, source, region=region, device=device)
        yield BlockPrediction(
            region=region,
            labels=probabilities_to_labels(probabilities, class_values),
            uncertainty=normalised_entropy(probabilities),
            done=done,
            total=len(blocks),
        )
