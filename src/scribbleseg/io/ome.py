"""OME-Zarr (NGFF v0.5, zarr v3) writing with a multiscale pyramid, block by block.

Level 0 is the array itself; each next level halves Y and X (and Z while its
spacing is not coarser than twice the finest spatial spacing, so isotropic
volumes shrink in 3D and anisotropic stacks keep their Z until X/Y catch up).
Labels are downsampled by the *mode* of each 2×2(×2) cell (ties go to the
first voxel, i.e. nearest neighbour), so no new label value is ever invented;
images by the mean. Every level is computed from the level written before it,
chunk by chunk, so the data are never loaded whole.

The metadata (``multiscales`` with axes, units and per-level scale) are
written by the ``ome-zarr`` library; label images also get ``image-label``
metadata, so ``napari-ome-zarr`` opens them as a Labels layer. The store is
built under a temporary name and renamed at the end.
"""

from __future__ import annotations

import os
import pathlib
import warnings
from typing import Any

import dask.array as da
import numpy as np
import zarr

from scribbleseg.errors import InputError
from scribbleseg.io.arrays import (
    as_array,
    atomic_output,
    check_array,
    check_spacing,
    resolve_axes,
)
from scribbleseg.io.zarr import default_chunks

__all__ = ["downsample_factors", "mode_downsample", "write_ome_zarr"]

#: Levels are added until Y and X are at most this size.
MIN_LEVEL_SIZE = 256

#: NGFF axis types of our axis letters.
_AXIS_TYPES = {"T": "time", "C": "channel", "Z": "space", "Y": "space", "X": "space"}


def downsample_factors(shape: tuple[int, ...], axes: str, spacing: tuple[float, ...]) -> tuple[int, ...]:
    """Factor (1 or 2) per axis for the next pyramid level.

    Parameters
    ----------
    shape : tuple of int
        Shape of the current level.
    axes : str
        Axis letters of ``shape``.
    spacing : tuple of float
        Current spacing of the spatial axes (``Z``, ``Y``, ``X`` in ``axes``).

    Returns
    -------
    tuple of int
        2 for Y and X, and for Z while its spacing is below twice the finest
        spatial spacing; 1 for other axes and axes of size 1.
    """
    spatial = dict(zip((a for a in axes if a in "ZYX"), spacing, strict=True))
    finest = min(spatial.values())
    factors = []
    for letter, size in zip(axes, shape, strict=True):
        factor = 1
        if size > 1 and (letter in "YX" or (letter == "Z" and spatial["Z"] < 2 * finest)):
            factor = 2
        factors.append(factor)
    return tuple(factors)


def _mode_cells(cells: np.ndarray, axis: tuple[int, ...] | None = None) -> np.ndarray:
    """Mode over ``axis`` (the cell axes of ``da.coarsen``); ties go to the first value."""
    if axis is None:  # dask probing the output type
        return cells
    moved = np.moveaxis(cells, axis, tuple(range(cells.ndim - len(axis), cells.ndim)))
    values = moved.reshape(*moved.shape[: cells.ndim - len(axis)], -1)
    size = values.shape[-1]
    best_value = values[..., 0].copy()
    best_count = np.zeros(best_value.shape, dtype=np.uint8)
    for i in range(size):
        count = np.zeros(best_value.shape, dtype=np.uint8)
        for j in range(size):
            count += values[..., i] == values[..., j]
        better = count > best_count
        best_value[better] = values[..., i][better]
        best_count = np.maximum(best_count, count)
    return best_value


def _mean_cells(cells: np.ndarray, axis: tuple[int, ...] | None = None) -> np.ndarray:
    if axis is None:  # dask probing the output type
        return cells
    return cells.mean(axis=axis, dtype=np.float64).astype(cells.dtype)


def mode_downsample(data: da.Array, factors: tuple[int, ...], *, labels: bool = True) -> da.Array:
    """Downsample a dask array by ``factors`` (1 or 2 per axis).

    Odd sizes are padded by repeating the last entry, so a level is
    ``ceil(size / 2)`` long.

    Parameters
    ----------
    data : dask.array.Array
    factors : tuple of int
    labels : bool
        Mode of each cell (labels) or mean (images).

    Returns
    -------
    dask.array.Array
    """
    pad = [(0, size % f) for size, f in zip(data.shape, factors, strict=True)]
    if any(after for _, after in pad):
        data = da.pad(data, pad, mode="edge")
    # coarsen needs chunks divisible by the factors: make every chunk but the last even.
    chunks = []
    for axis_chunks, f in zip(data.chunks, factors, strict=True):
        size = max(axis_chunks)
        chunks.append(size + (size % f))
    data = data.rechunk(tuple(chunks))
    reduction = _mode_cells if labels else _mean_cells
    return da.coarsen(reduction, data, {i: f for i, f in enumerate(factors) if f > 1})


def write_ome_zarr(
    path: str | os.PathLike[str],
    array: Any,
    *,
    spacing: tuple[float, ...] | None = None,
    axes: str | None = None,
    labels: bool = True,
    chunks: tuple[int, ...] | None = None,
    name: str | None = None,
    max_levels: int = 8,
) -> pathlib.Path:
    """Write ``array`` as an OME-Zarr image with a multiscale pyramid.

    Parameters
    ----------
    path : path-like
        The ``.zarr`` folder to create (an existing zarr store there is
        replaced, anything else is refused).
    array : array-like or dask.array.Array
        Level 0; a dask (or zarr) array is written chunk by chunk.
    spacing : tuple of float, optional
        Physical spacing (micrometres) of the spatial axes; default 1.
    axes : str, optional
        Axis letters (see :func:`scribbleseg.io.arrays.default_axes`).
    labels : bool
        Labels (mode downsampling, ``image-label`` metadata) or an image (mean).
    chunks : tuple of int, optional
        Chunk shape of level 0 (default :func:`scribbleseg.io.zarr.default_chunks`);
        lower levels keep it, cut to their shape.
    name : str, optional
        Name stored in the metadata; default the file name.
    max_levels : int
        At most this many levels.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    InputError
        If the array is empty or not numeric, an argument does not fit it, the
        folder is missing, or writing fails (disk full …); nothing is left at
        ``path`` then.
    """
    try:
        with warnings.catch_warnings():  # ome-zarr's own deprecation notices at import
            warnings.simplefilter("ignore", DeprecationWarning)
            from ome_zarr.format import FormatV05
            from ome_zarr.writer import add_metadata, write_multiscales_metadata
    except ImportError as exc:
        raise InputError(
            f"cannot write {path}: OME-Zarr needs the 'ome-zarr' package "
            "(pip install 'scribbleseg[distributed]')"
        ) from exc

    path = pathlib.Path(path)
    data = as_array(array)
    check_array(data, path, what="would hold")
    axes = resolve_axes(axes, data.ndim, spacing)
    spatial_axes = "".join(a for a in axes if a in "ZYX")
    spacing = check_spacing(spacing, axes) or (1.0,) * len(spatial_axes)
    dtype = np.dtype(np.uint8 if data.dtype == np.bool_ else data.dtype)
    if dtype.kind not in "iuf":
        raise InputError(f"cannot write {path} with dtype {dtype}: use a numeric type")
    if labels and dtype.kind == "f":
        raise InputError(f"cannot write {path} as OME-Zarr labels: labels must be integers, not {dtype}")
    shape = tuple(int(s) for s in data.shape)
    chunks = tuple(int(c) for c in chunks) if chunks is not None else default_chunks(shape, axes)
    if len(chunks) != len(shape) or any(c < 1 for c in chunks):
        raise InputError(f"chunks {chunks} do not fit an array of shape {shape}")
    if not isinstance(data, da.Array):
        data = da.from_array(data, chunks=chunks)
    fmt = FormatV05()
    axes_metadata: list[dict[str, str]] = []
    for letter in axes:
        entry = {"name": letter.lower(), "type": _AXIS_TYPES[letter]}
        if letter in "ZYX":
            entry["unit"] = "micrometer"
        axes_metadata.append(entry)

    with atomic_output(path, folder=True) as temporary:
        group = zarr.open_group(str(temporary), mode="w", zarr_format=3)
        level = data.astype(dtype)
        level_spacing = tuple(spacing)
        scales: list[list[float]] = []
        for index in range(max(1, int(max_levels))):
            level_shape = tuple(int(s) for s in level.shape)
            level_chunks = tuple(min(c, s) for c, s in zip(chunks, level_shape, strict=True))
            target = group.create_array(
                str(index),
                shape=level_shape,
                chunks=level_chunks,
                dtype=dtype,
                fill_value=0,
                dimension_names=[a.lower() for a in axes],
            )
            da.store(level.rechunk(level_chunks), target, lock=False)
            spatial = iter(level_spacing)
            scales.append([next(spatial) if a in "ZYX" else 1.0 for a in axes])
            yx = [s for s, a in zip(level_shape, axes, strict=True) if a in "YX"]
            if max(yx) <= MIN_LEVEL_SIZE or index + 1 >= max_levels:
                break
            factors = downsample_factors(level_shape, axes, level_spacing)
            # The next level is computed from this one as written (read back lazily).
            level = mode_downsample(da.from_zarr(target), factors, labels=labels)
            spatial_factors = [f for f, a in zip(factors, axes, strict=True) if a in "ZYX"]
            level_spacing = tuple(s * f for s, f in zip(level_spacing, spatial_factors, strict=True))
        datasets = [
            {"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": scale}]}
            for i, scale in enumerate(scales)
        ]
        write_multiscales_metadata(
            group, datasets=datasets, fmt=fmt, axes=axes_metadata, name=name or path.name.split(".")[0]
        )
        if labels:
            add_metadata(group, {"image-label": {"version": fmt.version}})
    return path
