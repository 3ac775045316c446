"""The image source: a ``(C, [Z], Y, X)`` view over numpy, dask or zarr arrays.

:class:`ImageSource` wraps the user's array without loading it. Regions are
read on demand (:meth:`ImageSource.read_raw`, :meth:`ImageSource.read`), and
the intensity normalisation (:class:`Normalisation`) is estimated from a
bounded random sample of blocks, never from the whole image.

The block helpers (:func:`array_chunks`, :func:`grow_block_shape`,
:func:`block_regions`, :func:`region_bounds`) are shared with the other core
modules that walk large arrays chunk by chunk.
"""

from __future__ import annotations

import itertools
import math
import operator
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from scribbleseg.errors import ConfigError, InputError

__all__ = [
    "MAX_CHANNELS",
    "ImageSource",
    "Normalisation",
    "array_chunks",
    "block_regions",
    "check_spacing",
    "clip_region",
    "grow_block_shape",
    "region_bounds",
]

#: More channels than this almost always means the wrong axis was taken as channels.
MAX_CHANNELS = 64

#: A normalisation range narrower than this is treated as no range (scale 1).
_MIN_RANGE = 1e-6

_NON_FINITE_MESSAGE = "image contains NaN or infinite values; they are treated as 0 after normalisation"

Region = tuple[slice, ...]


# ---------------------------------------------------------------------------
# block helpers
# ---------------------------------------------------------------------------


def array_chunks(array: Any) -> tuple[int, ...] | None:
    """Return the chunk shape of a chunked array (dask, zarr, h5py), or None.

    Parameters
    ----------
    array : array-like
        Anything with a ``shape``; dask's ``chunksize`` and zarr's / h5py's
        ``chunks`` are recognised. Irregular (dask) chunks give the largest
        chunk along each axis.

    Returns
    -------
    tuple of int or None
        One entry per axis of ``array``; None when the array is not chunked
        (numpy) or the chunking is unknown.
    """
    ndim = len(array.shape)
    for attribute in ("chunksize", "chunks"):
        try:
            chunks = getattr(array, attribute, None)
            if chunks is None:
                continue
            chunks = tuple(chunks)
        except Exception:  # e.g. zarr raising for chunk grids it cannot describe
            continue
        if len(chunks) != ndim:
            continue
        if all(isinstance(c, (int, np.integer)) for c in chunks):
            return tuple(max(1, int(c)) for c in chunks)
        if all(isinstance(c, tuple) for c in chunks):
            return tuple(max(1, *(int(x) for x in c)) if c else 1 for c in chunks)
    return None


def grow_block_shape(
    shape: Sequence[int], chunks: Sequence[int] | None, *, target_voxels: int
) -> tuple[int, ...]:
    """Choose a block shape of about ``target_voxels`` voxels for walking an array.

    Chunked arrays get whole chunks, doubled along the axes in turn until the
    block holds at least ``target_voxels`` voxels (so every read decodes whole
    chunks). Unchunked (numpy) arrays get C-contiguous slabs: full trailing
    axes, as many leading entries as fit in ``target_voxels``.

    Parameters
    ----------
    shape : sequence of int
        Shape of the array.
    chunks : sequence of int or None
        Its chunk shape, see :func:`array_chunks`.
    target_voxels : int
        Wanted number of voxels per block.

    Returns
    -------
    tuple of int
        Block shape, each entry in ``[1, shape[i]]`` (or 1 for empty axes).
    """
    shape = tuple(int(s) for s in shape)
    target_voxels = max(1, int(target_voxels))
    if chunks is None:
        block = [1] * len(shape)
        for axis in reversed(range(len(shape))):
            fit = max(1, target_voxels // math.prod(block))
            block[axis] = max(1, min(shape[axis], fit))
            if block[axis] < shape[axis]:
                break
        return tuple(block)
    block = [max(1, min(int(c), s)) for c, s in zip(chunks, shape, strict=True)]
    while math.prod(block) < target_voxels:
        grown = False
        for axis, size in enumerate(shape):
            if block[axis] < size:
                block[axis] = min(2 * block[axis], size)
                grown = True
                if math.prod(block) >= target_voxels:
                    break
        if not grown:
            break
    return tuple(block)


def block_regions(shape: Sequence[int], block_shape: Sequence[int]) -> Iterator[Region]:
    """Yield the regions of a regular block grid covering ``shape``, in C order.

    Parameters
    ----------
    shape : sequence of int
        Shape of the array.
    block_shape : sequence of int
        Block shape; blocks at the far edges are cut to the array.

    Yields
    ------
    tuple of slice
        One slice per axis, with integer ``start`` and ``stop``.
    """
    shape = tuple(int(s) for s in shape)
    block_shape = tuple(max(1, int(b)) for b in block_shape)
    if any(s == 0 for s in shape):
        return
    starts = [range(0, s, b) for s, b in zip(shape, block_shape, strict=True)]
    for corner in itertools.product(*starts):
        yield tuple(slice(c, min(c + b, s)) for c, b, s in zip(corner, block_shape, shape, strict=True))


def clip_region(region: Sequence[slice], shape: Sequence[int]) -> Region:
    """``region`` cut to the array (``None`` start / stop mean its edges); step must be None or 1."""
    return tuple(
        slice(max(0, s.start or 0), min(n, s.stop if s.stop is not None else n))
        for s, n in zip(region, shape, strict=True)
    )


def region_bounds(
    region: Sequence[slice] | None, shape: Sequence[int], *, allow_outside: bool = False
) -> tuple[tuple[int, int], ...]:
    """Resolve a region of slices to ``(start, stop)`` pairs.

    Unlike Python indexing, a negative ``start`` means *before the array*
    (allowed only with ``allow_outside``), not counting from the end.

    Parameters
    ----------
    region : sequence of slice or None
        One slice per axis of ``shape``; ``None`` start / stop mean the array's
        edges; the step must be None or 1. ``None`` means the whole array.
    shape : sequence of int
        Shape the region refers to.
    allow_outside : bool
        Accept regions that extend beyond the array.

    Returns
    -------
    tuple of (int, int)

    Raises
    ------
    ValueError
        If the region is malformed or (without ``allow_outside``) out of bounds.
    """
    shape = tuple(int(s) for s in shape)
    if region is None:
        return tuple((0, s) for s in shape)
    region = tuple(region)
    if len(region) != len(shape):
        raise ValueError(f"region has {len(region)} slices but the array has {len(shape)} dimensions")
    bounds = []
    for axis, (piece, size) in enumerate(zip(region, shape, strict=True)):
        if not isinstance(piece, slice):
            raise ValueError(f"region entries must be slices, got {piece!r} on axis {axis}")
        if piece.step not in (None, 1):
            raise ValueError(f"region slices must have step 1, got {piece!r} on axis {axis}")
        start = 0 if piece.start is None else operator.index(piece.start)
        stop = size if piece.stop is None else operator.index(piece.stop)
        if stop < start:
            raise ValueError(f"region slice {piece!r} on axis {axis} has stop < start")
        if not allow_outside and (start < 0 or stop > size):
            raise ValueError(f"region slice {piece!r} on axis {axis} lies outside [0, {size})")
        bounds.append((start, stop))
    return tuple(bounds)


def _reflect_indices(start: int, stop: int, size: int) -> np.ndarray:
    """Map ``range(start, stop)`` into ``range(size)`` as np.pad's 'reflect' mode does.

    The reflection does not repeat the edge voxel and repeats periodically
    (period ``2 * (size - 1)``) when the padding is wider than the image, which
    is what ``np.pad(..., mode="reflect")`` produces. An axis of size 1 is
    repeated (``'edge'``).
    """
    indices = np.arange(start, stop, dtype=np.int64)
    if size == 1:
        return np.zeros_like(indices)
    period = 2 * (size - 1)
    indices = np.mod(indices, period)
    return np.where(indices >= size, period - indices, indices)


# ---------------------------------------------------------------------------
# normalisation
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Normalisation:
    """Per-channel linear intensity normalisation ``(x - low) / (high - low)``.

    Parameters
    ----------
    low, high : tuple of float
        One finite value per channel, ``high >= low``. A range narrower than
        ``1e-6`` is treated as 1 (so a constant channel becomes 0).

    Notes
    -----
    Values outside ``[low, high]`` are not clipped. NaN and ±inf (and finite
    values that overflow float32) become 0.0 after normalisation.
    """

    low: tuple[float, ...]
    high: tuple[float, ...]

    def __post_init__(self) -> None:
        try:
            low = tuple(float(v) for v in self.low)
            high = tuple(float(v) for v in self.high)
        except (TypeError, ValueError):
            raise ConfigError(
                f"normalisation low/high must be sequences of numbers, got {self.low!r} and {self.high!r}"
            ) from None
        if not low or len(low) != len(high):
            raise ConfigError(
                f"normalisation needs one low and one high value per channel, got {len(low)} and {len(high)}"
            )
        if not all(math.isfinite(v) for v in low + high):
            raise ConfigError(f"normalisation values must be finite, got low={low} high={high}")
        if any(h < lo for lo, h in zip(low, high, strict=True)):
            raise ConfigError(
                f"normalisation high must be >= low in every channel, got low={low} high={high}"
            )
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    @property
    def n_channels(self) -> int:
        """Number of channels."""
        return len(self.low)

    def apply(self, block: np.ndarray) -> np.ndarray:
        """Normalise a block of the image.

        Parameters
        ----------
        block : (C, ...) array
            Raw intensities of any numeric dtype (or bool). Not modified.

        Returns
        -------
        (C, ...) float32 ndarray
            ``(block - low) / (high - low)`` per channel; NaN / ±inf become 0.0.
        """
        return self._apply(block)[0]

    def _apply(self, block: np.ndarray) -> tuple[np.ndarray, bool]:
        """:meth:`apply`, also telling whether non-finite values were replaced."""
        array = np.asarray(block)
        if array.dtype.kind not in "biuf":
            raise InputError(f"cannot normalise an array of dtype {array.dtype}; expected numbers")
        if array.ndim < 1 or array.shape[0] != self.n_channels:
            raise InputError(
                f"block of shape {array.shape} does not have the {self.n_channels} channel(s) "
                "of the normalisation on its first axis"
            )
        # float32 cannot hold 32/64-bit integers or float64 exactly: subtract in float64 first
        wide = (array.dtype.kind in "iu" and array.dtype.itemsize >= 4) or array.dtype.itemsize >= 8
        work_dtype = np.float64 if wide else np.float32
        shape = (self.n_channels,) + (1,) * (array.ndim - 1)
        low = np.asarray(self.low, dtype=work_dtype).reshape(shape)
        scale = np.asarray(self.high, dtype=np.float64) - np.asarray(self.low, dtype=np.float64)
        scale = np.where(scale >= _MIN_RANGE, scale, 1.0).astype(work_dtype).reshape(shape)
        with np.errstate(all="ignore"):
            out = array.astype(work_dtype)  # always a new array: the input stays untouched
            out -= low
            out /= scale
            out = out.astype(np.float32, copy=False)
        non_finite = False
        if array.dtype.kind == "f" or wide:
            bad = ~np.isfinite(out)
            if bad.any():
                out[bad] = 0.0
                non_finite = True
        return out, non_finite

    def to_dict(self) -> dict[str, list[float]]:
        """Return a JSON-safe dict ``{"low": [...], "high": [...]}``."""
        return {"low": list(self.low), "high": list(self.high)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Normalisation:
        """Build from :meth:`to_dict`'s output; other keys raise :class:`ConfigError`."""
        if not isinstance(data, Mapping) or set(data) != {"low", "high"}:
            raise ConfigError(f"normalisation must be a mapping with keys 'low' and 'high', got {data!r}")
        return cls(low=tuple(data["low"]), high=tuple(data["high"]))

    @classmethod
    def from_source(
        cls,
        source: ImageSource,
        *,
        percentiles: tuple[float, float] = (1.0, 99.8),
        max_voxels: int = 2_000_000,
        seed: int = 0,
    ) -> Normalisation:
        """Estimate per-channel percentiles from a bounded sample of the image.

        Images with at most ``max_voxels`` spatial voxels are used whole. Larger
        ones are sampled as random blocks (aligned to the backing chunks when
        known) holding about ``max_voxels`` voxels in all, so the whole image
        is never loaded. NaN and ±inf are ignored; a channel without finite
        values gets ``low = 0, high = 1``. When the percentile range is empty
        (e.g. a mostly black image) the sample's min and max are used instead.

        Parameters
        ----------
        source : ImageSource
            The image.
        percentiles : (float, float)
            Lower and upper percentile, ``0 <= lower < upper <= 100``.
        max_voxels : int
            Spatial voxels to sample (per channel).
        seed : int
            Seed of the block choice.

        Returns
        -------
        Normalisation
        """
        return _sample_statistics(source, percentiles=percentiles, max_voxels=max_voxels, seed=seed)[0]


def _sample_block_shape(
    spatial_shape: tuple[int, ...], chunks: tuple[int, ...] | None, max_voxels: int
) -> tuple[int, ...]:
    """Block shape for sampling: chunk-aligned, between max_voxels/64 and max_voxels/4 voxels."""
    largest = max(1, max_voxels // 4)
    smallest = max(1, max_voxels // 64)
    if chunks is None:
        side = max(1, round(smallest ** (1 / len(spatial_shape))))
        chunks = tuple(min(side, s) for s in spatial_shape)
    block = grow_block_shape(spatial_shape, chunks, target_voxels=smallest)
    block_list = list(block)
    while math.prod(block_list) > largest:  # e.g. one chunk holding the whole image
        axis = int(np.argmax(block_list))
        block_list[axis] = max(1, block_list[axis] // 2)
    return tuple(block_list)


def _sample_blocks(source: ImageSource, max_voxels: int, seed: int) -> list[np.ndarray]:
    """Read about ``max_voxels`` spatial voxels of ``source`` as raw ``(C, ...)`` blocks."""
    spatial = source.spatial_shape
    if math.prod(spatial) <= max_voxels:
        return [source.read_raw(None)]
    chunks = array_chunks(source.array)
    if chunks is not None and source.channel_axis is not None:
        chunks = chunks[: source.channel_axis] + chunks[source.channel_axis + 1 :]
    block = _sample_block_shape(spatial, chunks, max_voxels)
    grid = tuple(math.ceil(s / b) for s, b in zip(spatial, block, strict=True))
    n_cells = math.prod(grid)
    n_blocks = min(n_cells, math.ceil(max_voxels / math.prod(block)))
    rng = np.random.default_rng(seed)
    cells = np.sort(rng.choice(n_cells, size=n_blocks, replace=False))
    blocks = []
    for cell in cells:
        corner = np.unravel_index(int(cell), grid)
        region = tuple(
            slice(int(c) * b, min((int(c) + 1) * b, s))
            for c, b, s in zip(corner, block, spatial, strict=True)
        )
        blocks.append(source.read_raw(region))
    return blocks


def _sample_statistics(
    source: ImageSource,
    *,
    percentiles: tuple[float, float] = (1.0, 99.8),
    max_voxels: int = 2_000_000,
    seed: int = 0,
    with_percentiles: bool = True,
) -> tuple[Normalisation | None, bool]:
    """Percentile normalisation and whether the sample held non-finite values."""
    lower, upper = (float(p) for p in percentiles)
    if not 0.0 <= lower < upper <= 100.0:
        raise ConfigError(f"percentiles must satisfy 0 <= lower < upper <= 100, got {percentiles}")
    max_voxels = int(max_voxels)
    if max_voxels < 1:
        raise ConfigError(f"max_voxels must be >= 1, got {max_voxels}")
    blocks = _sample_blocks(source, max_voxels, seed)
    is_float = source.dtype.kind == "f"
    non_finite = False
    lows: list[float] = []
    highs: list[float] = []
    for channel in range(source.n_channels):
        values = np.concatenate([b[channel].ravel() for b in blocks])
        if values.dtype.kind == "b":
            values = values.astype(np.uint8)
        if is_float:
            finite = np.isfinite(values)
            if not finite.all():
                non_finite = True
                values = values[finite]
        if not with_percentiles:
            continue
        if values.size == 0:
            lows.append(0.0)
            highs.append(1.0)
            continue
        low, high = (float(v) for v in np.percentile(values, [lower, upper]))
        if not high - low >= _MIN_RANGE:
            low, high = float(values.min()), float(values.max())
        lows.append(low)
        highs.append(max(high, low))
    normalisation = Normalisation(tuple(lows), tuple(highs)) if with_percentiles else None
    return normalisation, non_finite


# ---------------------------------------------------------------------------
# the image source
# ---------------------------------------------------------------------------


class ImageSource:
    """A lazily read image with a ``(C, [Z], Y, X)`` view.

    Parameters
    ----------
    array : array-like
        numpy, dask or zarr array, or anything with ``shape``, ``dtype`` and
        ``__getitem__`` (other inputs go through ``np.asarray``). Integer,
        floating point or bool values. It is never modified nor loaded whole
        (except by ``read()`` without a region).
    channel_axis : int, optional
        Axis of ``array`` holding channels (negative counts from the end).
        Without it the image has one channel.
    spacing : sequence of float, optional
        Physical voxel spacing ``([Z,] Y, X)``; default 1.0 per axis.
    normalisation : Normalisation, optional
        Intensity normalisation (e.g. from a model file). By default it is
        estimated on first use with :meth:`Normalisation.from_source`.

    Raises
    ------
    InputError
        If the dtype is not numeric, the channel axis is out of range or has
        more than 64 entries, there are not 2 or 3 spatial dimensions, the
        image is empty, or the spacing / normalisation do not fit.

    Notes
    -----
    NaN and ±inf become 0.0 after normalisation; the first time they are seen
    (in the normalisation sample or in a read) one ``RuntimeWarning`` is issued
    and :attr:`has_non_finite` becomes True. Reads beyond the image are filled
    by reflection (see :meth:`read`).
    """

    def __init__(
        self,
        array: Any,
        *,
        channel_axis: int | None = None,
        spacing: Sequence[float] | None = None,
        normalisation: Normalisation | None = None,
    ) -> None:
        if not all(hasattr(array, name) for name in ("shape", "dtype", "__getitem__")):
            array = np.asarray(array)
        full_shape = tuple(int(s) for s in array.shape)
        try:
            dtype = np.dtype(array.dtype)
        except TypeError:
            raise InputError(f"image has an unsupported dtype {array.dtype!r}; expected numbers") from None
        if dtype.kind not in "biuf":
            raise InputError(
                f"image dtype {dtype} is not supported: expected integer, floating point or bool values"
            )
        ndim = len(full_shape)
        if channel_axis is None:
            axis = None
            n_channels = 1
            spatial = full_shape
        else:
            try:
                axis = operator.index(channel_axis)
            except TypeError:
                raise InputError(f"channel_axis must be an integer, got {channel_axis!r}") from None
            if not -ndim <= axis < ndim:
                raise InputError(f"channel_axis {axis} is out of range for an image of shape {full_shape}")
            axis %= ndim
            n_channels = full_shape[axis]
            spatial = full_shape[:axis] + full_shape[axis + 1 :]
        if len(spatial) not in (2, 3):
            where = "" if axis is None else f" after removing channel axis {axis}"
            hint = " (give channel_axis if one axis holds channels)" if axis is None else ""
            raise InputError(
                f"image of shape {full_shape} has {len(spatial)} spatial dimensions{where}; "
                f"expected 2 (Y, X) or 3 (Z, Y, X){hint}"
            )
        if n_channels > MAX_CHANNELS:
            raise InputError(
                f"image of shape {full_shape} would have {n_channels} channels on axis {axis}; at most "
                f"{MAX_CHANNELS} are supported - is channel_axis the right axis?"
            )
        if n_channels == 0 or 0 in spatial:
            raise InputError(f"image of shape {full_shape} is empty")
        self._array = array
        self._dtype = dtype
        self._channel_axis = axis
        self._n_channels = n_channels
        self._spatial_shape = spatial
        self._spacing = check_spacing(spacing, len(spatial))
        if normalisation is not None:
            if not isinstance(normalisation, Normalisation):
                raise InputError(f"normalisation must be a Normalisation, got {type(normalisation).__name__}")
            if normalisation.n_channels != n_channels:
                raise InputError(
                    f"normalisation has {normalisation.n_channels} channel(s) but the image has {n_channels}"
                )
        self._normalisation = normalisation
        self._sampled = False
        self._non_finite = False
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return (
            f"ImageSource(shape={self.shape}, dtype={self.dtype}, spacing={self.spacing}, "
            f"backing={type(self._array).__name__})"
        )

    # -- geometry -----------------------------------------------------------

    @property
    def array(self) -> Any:
        """The backing array, as given."""
        return self._array

    @property
    def shape(self) -> tuple[int, ...]:
        """``(C, [Z,] Y, X)`` shape of the view."""
        return (self._n_channels, *self._spatial_shape)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """``([Z,] Y, X)`` shape."""
        return self._spatial_shape

    @property
    def spatial_dims(self) -> int:
        """2 or 3."""
        return len(self._spatial_shape)

    @property
    def n_channels(self) -> int:
        """Number of channels ``C``."""
        return self._n_channels

    @property
    def channel_axis(self) -> int | None:
        """Channel axis of the backing array (non-negative), or None."""
        return self._channel_axis

    @property
    def spacing(self) -> tuple[float, ...]:
        """Physical voxel spacing ``([Z,] Y, X)``."""
        return self._spacing

    @property
    def dtype(self) -> np.dtype:
        """The dtype of the backing array."""
        return self._dtype

    # -- normalisation ------------------------------------------------------

    @property
    def normalisation(self) -> Normalisation:
        """The intensity normalisation; estimated from a sample on first use, then cached."""
        if self._normalisation is None:
            with self._lock:
                if self._normalisation is None:
                    self._scan_sample(with_percentiles=True)
        assert self._normalisation is not None
        return self._normalisation

    @property
    def has_non_finite(self) -> bool:
        """Whether NaN or ±inf were seen, in the normalisation sample or in any read so far."""
        if self._dtype.kind != "f":
            return False
        if not self._sampled:
            with self._lock:
                if not self._sampled:
                    self._scan_sample(with_percentiles=self._normalisation is None)
        return self._non_finite

    def _scan_sample(self, *, with_percentiles: bool) -> None:
        normalisation, non_finite = _sample_statistics(self, with_percentiles=with_percentiles)
        if self._normalisation is None:
            self._normalisation = normalisation
        self._sampled = True
        if non_finite:
            self._note_non_finite()

    def _note_non_finite(self) -> None:
        with self._lock:
            if self._non_finite:
                return
            self._non_finite = True
        warnings.warn(_NON_FINITE_MESSAGE, RuntimeWarning, stacklevel=3)

    # -- reading ------------------------------------------------------------

    def read_raw(self, region: Sequence[slice] | None = None) -> np.ndarray:
        """Read a region of the image as stored, without normalisation.

        Only that region is read from the backing array.

        Parameters
        ----------
        region : tuple of slice, optional
            One slice per spatial axis, inside the image; None = the whole image.

        Returns
        -------
        (C, *region) ndarray
            Original dtype; a new array (never a view of the backing array).
        """
        bounds = region_bounds(region, self._spatial_shape)
        key: list[slice] = [slice(a, b) for a, b in bounds]
        if self._channel_axis is not None:
            key.insert(self._channel_axis, slice(None))
        data = np.asarray(self._array[tuple(key)])
        if self._channel_axis is None:
            data = data[np.newaxis]
        else:
            data = np.moveaxis(data, self._channel_axis, 0)
        if isinstance(self._array, np.ndarray) and np.may_share_memory(data, self._array):
            return np.array(data, order="C", copy=True)
        return np.ascontiguousarray(data)

    def read(
        self, region: Sequence[slice] | None = None, *, pad_to: Sequence[int] | None = None
    ) -> np.ndarray:
        """Read a normalised region; parts outside the image are filled by reflection.

        Parameters
        ----------
        region : tuple of slice, optional
            One slice per spatial axis. ``start`` may be negative and ``stop``
            may exceed the image: those voxels are filled as by
            ``np.pad(..., mode="reflect")`` (mirror without repeating the edge,
            repeated periodically when the padding is wider than the image; an
            axis of size 1 is repeated). None = the whole image, which loads
            it: only for small images.
        pad_to : sequence of int, optional
            Minimum spatial output shape; shorter axes are extended past their
            ``stop`` (crop the result with ``[..., :n]`` to undo).

        Returns
        -------
        (C, *region) float32 ndarray
            Normalised with :attr:`normalisation`; NaN / ±inf become 0.0.
        """
        bounds = list(region_bounds(region, self._spatial_shape, allow_outside=True))
        if pad_to is not None:
            pad_to = tuple(int(p) for p in pad_to)
            if len(pad_to) != self.spatial_dims:
                raise ValueError(
                    f"pad_to has {len(pad_to)} entries but the image has {self.spatial_dims} axes"
                )
            bounds = [(a, max(b, a + p)) for (a, b), p in zip(bounds, pad_to, strict=True)]
        sizes = [b - a for a, b in bounds]
        normalisation = self.normalisation
        if 0 in sizes:
            return np.zeros((self._n_channels, *sizes), dtype=np.float32)
        inside = all(0 <= a and b <= s for (a, b), s in zip(bounds, self._spatial_shape, strict=True))
        if inside:
            raw = self.read_raw(tuple(slice(a, b) for a, b in bounds))
        else:
            indices = [
                _reflect_indices(a, b, s) for (a, b), s in zip(bounds, self._spatial_shape, strict=True)
            ]
            box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in indices)
            raw_box = self.read_raw(box)
            relative = [i - piece.start for i, piece in zip(indices, box, strict=True)]
            raw = raw_box[(slice(None), *np.ix_(*relative))]
        out, non_finite = normalisation._apply(raw)
        if non_finite:
            self._note_non_finite()
        return out


def check_spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    """Validate a physical voxel spacing.

    Parameters
    ----------
    spacing : sequence of float or None
        ``([Z,] Y, X)`` spacing; None means 1.0 per axis.
    ndim : int
        Number of spatial axes.

    Returns
    -------
    tuple of float

    Raises
    ------
    InputError
        If an entry is not a finite number > 0 or the length is not ``ndim``.
    """
    if spacing is None:
        return (1.0,) * ndim
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise InputError(f"spacing must be a sequence of {ndim} numbers, got {spacing!r}") from None
    if len(values) != ndim:
        raise InputError(f"spacing {values} has {len(values)} entries but the image has {ndim} spatial axes")
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise InputError(f"spacing entries must be finite numbers > 0, got {values}")
    return values
