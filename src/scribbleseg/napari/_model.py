"""Qt-free state and array helpers behind the ScribbleSeg widget.

Nothing here imports napari or Qt: the widget keeps its layers, and these objects keep the
bookkeeping that decides what to send to the trainer and what to write into the layers, so the
rules can be tested on plain arrays.

- :class:`LabelSync` remembers the labels the trainer knows and returns only the changed region.
- :class:`PredictionRecord` remembers what the widget last wrote into the prediction layer, so
  that voxels the user edited there are never overwritten by a preview and can be turned into
  scribbles (:meth:`PredictionRecord.corrections`).
- :class:`LossHistory` keeps a bounded loss curve for the live plot.
- :class:`ChannelStack` presents same-shape channel layers as one ``(C, [Z], Y, X)`` array
  without copying them.
- :func:`view_region` turns what the viewer shows into the region to preview.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "ChannelStack",
    "LabelSync",
    "LossHistory",
    "PredictionRecord",
    "bounding_region",
    "labels_for_export",
    "normalised_entropy",
    "view_region",
]

Region = tuple[slice, ...]


def bounding_region(mask: np.ndarray, *, offset: Sequence[int] | None = None) -> Region | None:
    """Smallest region holding every True voxel of ``mask``.

    Parameters
    ----------
    mask : ([Z,] Y, X) bool ndarray
        Not modified.
    offset : sequence of int, optional
        Added to the region's bounds (the position of ``mask`` inside a larger array).

    Returns
    -------
    tuple of slice or None
        None when ``mask`` has no True voxel.
    """
    offset = tuple(offset) if offset is not None else (0,) * mask.ndim
    bounds = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(np.any(mask, axis=others) if others else mask)
        if hits.size == 0:
            return None
        bounds.append(slice(int(hits[0]) + offset[axis], int(hits[-1]) + 1 + offset[axis]))
    return tuple(bounds)


def _local(region: Region, within: Region) -> Region:
    """``region`` expressed relative to the start of ``within``."""
    return tuple(slice(r.start - w.start, r.stop - w.start) for r, w in zip(region, within, strict=True))


class LabelSync:
    """The labels the trainer knows, and the changes the user made since.

    Parameters
    ----------
    labels : ([Z,] Y, X) ndarray of int
        The labels the trainer was built from; copied.
    class_values : sequence of int
        Values the trainer can learn; other non-zero values are sent as 0 (unlabelled) and
        reported by :meth:`changes` so the user can be told to restart training.
    """

    def __init__(self, labels: np.ndarray, class_values: Sequence[int]) -> None:
        self._known = np.array(labels, copy=True)
        self._class_values = np.asarray(sorted(int(v) for v in class_values), dtype=np.int64)

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial shape of the labels."""
        return tuple(self._known.shape)

    def changes(
        self, current: np.ndarray, region: Region | None = None
    ) -> tuple[Region, np.ndarray, tuple[int, ...]] | None:
        """Compare ``current`` with the known labels and take the difference as known.

        Parameters
        ----------
        current : ([Z,] Y, X) array of int
            The labels now (scribbles merged with point balls). Not modified.
        region : tuple of slice, optional
            Only look inside this region (e.g. a stroke's bounding box); default everywhere.

        Returns
        -------
        (region, labels, unknown) or None
            The bounding region of the changed voxels, a copy of ``current`` over it with values
            the trainer does not know replaced by 0, and those unknown values (sorted); None when
            nothing changed.
        """
        if tuple(current.shape) != self.shape:
            raise ValueError(f"labels have shape {tuple(current.shape)}, expected {self.shape}")
        region = region if region is not None else tuple(slice(0, s) for s in self.shape)
        now = np.asarray(current[region])
        changed = bounding_region(now != self._known[region], offset=[s.start for s in region])
        if changed is None:
            return None
        block = np.array(now[_local(changed, region)], copy=True)
        self._known[changed] = block
        labelled = block != 0
        known = np.isin(block, self._class_values)
        unknown = labelled & ~known
        unknown_values: tuple[int, ...] = ()
        if unknown.any():
            unknown_values = tuple(int(v) for v in np.unique(block[unknown]))
            block = np.where(unknown, 0, block).astype(block.dtype, copy=False)
        return changed, block, unknown_values


class PredictionRecord:
    """What the widget last wrote into the prediction layer.

    A voxel whose layer value differs from the record was edited by the user: previews leave it
    alone, and :meth:`corrections` turns it into a scribble.

    Parameters
    ----------
    shape : tuple of int
        Spatial shape of the prediction layer.
    dtype : numpy dtype
        Its dtype.
    """

    def __init__(self, shape: Sequence[int], dtype: Any) -> None:
        self.written = np.zeros(tuple(int(s) for s in shape), dtype=dtype)

    def merge(self, current: np.ndarray, region: Region, labels: np.ndarray) -> np.ndarray:
        """Return what to write over ``region``: ``labels``, except where the user edited.

        Parameters
        ----------
        current : array of int, shape of the region
            The layer's values over ``region`` now. Not modified.
        region : tuple of slice
            Inside the layer.
        labels : array of int, shape of the region
            The new prediction.

        Returns
        -------
        ndarray
            The values to write; the record is updated to the new prediction where not edited.
        """
        known = self.written[region]
        edited = np.asarray(current) != known
        self.written[region] = np.where(edited, known, labels)
        return np.where(edited, current, labels).astype(self.written.dtype, copy=False)

    def edited(self, current: np.ndarray) -> np.ndarray:
        """Voxels of ``current`` (the whole layer) that the user changed to a class (non-zero)."""
        return (np.asarray(current) != self.written) & (np.asarray(current) != 0)

    def corrections(
        self, current: np.ndarray, scribbles: np.ndarray
    ) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
        """Return the edited voxels that may become scribbles, and mark every edit as seen.

        Parameters
        ----------
        current : ([Z,] Y, X) array of int
            The prediction layer's data. Not modified.
        scribbles : ([Z,] Y, X) array of int
            The scribbles; voxels already scribbled are never overwritten.

        Returns
        -------
        (indices, values)
            ``np.nonzero``-style indices of the voxels to scribble and their class values.
        """
        current = np.asarray(current)
        edited = self.edited(current)
        add = edited & (np.asarray(scribbles) == 0)
        indices = np.nonzero(add)
        values = current[indices]
        # Every difference (erasures included) is now the user's: previews may overwrite it again.
        changed = current != self.written
        self.written[changed] = current[changed]
        return indices, values


class LossHistory:
    """A bounded loss curve: when full, every other point is dropped (the curve keeps its shape).

    Parameters
    ----------
    capacity : int
        Most points kept; at least 4.
    """

    def __init__(self, capacity: int = 400) -> None:
        self.capacity = max(4, int(capacity))
        self.steps: list[int] = []
        self.losses: list[float] = []

    def add(self, step: int, loss: float) -> None:
        """Add one point; non-finite losses are skipped."""
        if not math.isfinite(loss):
            return
        self.steps.append(int(step))
        self.losses.append(float(loss))
        if len(self.losses) > self.capacity:
            self.steps = self.steps[1::2]
            self.losses = self.losses[1::2]

    def clear(self) -> None:
        """Forget every point."""
        self.steps.clear()
        self.losses.clear()

    def __len__(self) -> int:
        return len(self.losses)


def normalised_entropy(probabilities: np.ndarray) -> np.ndarray:
    """Entropy of class probabilities divided by its maximum ``log K``: 0 = certain, 1 = uniform.

    Parameters
    ----------
    probabilities : (K, ...) array of float
        Probabilities along the first axis. Not modified.

    Returns
    -------
    float32 ndarray
        Shape ``probabilities.shape[1:]``, values in ``[0, 1]``.
    """
    p = np.clip(np.asarray(probabilities, dtype=np.float32), 1e-7, 1.0)
    k = p.shape[0]
    if k < 2:
        return np.zeros(p.shape[1:], dtype=np.float32)
    entropy = -(p * np.log(p)).sum(axis=0) / np.float32(math.log(k))
    return np.clip(entropy, 0.0, 1.0).astype(np.float32, copy=False)


def labels_for_export(labels: Any, background: int | None) -> Any:
    """Labels with the background class written as 0 (unchanged when there is none).

    Parameters
    ----------
    labels : array of int
        numpy or dask array. Not modified.
    background : int, optional
        The background class value.
    """
    if background is None:
        return labels
    if isinstance(labels, np.ndarray):
        return np.where(labels == background, 0, labels).astype(labels.dtype, copy=False)
    import dask.array as da

    data = da.asarray(labels)
    return da.where(data == background, 0, data).astype(data.dtype)


class ChannelStack:
    """Same-shape arrays seen as one ``(C, *shape)`` array, read lazily channel by channel.

    Parameters
    ----------
    arrays : sequence of array-like
        numpy, dask or zarr arrays of one shape; they are not copied.
    """

    def __init__(self, arrays: Sequence[Any]) -> None:
        if not arrays:
            raise ValueError("ChannelStack needs at least one array")
        shapes = {tuple(int(s) for s in a.shape) for a in arrays}
        if len(shapes) != 1:
            raise ValueError(f"channel arrays differ in shape: {sorted(shapes)}")
        self._arrays = list(arrays)
        self.shape = (len(arrays), *shapes.pop())
        self.dtype = np.result_type(*(np.dtype(a.dtype) for a in arrays))
        self.ndim = len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        channel_key, spatial_key = key[0], key[1:]
        channels = range(len(self._arrays))[channel_key]
        if isinstance(channels, int):
            return np.asarray(self._arrays[channels][spatial_key], dtype=self.dtype)
        return np.stack([np.asarray(self._arrays[c][spatial_key], dtype=self.dtype) for c in channels])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[(slice(None),)]
        return out if dtype is None else out.astype(dtype)


def _clip_centred(low: int, high: int, size: int, most: int) -> tuple[int, int]:
    """``[low, high)`` cut to at most ``most`` voxels around its centre, inside ``[0, size)``."""
    low, high = max(0, low), min(size, high)
    if high <= low:
        return 0, min(size, most)
    if high - low > most:
        centre = (low + high) // 2
        low = max(0, min(centre - most // 2, size - most))
        high = low + most
    return low, high


def view_region(
    shape: Sequence[int],
    *,
    displayed: Sequence[int],
    corner_low: Sequence[float],
    corner_high: Sequence[float],
    current: Sequence[float],
    max_shape: Sequence[int],
) -> Region:
    """Return the region of an image the user is looking at, bounded in size.

    Parameters
    ----------
    shape : tuple of int
        Spatial shape of the image ``([Z,] Y, X)``.
    displayed : sequence of int
        Axes of the image on screen (two for a slice, all three in a 3D view).
    corner_low, corner_high : sequence of float
        The first and last visible voxel along each axis (napari's ``corner_pixels``); only the
        displayed axes are used, and an axis whose corners are equal (a view not drawn yet)
        counts as wholly visible.
    current : sequence of float
        The current position in voxel coordinates; gives the slice on axes not displayed.
    max_shape : sequence of int
        Most voxels per axis; a larger view is cut around its centre.

    Returns
    -------
    tuple of slice
        One slice per axis, inside the image, never empty.
    """
    region = []
    for axis, size in enumerate(shape):
        most = max(1, int(max_shape[axis]))
        if axis in displayed:
            if corner_high[axis] <= corner_low[axis]:  # not drawn yet: napari has no corners
                low, high = 0, int(size)
            else:
                low = math.floor(corner_low[axis])
                high = math.floor(corner_high[axis]) + 1
            low, high = _clip_centred(low, high, int(size), most)
        else:
            low = int(np.clip(round(float(current[axis])), 0, size - 1))
            high = low + 1
        region.append(slice(int(low), int(high)))
    return tuple(region)
