"""Overlap metrics between a prediction and a ground truth: Dice and IoU.

Both arrays are walked block by block (aligned to their chunks when they are
dask or zarr arrays), so arrays larger than memory can be evaluated.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from scribbleseg.core.volume import array_chunks, block_regions, grow_block_shape
from scribbleseg.errors import InputError

__all__ = ["dice_iou", "mean_dice"]

#: Voxels per block when walking the arrays.
_BLOCK_VOXELS = 1 << 22


def _as_label_block(block: np.ndarray, what: str) -> np.ndarray:
    """Return an integer array of labels, or raise :class:`InputError`."""
    kind = block.dtype.kind
    if kind in "iu":
        return block
    if kind == "b":
        return block.astype(np.uint8)
    if kind == "f":
        with np.errstate(invalid="ignore"):
            integral = np.isfinite(block) & (np.floor(block) == block)
        if not integral.all():
            example = block[~integral].flat[0]
            raise InputError(f"{what} must hold integer class values; got float values like {example:g}")
        return block.astype(np.int64)
    raise InputError(f"{what} must hold integer class values; got dtype {block.dtype}")


def _add_counts(totals: dict[int, int], values: np.ndarray) -> None:
    """Add the number of occurrences of each value in ``values`` to ``totals``."""
    if values.size == 0:
        return
    if values.dtype.kind in "bu" or values.min() >= 0:
        largest = int(values.max())
        if largest < (1 << 20):
            counts = np.bincount(values.ravel().astype(np.intp, copy=False), minlength=largest + 1)
            present = np.flatnonzero(counts)
            for value, count in zip(present.tolist(), counts[present].tolist(), strict=True):
                totals[value] = totals.get(value, 0) + count
            return
    unique, counts = np.unique(values, return_counts=True)
    for value, count in zip(unique.tolist(), counts.tolist(), strict=True):
        totals[int(value)] = totals.get(int(value), 0) + count


def dice_iou(
    prediction: Any,
    ground_truth: Any,
    *,
    class_values: Iterable[int] | None = None,
    ignore_value: int | None = None,
) -> dict[int, dict[str, float]]:
    """Per-class Dice and IoU of two label arrays.

    ``dice = 2 |A ∩ B| / (|A| + |B|)`` and ``iou = |A ∩ B| / |A ∪ B|`` where
    ``A`` and ``B`` are the voxels of a class in the prediction and in the
    ground truth. A class absent from both scores 1.0.

    Parameters
    ----------
    prediction, ground_truth : ([Z,] Y, X) arrays of int
        Label arrays of the same shape (numpy, dask or zarr; read block by
        block). Not modified.
    class_values : iterable of int, optional
        Classes to score; default every value present in either array except
        ``ignore_value``.
    ignore_value : int, optional
        Voxels where the ground truth has this value (e.g. 0 for unlabelled in
        a sparse ground truth) are left out of every count.

    Returns
    -------
    dict
        ``{value: {"dice": float, "iou": float}}`` in increasing value order.

    Raises
    ------
    InputError
        If the shapes differ or the arrays do not hold integers.
    """
    for name, array in (("prediction", prediction), ("ground truth", ground_truth)):
        if not hasattr(array, "shape") or not hasattr(array, "__getitem__"):
            raise InputError(f"{name} must be an array, got {type(array).__name__}")
    shape = tuple(int(s) for s in prediction.shape)
    truth_shape = tuple(int(s) for s in ground_truth.shape)
    if shape != truth_shape:
        raise InputError(
            f"prediction has shape {shape} but ground truth has shape {truth_shape}; "
            "they must match voxel for voxel"
        )
    chunks = array_chunks(prediction) or array_chunks(ground_truth)
    block_shape = grow_block_shape(shape, chunks, target_voxels=_BLOCK_VOXELS)
    predicted: dict[int, int] = {}
    true: dict[int, int] = {}
    overlap: dict[int, int] = {}
    for region in block_regions(shape, block_shape):
        p = _as_label_block(np.asarray(prediction[region]), "prediction")
        g = _as_label_block(np.asarray(ground_truth[region]), "ground truth")
        if ignore_value is not None:
            keep = g != ignore_value
            p, g = p[keep], g[keep]
        _add_counts(predicted, p)
        _add_counts(true, g)
        _add_counts(overlap, p[p == g])
    if class_values is None:
        values = sorted(
            (set(predicted) | set(true)) - ({ignore_value} if ignore_value is not None else set())
        )
    else:
        values = sorted({int(v) for v in class_values})
    scores: dict[int, dict[str, float]] = {}
    for value in values:
        a, b, both = predicted.get(value, 0), true.get(value, 0), overlap.get(value, 0)
        union = a + b - both
        scores[value] = {
            "dice": 1.0 if a + b == 0 else 2.0 * both / (a + b),
            "iou": 1.0 if union == 0 else both / union,
        }
    return scores


def mean_dice(scores: Mapping[int, Mapping[str, float]], *, exclude: Sequence[int] = (0,)) -> float:
    """Mean Dice over classes, leaving out ``exclude`` (by default value 0, background).

    Parameters
    ----------
    scores : dict
        Output of :func:`dice_iou`.
    exclude : sequence of int
        Class values to leave out.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        If no class is left.
    """
    excluded = {int(v) for v in exclude}
    dice = [float(s["dice"]) for value, s in scores.items() if int(value) not in excluded]
    if not dice:
        raise ValueError(f"no class left to average after excluding {sorted(excluded)}")
    return math.fsum(dice) / len(dice)
