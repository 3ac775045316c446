"""Simulated annotations for the accuracy benchmark: scribbles and point clicks drawn from ground truth.

Scribbles are drawn as a person paints them: strokes along the skeleton of eroded regions, on a
random subset of the objects of each class, in 3D on every n-th axial slice only. Points are a few
clicks per class, deep inside the class's regions (on distinct objects where there are several).
Everything is seeded, so every method gets the same annotations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.morphology import skeletonize

from scribbleseg.core.annotations import points_to_labels


@dataclass(frozen=True)
class Density:
    """How much a simulated annotator paints.

    Parameters
    ----------
    name : str
    object_fraction : float
        Share of each class's objects (connected components per slice) that get a stroke.
    stroke_fraction : float
        Share of an object's skeleton that the stroke covers.
    slice_step : int
        3D only: strokes on every ``slice_step``-th axial slice.
    points_per_class : int
        Point clicks per class.
    min_strokes : int
        Strokes per class and slice at least: classes with few, large regions (background) get
        several strokes in different places.
    max_stroke : int
        Longest stroke, in skeleton pixels.
    """

    name: str
    object_fraction: float
    stroke_fraction: float
    slice_step: int
    points_per_class: int
    min_strokes: int
    max_stroke: int


DENSITIES = {
    "sparse": Density("sparse", 0.2, 0.5, slice_step=8, points_per_class=5, min_strokes=8, max_stroke=80),
    "dense": Density("dense", 0.4, 0.7, slice_step=4, points_per_class=20, min_strokes=16, max_stroke=120),
}


def _stroke(component: np.ndarray, fraction: float, max_length: int, rng: np.random.Generator) -> np.ndarray:
    """A stroke along part of the skeleton of an eroded 2D region."""
    distance = ndimage.distance_transform_edt(component)
    # Erode by a third of the region's half-width, at least one and at most three pixels: strokes
    # stay off the boundary, as a person's do.
    depth = float(np.clip(distance.max() / 3.0, 1.0, 3.0))
    core = distance > depth
    if not core.any():
        core = distance >= distance.max()
    skeleton = skeletonize(core)
    if not skeleton.any():
        skeleton = core
    ys, xs = np.nonzero(skeleton)
    if fraction < 1.0 and len(ys) > 4:
        # A contiguous piece of skeleton: the pixels nearest (along the skeleton's geodesic order
        # approximated by the distance from a random skeleton pixel) to a random start.
        start = rng.integers(len(ys))
        order = np.argsort(np.hypot(ys - ys[start], xs - xs[start]))
        keep = order[: max(2, min(max_length, round(fraction * len(ys))))]
        ys, xs = ys[keep], xs[keep]
    stroke = np.zeros_like(component)
    stroke[ys, xs] = True
    # A brush about 3 pixels wide, clipped to the region.
    return ndimage.binary_dilation(stroke, iterations=1) & component


def _scribble_slice(
    truth: np.ndarray, classes: Sequence[int], density: Density, rng: np.random.Generator
) -> np.ndarray:
    out = np.zeros(truth.shape, dtype=np.uint8)
    for value in classes:
        components, count = ndimage.label(truth == value)
        if count == 0:
            continue
        sizes = ndimage.sum_labels(np.ones_like(components), components, index=np.arange(1, count + 1))
        ids = np.arange(1, count + 1)[sizes >= 9]  # specks are not worth a stroke
        if len(ids) == 0:
            continue
        strokes = max(density.min_strokes, round(density.object_fraction * len(ids)))
        if strokes <= len(ids):
            chosen = rng.choice(ids, size=strokes, replace=False)
        else:  # few large regions: several strokes each, more in larger ones
            weights = sizes[ids - 1] / sizes[ids - 1].sum()
            chosen = rng.choice(ids, size=strokes, replace=True, p=weights)
        boxes = ndimage.find_objects(components)
        for label in chosen:
            box = boxes[label - 1]
            stroke = _stroke(components[box] == label, density.stroke_fraction, density.max_stroke, rng)
            out[box][stroke] = value
    return out


def simulate_scribbles(
    truth: np.ndarray, classes: Sequence[int], density: Density, *, seed: int
) -> np.ndarray:
    """Scribbles drawn from a dense ground truth.

    Parameters
    ----------
    truth : ([Z,] Y, X) ndarray of int
    classes : sequence of int
        Class values to scribble.
    density : Density
    seed : int

    Returns
    -------
    ([Z,] Y, X) ndarray of uint8
        0 = unlabelled, else the class value.
    """
    rng = np.random.default_rng(seed)
    if truth.ndim == 2:
        return _scribble_slice(truth, classes, density, rng)
    out = np.zeros(truth.shape, dtype=np.uint8)
    first = int(rng.integers(density.slice_step))
    for z in range(first, truth.shape[0], density.slice_step):
        out[z] = _scribble_slice(truth[z], classes, density, rng)
    return out


def simulate_points(
    truth: np.ndarray,
    classes: Sequence[int],
    density: Density,
    *,
    seed: int,
    spacing: Sequence[float],
    radius: float = 2.0,
) -> np.ndarray:
    """Point clicks drawn from a dense ground truth, rasterised as the trainer does (balls of ``radius``).

    Clicks land where their ball fits inside the class, in the inner half of those places (distance to
    the boundary above the median), one per object while there are unclicked objects.

    Returns
    -------
    ([Z,] Y, X) ndarray of uint8
    """
    rng = np.random.default_rng(seed)
    points, point_classes = [], []
    for value in classes:
        mask = truth == value
        if not mask.any():
            continue
        distance = ndimage.distance_transform_edt(mask, sampling=spacing)
        # The whole ball inside the class (a person clicks inside a region, and the trainer draws
        # the click as a ball), then the inner half of what is left.
        fits = distance > radius * min(spacing)
        if not fits.any():
            fits = distance >= distance.max()
        inner = fits & (distance >= np.median(distance[fits]))
        components, _count = ndimage.label(inner)
        coords = np.argwhere(inner)
        owner = components[tuple(coords.T)]
        order = rng.permutation(len(coords))
        seen: set[int] = set()
        picked: list[int] = []
        for i in order:  # one click per object first
            if owner[i] not in seen:
                seen.add(int(owner[i]))
                picked.append(int(i))
            if len(picked) == density.points_per_class:
                break
        if len(picked) < density.points_per_class:
            rest = [int(i) for i in order if int(i) not in set(picked)]
            picked += rest[: density.points_per_class - len(picked)]
        points.append(coords[picked])
        point_classes.append(np.full(len(picked), value))
    return points_to_labels(
        np.concatenate(points).astype(float),
        np.concatenate(point_classes),
        shape=truth.shape,
        spacing=spacing,
        radius=radius,
    ).astype(np.uint8)
