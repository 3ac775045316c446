"""Class prevalence of an image from a classifier's probabilities, and re-weighting to it.

Strokes are painted where a class is obvious, in amounts that have little to do with how much of
the image each class covers, and never on the band along a boundary. A classifier trained on them
(the forest, the network) decides that band as if the classes were about equally common there, so
the minority class can grow: on the nuclei sample (nuclei cover 20 % of the image, a third to a
half of the labelled pixels) every prediction was a pixel or two too wide, 80 % of its errors
within 2 pixels of a true boundary.

Treat the probabilities as those of a classifier trained on balanced classes and find, by
expectation-maximization (Saerens, Latinne & Decaestecker, *Neural Computation* 14, 2002), the
class prevalence ``π`` at which re-weighted probabilities ``p(c|x) · π(c) / Σ_k p(k|x) · π(k)``
average to ``π`` over the image; the factors ``K · π`` are then applied wherever probabilities
are turned into labels: the forest teacher's map, the forest in the blend, and the network's
prediction. The estimate is exact for calibrated probabilities; a random forest's are not, and
where strokes cover only the cores of objects the forest is unsure in their rims, which the
correction then gives to the majority class. So it is an option
(``TrainConfig.prevalence_correction``, off by default), not a default.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["check_factors", "estimate_factors", "reweight"]

#: Voxels the estimate looks at at most (an even sample of the rest is skipped).
MAX_VOXELS = 1_000_000


def estimate_factors(
    probabilities: np.ndarray, *, iterations: int = 200, tolerance: float = 1e-6, max_voxels: int = MAX_VOXELS
) -> np.ndarray:
    """Per-class factors that re-weight ``probabilities`` to the prevalence they imply.

    Parameters
    ----------
    probabilities : (K, *S) ndarray
        Class probabilities of an image (or of an even sample of it).
    iterations : int
        Most EM iterations.
    tolerance : float
        Stop when no class's prevalence changes by more than this.
    max_voxels : int
        Larger inputs are sampled with an even stride.

    Returns
    -------
    (K,) float64 ndarray
        ``K · π``, where ``π`` is the estimated prevalence: 1 for every class when the
        probabilities already average to equal shares, 0 for a class with no probability anywhere.

    Raises
    ------
    ValueError
        If ``probabilities`` has fewer than 2 classes or no voxel.
    """
    num_classes = probabilities.shape[0]
    table = probabilities.reshape(num_classes, -1)
    if num_classes < 2 or table.shape[1] == 0:
        raise ValueError(f"need probabilities of 2 or more classes and 1 voxel, got {probabilities.shape}")
    stride = max(1, -(-table.shape[1] // max_voxels))
    table = np.nan_to_num(table[:, ::stride].astype(np.float64))
    table /= np.maximum(table.sum(0, keepdims=True), 1e-12)
    prevalence = np.full(num_classes, 1.0 / num_classes)
    for _ in range(iterations):
        weighted = table * prevalence[:, None]
        weighted /= np.maximum(weighted.sum(0, keepdims=True), 1e-12)
        updated = weighted.mean(1)
        done = np.abs(updated - prevalence).max() < tolerance
        prevalence = updated
        if done:
            break
    return prevalence * num_classes


def reweight(probabilities: np.ndarray, factors: Sequence[float] | np.ndarray | None) -> np.ndarray:
    """``probabilities · factors``, renormalized over the class axis (axis 0).

    ``probabilities`` is returned unchanged when ``factors`` is None. Voxels whose re-weighted
    probabilities are all 0 keep their input probabilities.
    """
    if factors is None:
        return probabilities
    shape = (-1,) + (1,) * (probabilities.ndim - 1)
    weighted = probabilities * np.asarray(factors, dtype=probabilities.dtype).reshape(shape)
    total = weighted.sum(0, keepdims=True)
    return np.divide(weighted, total, out=probabilities.copy(), where=total > 0)


def check_factors(factors: object, num_classes: int) -> tuple[float, ...]:
    """``factors`` as a tuple of ``num_classes`` finite, non-negative floats, not all 0.

    Raises
    ------
    ValueError
        If they are not.
    """
    try:
        values = tuple(float(f) for f in factors)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        raise ValueError(f"prevalence factors must be a list of numbers, got {factors!r}") from None
    if len(values) != num_classes or not all(np.isfinite(values)) or min(values) < 0 or max(values) == 0:
        raise ValueError(
            f"prevalence factors must be {num_classes} finite numbers >= 0, not all 0; got {list(values)}"
        )
    return values
