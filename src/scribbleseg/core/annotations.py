"""Scribbles and points -> sparse training targets.

The user paints labels (``0 = unlabelled``, ``k >= 1 = class k``, values kept
as chosen, e.g. 1, 2, 5) and may place points, each a small ball of its class.
:func:`labels_to_target` validates them and returns a :class:`SparseTarget`:
the class-index target (:data:`IGNORE_INDEX` where unlabelled), the
:class:`ClassMap` between user values and class indices, and a
:class:`LabelledVoxelIndex` of labelled voxels that the patch sampler draws
from and that is updated incrementally while the user keeps painting.
"""

from __future__ import annotations

import itertools
import math
import operator
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scribbleseg.core.volume import array_chunks, block_regions, check_spacing, region_bounds
from scribbleseg.errors import AnnotationError, InputError

__all__ = [
    "IGNORE_INDEX",
    "ClassMap",
    "LabelledVoxelIndex",
    "SparseTarget",
    "check_labels",
    "labels_to_target",
    "points_to_labels",
]

#: Class index of unlabelled voxels in training targets (label value 0).
IGNORE_INDEX = -1

_LABELS_MEANING = "0 = unlabelled, k = class k"
_NO_LABELS_MESSAGE = "no labelled voxels: paint at least one stroke per class (0 = unlabelled)"

#: Bucket shape of a LabelledVoxelIndex over an unchunked (numpy) array.
_DEFAULT_BUCKET = {2: (256, 256), 3: (64, 64, 64)}

#: Largest class value: class values are handled as int64.
_MAX_CLASS_VALUE = int(np.iinfo(np.int64).max)


def _format_values(values: Iterable[Any], limit: int = 5) -> str:
    values = list(values)
    text = ", ".join(str(v) for v in values[:limit])
    return text + (", …" if len(values) > limit else "")


def _as_class_values(values: Iterable[Any], what: str) -> tuple[int, ...]:
    try:
        return tuple(operator.index(v) for v in values)
    except TypeError:
        raise AnnotationError(f"{what} must be integers, got {values!r}") from None


# ---------------------------------------------------------------------------
# class map
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassMap:
    """The user's class values and their class indices ``0 .. K-1``.

    Parameters
    ----------
    values : tuple of int
        Sorted, unique label values ``>= 1``, e.g. ``(1, 2, 5)``; class index
        ``i`` is ``values[i]``.
    names : tuple of str
        One name per value; default ``"class 1"``, ``"class 2"`` ….
    background : int, optional
        A value of ``values`` marked as background (written as 0 on export).
    """

    values: tuple[int, ...]
    names: tuple[str, ...] = ()
    background: int | None = None

    def __post_init__(self) -> None:
        values = _as_class_values(self.values, "class values")
        if not values:
            raise AnnotationError("a class map needs at least one class value")
        if min(values) < 1:
            raise AnnotationError(f"class values must be >= 1 ({_LABELS_MEANING}), got {values}")
        if max(values) > _MAX_CLASS_VALUE:
            raise AnnotationError(
                f"class values must be at most {_MAX_CLASS_VALUE}, got {_format_values([max(values)])}"
            )
        if list(values) != sorted(set(values)):
            raise AnnotationError(f"class values must be sorted and unique, got {values}")
        names = tuple(str(n) for n in self.names) if self.names else tuple(f"class {v}" for v in values)
        if len(names) != len(values):
            raise AnnotationError(f"got {len(names)} class names for {len(values)} class values {values}")
        background = self.background
        if background is not None:
            background = _as_class_values([background], "the background class")[0]
            if background not in values:
                raise AnnotationError(f"background class {background} is not one of the classes {values}")
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "background", background)

    @classmethod
    def from_values(
        cls, values: Iterable[int], *, names: Sequence[str] | None = None, background: int | None = None
    ) -> ClassMap:
        """Build a class map from values in any order (duplicates are dropped).

        Parameters
        ----------
        values : iterable of int
            Class values ``>= 1``.
        names : sequence of str, optional
            One name per entry of ``values``, in the same order.
        background : int, optional
            The background value.
        """
        values = _as_class_values(values, "class values")
        if names is not None:
            names = [str(n) for n in names]
            if len(names) != len(values):
                raise AnnotationError(f"got {len(names)} class names for {len(values)} class values {values}")
            by_value: dict[int, str] = {}
            for value, name in zip(values, names, strict=True):
                by_value.setdefault(value, name)
            ordered = sorted(by_value)
            return cls(tuple(ordered), tuple(by_value[v] for v in ordered), background)
        return cls(tuple(sorted(set(values))), (), background)

    @property
    def num_classes(self) -> int:
        """Number of classes ``K``."""
        return len(self.values)

    @property
    def background_index(self) -> int | None:
        """Class index of the background value, or None."""
        return None if self.background is None else self.values.index(self.background)

    def index_of(self, value: int) -> int:
        """Class index of a label value."""
        try:
            return self.values.index(operator.index(value))
        except ValueError:
            raise AnnotationError(f"label value {value} is not one of the classes {self.values}") from None

    def to_index(self, labels: np.ndarray) -> np.ndarray:
        """Map label values to class indices.

        Parameters
        ----------
        labels : array of int
            Label values (0 = unlabelled). Not modified.

        Returns
        -------
        int64 ndarray, same shape
            ``IGNORE_INDEX`` where 0, the class index elsewhere.

        Raises
        ------
        AnnotationError
            If a non-zero value is not one of :attr:`values`.
        """
        labels = _integral_array(np.asarray(labels), "labels")
        table = np.asarray(self.values, dtype=np.int64)
        flat = labels.astype(np.int64, copy=False)
        position = np.clip(np.searchsorted(table, flat), 0, len(table) - 1)
        labelled = flat != 0
        known = table[position] == flat
        unknown = labelled & ~known
        if unknown.any():
            bad = np.unique(flat[unknown])
            raise AnnotationError(
                f"labels contain value(s) {_format_values(bad.tolist())} that are not among the classes "
                f"{self.values}; erase those strokes or add the class"
            )
        return np.where(labelled, position, IGNORE_INDEX).astype(np.int64, copy=False)

    def to_values(self, index: np.ndarray, *, background_as_zero: bool = False) -> np.ndarray:
        """Map class indices back to label values.

        Parameters
        ----------
        index : array of int
            Class indices in ``[0, K)``, or ``IGNORE_INDEX`` (becomes 0). Not modified.
        background_as_zero : bool
            Write the background class as 0 (for exports).

        Returns
        -------
        ndarray, same shape
            Label values, in the smallest unsigned dtype that holds them.
        """
        index = np.asarray(index)
        if index.dtype.kind not in "biu":
            raise ValueError(f"class indices must be integers, got dtype {index.dtype}")
        if index.size and (index.min() < IGNORE_INDEX or index.max() >= self.num_classes):
            raise ValueError(
                f"class indices must lie in [{IGNORE_INDEX}, {self.num_classes}), "
                f"got [{index.min()}, {index.max()}]"
            )
        lookup_values = [0, *self.values]
        if background_as_zero and self.background is not None:
            lookup_values[1 + self.values.index(self.background)] = 0
        lookup = np.asarray(lookup_values, dtype=np.min_scalar_type(max(lookup_values)))
        return lookup[index.astype(np.int64, copy=False) + 1]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict of the fields."""
        return {"values": list(self.values), "names": list(self.names), "background": self.background}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClassMap:
        """Build from :meth:`to_dict`'s output."""
        if not isinstance(data, Mapping) or not {"values"} <= set(data) <= {"values", "names", "background"}:
            raise AnnotationError(
                f"a class map must be a mapping with keys values, names, background; got {data!r}"
            )
        return cls(tuple(data["values"]), tuple(data.get("names") or ()), data.get("background"))


# ---------------------------------------------------------------------------
# validation and points
# ---------------------------------------------------------------------------


def _load(array: Any) -> np.ndarray:
    """Load a numpy / dask / zarr array into memory (numpy arrays are returned as they are)."""
    if isinstance(array, np.ndarray):
        return array
    if hasattr(array, "shape") and hasattr(array, "__getitem__"):
        return np.asarray(array[(slice(None),) * len(array.shape)])
    return np.asarray(array)


def _integral_array(array: np.ndarray, what: str) -> np.ndarray:
    """Return ``array`` with an integer dtype, or raise if it does not hold integers."""
    kind = array.dtype.kind
    if kind == "u" and array.dtype.itemsize == 8 and array.size and int(array.max()) > _MAX_CLASS_VALUE:
        raise AnnotationError(f"{what} hold values too large for a class, like {int(array.max())}")
    if kind in "iu":
        return array
    if kind == "b":
        return array.astype(np.uint8)
    if kind == "f":
        with np.errstate(invalid="ignore"):
            integral = np.isfinite(array) & (np.floor(array) == array)
        if not integral.all():
            example = array[~integral].flat[0]
            raise AnnotationError(
                f"{what} must be integers ({_LABELS_MEANING}); got float values like {example:g}"
            )
        if array.size == 0:
            return array.astype(np.uint8)
        low, high = float(array.min()), float(array.max())
        # float(_MAX_CLASS_VALUE) rounds up to 2**63, which int64 cannot hold: compare with >=
        for extreme in (low, high):
            if abs(extreme) >= float(_MAX_CLASS_VALUE):
                raise AnnotationError(f"{what} hold values too large for a class, like {extreme:g}")
        if low < 0:
            return array.astype(np.int64)
        return array.astype(np.min_scalar_type(int(high)))
    raise AnnotationError(f"{what} must be integers ({_LABELS_MEANING}); got dtype {array.dtype}")


def check_labels(labels: Any, *, spatial_shape: Sequence[int]) -> np.ndarray:
    """Validate a labels array and load it into memory.

    Parameters
    ----------
    labels : ([Z,] Y, X) array
        numpy, dask or zarr array of label values, ``0 = unlabelled``,
        ``k >= 1 = class k``. Integer or bool; floats are accepted when every
        value is integral. Not modified.
    spatial_shape : tuple of int
        The image's spatial shape, which ``labels`` must have.

    Returns
    -------
    ([Z,] Y, X) ndarray
        Integer labels. A valid numpy integer input is returned as is (not copied).

    Raises
    ------
    InputError
        If the shape differs from ``spatial_shape`` (checked before loading) or
        is not 2D or 3D.
    AnnotationError
        If the values are not integers (non-integral floats, NaN, other
        dtypes) or some are negative.
    """
    if not hasattr(labels, "shape"):
        labels = np.asarray(labels)
    shape = tuple(int(s) for s in labels.shape)
    spatial_shape = tuple(int(s) for s in spatial_shape)
    if shape != spatial_shape:
        raise InputError(
            f"labels have shape {shape} but the image's spatial shape is {spatial_shape}; "
            "labels must cover the image voxel for voxel, without a channel axis"
        )
    if len(shape) not in (2, 3):
        raise InputError(f"labels of shape {shape} are {len(shape)}D; expected 2D (Y, X) or 3D (Z, Y, X)")
    dtype = np.dtype(getattr(labels, "dtype", np.float64))
    if dtype.kind not in "biuf":
        raise AnnotationError(f"labels must be integers ({_LABELS_MEANING}); got dtype {dtype}")
    array = _integral_array(_load(labels), "labels")
    if array.dtype.kind == "i" and array.size and array.min() < 0:
        example = array[array < 0].flat[0]
        raise AnnotationError(f"labels must be >= 0 ({_LABELS_MEANING}); got negative values like {example}")
    return array


def points_to_labels(
    points: np.ndarray,
    classes: np.ndarray,
    *,
    shape: Sequence[int],
    spacing: Sequence[float] | None = None,
    radius: float = 2.0,
) -> np.ndarray:
    """Draw each point as a ball of its class.

    Parameters
    ----------
    points : (N, ndim) array of float
        Voxel coordinates ``([z,] y, x)`` (napari's data coordinates).
    classes : (N,) array of int
        Class value ``>= 1`` of each point.
    shape : tuple of int
        Spatial shape of the output.
    spacing : sequence of float, optional
        Physical voxel spacing; default isotropic.
    radius : float
        Ball radius in units of the finest spacing, so the ball is an
        ellipsoid in voxels when the spacing is anisotropic (``radius *
        min(spacing) / spacing[i]`` voxels along axis ``i``). The voxel
        nearest to a point is always part of its ball.

    Returns
    -------
    ([Z,] Y, X) ndarray of unsigned int
        Label values; 0 outside every ball. Where balls overlap, the later point wins.

    Raises
    ------
    AnnotationError
        If the points do not have ``len(shape)`` coordinates, lie outside the
        image (a coordinate outside ``[-0.5, size - 0.5)``), are not finite,
        or the classes are not integers ``>= 1``.
    """
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    spacing = check_spacing(spacing, ndim)
    radius = float(radius)
    if not (math.isfinite(radius) and radius > 0):
        raise AnnotationError(f"point radius must be a finite number > 0, got {radius}")
    try:
        given = np.asarray(points)
        if given.dtype.kind not in "biufO":  # strings, complex numbers, dates …
            raise TypeError
        coordinates = given.astype(np.float64)
    except (TypeError, ValueError):
        raise AnnotationError(
            f"points must be an (N, {ndim}) array of numbers (voxel coordinates), got {points!r:.80}"
        ) from None
    if coordinates.size == 0:
        coordinates = coordinates.reshape(0, ndim)
    if coordinates.ndim != 2 or coordinates.shape[1] != ndim:
        raise AnnotationError(
            f"points must be an (N, {ndim}) array of voxel coordinates for an image with {ndim} spatial "
            f"dimensions, got an array of shape {coordinates.shape}"
        )
    count = coordinates.shape[0]
    point_classes = np.asarray(classes)
    if point_classes.size == 0:
        point_classes = point_classes.reshape(0).astype(np.int64)
    if point_classes.shape != (count,):
        raise AnnotationError(f"got {point_classes.size} point classes for {count} points")
    point_classes = _integral_array(point_classes, "point classes").astype(np.int64)
    if count and point_classes.min() < 1:
        raise AnnotationError(
            f"point classes must be >= 1, got {_format_values(np.unique(point_classes[point_classes < 1]))}"
        )
    if not np.isfinite(coordinates).all():
        bad = np.flatnonzero(~np.isfinite(coordinates).all(axis=1))
        raise AnnotationError(f"{len(bad)} point(s) have non-finite coordinates: #{_format_values(bad)}")
    extent = np.asarray(shape, dtype=np.float64)
    inside = np.all((coordinates >= -0.5) & (coordinates < extent - 0.5), axis=1)
    if not inside.all():
        bad = np.flatnonzero(~inside)
        listing = [f"#{i} at {tuple(round(float(c), 2) for c in coordinates[i])}" for i in bad]
        raise AnnotationError(
            f"{len(bad)} of {count} points lie outside the image of shape {shape}: "
            f"{_format_values(listing)}; move or delete them (coordinates are in voxels)"
        )
    dtype = np.min_scalar_type(int(point_classes.max())) if count else np.dtype(np.uint8)
    out = np.zeros(shape, dtype=dtype)
    radii = radius * min(spacing) / np.asarray(spacing)
    last = extent.astype(np.int64) - 1
    for point, value in zip(coordinates, point_classes, strict=True):
        centre = np.clip(np.floor(point + 0.5), 0, last).astype(np.int64)
        low = np.minimum(np.maximum(np.ceil(point - radii), 0).astype(np.int64), centre)
        high = np.maximum(np.minimum(np.floor(point + radii), last).astype(np.int64), centre)
        box = tuple(slice(int(a), int(b) + 1) for a, b in zip(low, high, strict=True))
        grids = np.ogrid[box]
        distance = sum(((g - p) / r) ** 2 for g, p, r in zip(grids, point, radii, strict=True))
        ball = np.broadcast_to(distance <= 1.0 + 1e-9, tuple(b.stop - b.start for b in box)).copy()
        ball[tuple(centre - low)] = True
        out[box][ball] = value
    return out


# ---------------------------------------------------------------------------
# labelled voxel index
# ---------------------------------------------------------------------------


def _check_index_values(block: np.ndarray, num_classes: int) -> np.ndarray:
    if block.dtype.kind not in "iu":
        raise AnnotationError(f"class index labels must be integers, got dtype {block.dtype}")
    if block.size and (block.min() < IGNORE_INDEX or block.max() >= num_classes):
        raise AnnotationError(
            f"class index labels must lie in [{IGNORE_INDEX}, {num_classes}) "
            f"({IGNORE_INDEX} = unlabelled), got [{block.min()}, {block.max()}]"
        )
    return block


def _labelled_entries(block: np.ndarray, offset: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates (C order) and classes of the labelled voxels of a block placed at ``offset``."""
    nonzero = np.nonzero(block != IGNORE_INDEX)
    classes = block[nonzero].astype(np.int64)
    coords = np.stack(nonzero, axis=1).astype(np.int64, copy=False) + np.asarray(offset, dtype=np.int64)
    return coords, classes


class LabelledVoxelIndex:
    """Coordinates and class indices of the labelled voxels, updated incrementally as the user paints.

    The entries live in buckets of a regular grid (``bucket_shape``, by default
    the chunks of the labels), so that :meth:`update` touches only the
    buckets of the painted region. All methods are thread-safe: the GUI
    thread may call :meth:`update` while a training worker calls
    :meth:`sample`.

    Parameters
    ----------
    shape : tuple of int
        Spatial shape ``([Z,] Y, X)`` of the labels.
    num_classes : int
        Number of classes ``K``; class indices lie in ``[0, K)``.
    bucket_shape : tuple of int, optional
        Bucket grid; default 64³ in 3D, 256² in 2D.
    """

    def __init__(
        self, shape: Sequence[int], *, num_classes: int, bucket_shape: Sequence[int] | None = None
    ) -> None:
        self._shape = tuple(int(s) for s in shape)
        self._num_classes = operator.index(num_classes)
        if self._num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if bucket_shape is None:
            bucket_shape = _DEFAULT_BUCKET.get(len(self._shape), (32,) * len(self._shape))
        if len(bucket_shape) != len(self._shape):
            raise ValueError(f"bucket_shape {tuple(bucket_shape)} does not match shape {self._shape}")
        self._bucket_shape = tuple(
            max(1, min(int(b), max(s, 1))) for b, s in zip(bucket_shape, self._shape, strict=True)
        )
        self._buckets: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}
        self._counts = np.zeros(self._num_classes, dtype=np.int64)
        self._cache: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
        self._lock = threading.RLock()

    @classmethod
    def from_labels(
        cls, index_labels: Any, *, num_classes: int, chunk_shape: Sequence[int] | None = None
    ) -> LabelledVoxelIndex:
        """Index the labelled voxels of a class-index array, chunk by chunk.

        Parameters
        ----------
        index_labels : ([Z,] Y, X) array of int
            numpy, dask or zarr array of class indices, ``IGNORE_INDEX`` where
            unlabelled. Read one chunk at a time (for dask / zarr only those
            blocks are loaded).
        num_classes : int
            Number of classes ``K``.
        chunk_shape : tuple of int, optional
            Blocks to read, and the bucket grid; default the array's chunks
            (or 64³ / 256² for numpy).
        """
        if not hasattr(index_labels, "shape"):
            index_labels = np.asarray(index_labels)
        shape = tuple(int(s) for s in index_labels.shape)
        if chunk_shape is None:
            chunk_shape = array_chunks(index_labels)
        index = cls(shape, num_classes=num_classes, bucket_shape=chunk_shape)
        for region in block_regions(shape, index.bucket_shape):
            block = _check_index_values(np.asarray(index_labels[region]), index.num_classes)
            coords, classes = _labelled_entries(block, [piece.start for piece in region])
            if len(classes):
                index._buckets[index._bucket_key(region)] = (coords, classes)
                index._counts += np.bincount(classes, minlength=index.num_classes)
        return index

    # -- properties ---------------------------------------------------------

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial shape of the labels."""
        return self._shape

    @property
    def num_classes(self) -> int:
        """Number of classes ``K``."""
        return self._num_classes

    @property
    def bucket_shape(self) -> tuple[int, ...]:
        """Shape of the buckets the entries are kept in."""
        return self._bucket_shape

    @property
    def counts(self) -> np.ndarray:
        """(K,) int64 ndarray: labelled voxels per class."""
        with self._lock:
            return self._counts.copy()

    @property
    def coords(self) -> np.ndarray:
        """(M, ndim) int64 ndarray (read-only): coordinates of the labelled voxels."""
        return self._snapshot()[0]

    @property
    def classes(self) -> np.ndarray:
        """(M,) int64 ndarray (read-only): class index of each entry of :attr:`coords`."""
        return self._snapshot()[1]

    def snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        """Return consistent ``(coords, classes)`` (read-only; later updates do not change them).

        The order is deterministic: buckets in C order, voxels in C order within a bucket.
        """
        coords, classes, _, _ = self._snapshot()
        return coords, classes

    def __len__(self) -> int:
        with self._lock:
            return int(self._counts.sum())

    def __repr__(self) -> str:
        return f"LabelledVoxelIndex(shape={self._shape}, counts={self.counts.tolist()})"

    # -- updating -----------------------------------------------------------

    def _bucket_key(self, region: Sequence[slice]) -> tuple[int, ...]:
        return tuple(piece.start // b for piece, b in zip(region, self._bucket_shape, strict=True))

    def update(self, region: Sequence[slice], index_block: np.ndarray) -> None:
        """Replace every entry inside ``region`` by the labelled voxels of ``index_block``.

        Parameters
        ----------
        region : tuple of slice
            Region of the labels, inside them, step 1.
        index_block : array of int, shape of the region
            Class indices of the region, ``IGNORE_INDEX`` where unlabelled. Not modified.
        """
        bounds = region_bounds(region, self._shape)
        block = np.asarray(index_block)
        region_shape = tuple(b - a for a, b in bounds)
        if block.shape != region_shape:
            raise ValueError(f"index_block has shape {block.shape} but the region has shape {region_shape}")
        _check_index_values(block, self._num_classes)
        if 0 in region_shape:
            return
        key_ranges = [
            range(a // b, (stop - 1) // b + 1)
            for (a, stop), b in zip(bounds, self._bucket_shape, strict=True)
        ]
        with self._lock:
            for key in itertools.product(*key_ranges):
                bucket_low = [k * b for k, b in zip(key, self._bucket_shape, strict=True)]
                low = np.asarray([max(a, lo) for (a, _), lo in zip(bounds, bucket_low, strict=True)])
                high = np.asarray(
                    [
                        min(stop, lo + b, size)
                        for (_, stop), lo, b, size in zip(
                            bounds, bucket_low, self._bucket_shape, self._shape, strict=True
                        )
                    ]
                )
                local = tuple(
                    slice(int(lo - a), int(hi - a)) for lo, hi, (a, _) in zip(low, high, bounds, strict=True)
                )
                new_coords, new_classes = _labelled_entries(block[local], low)
                self._counts += np.bincount(new_classes, minlength=self._num_classes)
                old = self._buckets.get(key)
                if old is not None:
                    old_coords, old_classes = old
                    replaced = np.all((old_coords >= low) & (old_coords < high), axis=1)
                    self._counts -= np.bincount(old_classes[replaced], minlength=self._num_classes)
                    new_coords = np.concatenate([old_coords[~replaced], new_coords])
                    new_classes = np.concatenate([old_classes[~replaced], new_classes])
                    order = np.lexsort(new_coords.T[::-1])  # C order: the order depends on content only
                    new_coords, new_classes = new_coords[order], new_classes[order]
                if len(new_classes):
                    self._buckets[key] = (new_coords, new_classes)
                else:
                    self._buckets.pop(key, None)
            self._cache = None

    # -- sampling -----------------------------------------------------------

    def _snapshot(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(coords, classes, entries sorted by class, start of each class in that order)."""
        with self._lock:
            if self._cache is None:
                keys = sorted(self._buckets)
                if keys:
                    coords = np.concatenate([self._buckets[k][0] for k in keys])
                    classes = np.concatenate([self._buckets[k][1] for k in keys])
                else:
                    coords = np.zeros((0, len(self._shape)), dtype=np.int64)
                    classes = np.zeros(0, dtype=np.int64)
                by_class = np.argsort(classes, kind="stable")
                starts = np.concatenate([[0], np.cumsum(np.bincount(classes, minlength=self._num_classes))])
                for array in (coords, classes, by_class, starts):
                    array.flags.writeable = False
                self._cache = (coords, classes, by_class, starts)
            return self._cache

    def sample(self, rng: np.random.Generator, n: int, *, class_balanced: bool = True) -> np.ndarray:
        """Draw labelled voxels at random (with replacement).

        Parameters
        ----------
        rng : numpy.random.Generator
            Source of randomness.
        n : int
            Number of voxels.
        class_balanced : bool
            Pick a class uniformly among the classes present, then a voxel of
            it; otherwise every labelled voxel is equally likely.

        Returns
        -------
        (n, ndim) int64 ndarray
            Voxel coordinates.

        Raises
        ------
        AnnotationError
            If no voxel is labelled.
        """
        n = operator.index(n)
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        coords, classes, by_class, starts = self._snapshot()
        if len(classes) == 0:
            raise AnnotationError(_NO_LABELS_MESSAGE)
        if class_balanced:
            counts = np.diff(starts)
            present = np.flatnonzero(counts)
            chosen = present[rng.integers(0, len(present), size=n)]
            picks = by_class[starts[chosen] + rng.integers(0, counts[chosen])]
        else:
            picks = rng.integers(0, len(classes), size=n)
        return coords[picks]


# ---------------------------------------------------------------------------
# sparse target
# ---------------------------------------------------------------------------


@dataclass(eq=False)
class SparseTarget:
    """The training target built from scribbles and points.

    Parameters
    ----------
    class_map : ClassMap
        User values <-> class indices.
    target : ([Z,] Y, X) int64 ndarray
        Class index per voxel, ``IGNORE_INDEX`` where unlabelled. Owned by
        this object: :meth:`update` writes into it.
    index : LabelledVoxelIndex
        The labelled voxels of ``target``.
    """

    class_map: ClassMap
    target: np.ndarray = field(repr=False)
    index: LabelledVoxelIndex = field(repr=False)
    _lock: Any = field(default_factory=threading.RLock, init=False, repr=False)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Spatial shape of the target."""
        return tuple(self.target.shape)

    @property
    def num_classes(self) -> int:
        """Number of classes ``K``."""
        return self.class_map.num_classes

    def update(self, region: Sequence[slice], labels_block: np.ndarray) -> None:
        """Take new label values for a region (e.g. a stroke just painted in the GUI).

        Parameters
        ----------
        region : tuple of slice
            Region inside the image.
        labels_block : array of int, shape of the region
            User label values (0 = unlabelled). Not modified.

        Raises
        ------
        AnnotationError
            If a value is not one of the class map's values (a new class
            needs a new target).
        """
        bounds = region_bounds(region, self.spatial_shape)
        block = np.asarray(labels_block)
        region_shape = tuple(b - a for a, b in bounds)
        if block.shape != region_shape:
            raise ValueError(f"labels_block has shape {block.shape} but the region has shape {region_shape}")
        index_block = self.class_map.to_index(block)
        slices = tuple(slice(a, b) for a, b in bounds)
        with self._lock:
            self.target[slices] = index_block
            self.index.update(slices, index_block)

    def read(self, region: Sequence[slice]) -> np.ndarray:
        """Read the target over a region that may extend beyond the image.

        Parameters
        ----------
        region : tuple of slice
            Step-1 slices; ``start`` may be negative and ``stop`` beyond the image.

        Returns
        -------
        int64 ndarray, shape of the region
            A copy; ``IGNORE_INDEX`` outside the image.
        """
        bounds = region_bounds(region, self.spatial_shape, allow_outside=True)
        out = np.full(tuple(b - a for a, b in bounds), IGNORE_INDEX, dtype=np.int64)
        inner = tuple((max(a, 0), min(b, s)) for (a, b), s in zip(bounds, self.spatial_shape, strict=True))
        if all(lo < hi for lo, hi in inner):
            source = tuple(slice(lo, hi) for lo, hi in inner)
            destination = tuple(slice(lo - a, hi - a) for (lo, hi), (a, _) in zip(inner, bounds, strict=True))
            with self._lock:
                out[destination] = self.target[source]
        return out


def _labelled_text(values: Sequence[int]) -> str:
    if len(values) == 1:
        return f"only class {values[0]} is labelled"
    listed = ", ".join(str(v) for v in values[:-1]) + f" and {values[-1]}"
    return f"only classes {listed} are labelled"


def labels_to_target(
    labels: Any,
    *,
    points: np.ndarray | None = None,
    point_classes: np.ndarray | None = None,
    spacing: Sequence[float] | None = None,
    point_radius: float = 2.0,
    class_values: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    background: int | None = None,
    min_classes: int = 2,
    spatial_shape: Sequence[int] | None = None,
) -> SparseTarget:
    """Turn scribbles (and points) into a sparse training target.

    Parameters
    ----------
    labels : ([Z,] Y, X) array of int
        Scribbles, ``0 = unlabelled``, ``k >= 1 = class k`` (numpy, dask or
        zarr; see :func:`check_labels`). Not modified.
    points : (N, ndim) array of float, optional
        Point annotations in voxel coordinates; each becomes a ball of
        ``point_radius`` (see :func:`points_to_labels`). A ball never
        overwrites a scribbled voxel.
    point_classes : (N,) array of int, optional
        Class value of each point; required with ``points``.
    spacing : sequence of float, optional
        Physical voxel spacing (shapes the balls).
    point_radius : float
        Ball radius in units of the finest spacing.
    class_values : sequence of int, optional
        All class values; must include every value present. Default: the
        values present.
    class_names : sequence of str, optional
        One name per class value (of ``class_values`` or of the values present, sorted).
    background : int, optional
        Value of the background class.
    min_classes : int
        Fewest classes that must be labelled.
    spatial_shape : tuple of int, optional
        The image's spatial shape, checked against ``labels``.

    Returns
    -------
    SparseTarget

    Raises
    ------
    InputError
        If ``labels`` does not have ``spatial_shape``.
    AnnotationError
        If nothing is labelled, fewer than ``min_classes`` classes are
        labelled, a value is missing from ``class_values``, or the labels or
        points are invalid.
    """
    if not hasattr(labels, "shape"):
        labels = np.asarray(labels)
    shape = tuple(int(s) for s in (labels.shape if spatial_shape is None else spatial_shape))
    min_classes = operator.index(min_classes)
    if min_classes < 1:
        raise ValueError(f"min_classes must be >= 1, got {min_classes}")
    merged = check_labels(labels, spatial_shape=shape)
    if points is not None:
        if point_classes is None:
            raise AnnotationError("points need a class each: give point_classes (napari feature 'class')")
        balls = points_to_labels(points, point_classes, shape=shape, spacing=spacing, radius=point_radius)
        merged = np.where(merged != 0, merged, balls)
    elif point_classes is not None and np.size(point_classes):
        raise AnnotationError("point_classes were given without points")
    present = np.unique(merged)
    present = [int(v) for v in present if v != 0]
    if not present:
        raise AnnotationError(_NO_LABELS_MESSAGE)
    if class_values is not None:
        class_map = ClassMap.from_values(class_values, names=class_names, background=background)
        missing = sorted(set(present) - set(class_map.values))
        if missing:
            raise AnnotationError(
                f"labels contain class value(s) {_format_values(missing)} that are not among the classes "
                f"{class_map.values}; add them to the classes or erase those strokes"
            )
    else:
        class_map = ClassMap.from_values(present, names=class_names, background=background)
    if len(present) < min_classes:
        if len(present) == 1 and min_classes == 2:
            advice = "paint at least one stroke of a second class (e.g. background)"
        else:
            advice = f"paint strokes of at least {min_classes} classes (e.g. one for background)"
        raise AnnotationError(f"{_labelled_text(present)}: {advice} so the network can tell them apart")
    target = class_map.to_index(merged)
    index = LabelledVoxelIndex.from_labels(target, num_classes=class_map.num_classes)
    return SparseTarget(class_map=class_map, target=target, index=index)
