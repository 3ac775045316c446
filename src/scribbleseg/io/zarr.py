"""zarr (v2 and v3) and OME-Zarr reading; chunked, blockwise zarr writing.

A ``.zarr`` path may be an array, a group holding a single array, or an
OME-Zarr image (NGFF v0.4 ``.zattrs`` ``multiscales``, or v0.5 ``zarr.json``
``attributes["ome"]["multiscales"]``), of which level 0 is read. Writing makes
a zarr v3 array whose ``dimension_names`` are the axes and whose
``attributes["scribbleseg"]`` holds ``axes`` and ``spacing``; OME-Zarr
writing is in :mod:`scribbleseg.io.ome`.

A prediction written block by block (:mod:`scribbleseg.core.blockwise`)
carries ``attributes["scribbleseg"]["complete"]``, false until its last block
is written: reading such an incomplete array raises :class:`InputError`
(rerun the prediction to finish it) unless ``allow_incomplete=True``.
"""

from __future__ import annotations

import math
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import dask.array as da
import numpy as np
import zarr

from scribbleseg.errors import InputError
from scribbleseg.io.arrays import (
    ArrayFile,
    as_array,
    atomic_output,
    check_array,
    check_spacing,
    check_stored_dtype,
    is_lazy_array,
    resolve_axes,
    to_micrometres,
)

__all__ = [
    "check_complete",
    "create_array",
    "default_chunks",
    "is_complete",
    "is_ome_zarr",
    "lazy_zarr",
    "open_zarr_array",
    "read_zarr",
    "write_zarr",
]

#: Key of our own metadata in a written array's attributes.
ATTRIBUTES_KEY = "scribbleseg"


def _open_node(path: pathlib.Path) -> zarr.Array | zarr.Group:
    if not path.exists():
        raise InputError(f"no such file: {path} — check the path")
    if not path.is_dir():
        raise InputError(f"{path} is a file, not a zarr folder (a .zarr image is a folder)")
    try:
        node = zarr.open(store=str(path), mode="r")
    except Exception as exc:  # zarr raises NodeNotFound, JSON, KeyError, ValueError … for bad stores
        raise InputError(
            f"cannot read {path}: not a zarr array or group, or its metadata is corrupt "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    return _checked_attributes(node, path)


def _checked_attributes(node: Any, path: pathlib.Path) -> Any:
    """Return ``node`` if its attributes are a JSON object (zarr opens a list there, then fails later)."""
    if not isinstance(node.metadata.attributes, Mapping):
        raise InputError(
            f"cannot read {path}: its zarr metadata is corrupt (the attributes are not an object)"
        )
    return node


def _multiscales(attributes: Mapping[str, Any]) -> Any:
    """Return the OME-NGFF ``multiscales`` of a group's attributes (v0.5 or earlier), or None."""
    ome = attributes.get("ome")
    if isinstance(ome, Mapping) and "multiscales" in ome:
        return ome["multiscales"]
    return attributes.get("multiscales")


def is_ome_zarr(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a zarr group with OME-Zarr ``multiscales`` metadata."""
    try:
        node = zarr.open(store=str(path), mode="r")
    except Exception:
        return False
    return isinstance(node, zarr.Group) and _multiscales(node.attrs) is not None


def _level_zero(path: pathlib.Path, group: zarr.Group, multiscales: Any) -> tuple[zarr.Array, dict[str, Any]]:
    """Level 0 of an OME-Zarr image and its ``multiscales`` entry."""
    try:
        image = multiscales[0]
        dataset_path = image["datasets"][0]["path"]
    except (IndexError, KeyError, TypeError):
        raise InputError(
            f"{path} has OME-Zarr metadata without multiscales[0].datasets[0].path — the file is "
            "incomplete; re-export it"
        ) from None
    if not isinstance(dataset_path, str) or not isinstance(image, Mapping):
        raise InputError(f"{path} has invalid OME-Zarr metadata (datasets[0].path is {dataset_path!r})")
    try:
        array = group[dataset_path]
    except Exception:
        raise InputError(
            f"{path} names level 0 {dataset_path!r} in its OME-Zarr metadata but holds no such array"
        ) from None
    if not isinstance(array, zarr.Array):
        raise InputError(f"{path}/{dataset_path} (OME-Zarr level 0) is a group, not an array")
    return _checked_attributes(array, path), dict(image)


class CheckedReader:
    """Array-like view of a zarr array whose failed reads raise :class:`InputError`.

    Wrapped with ``dask.array.from_array``, a chunk that cannot be decoded
    (corrupt, truncated, deleted) surfaces as one clear error naming the file,
    wherever the dask graph is computed (threads or ``dask.distributed``
    workers; the reader pickles as its zarr array and path).

    Parameters
    ----------
    array : zarr.Array
        Any object with ``shape``, ``dtype`` and ``__getitem__``.
    path : pathlib.Path
        Named in the error message.
    """

    def __init__(self, array: Any, path: pathlib.Path) -> None:
        self.array = array
        self.path = path
        self.shape = tuple(int(s) for s in array.shape)
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        try:
            return np.asarray(self.array[key])
        except MemoryError:
            raise
        except Exception as exc:  # numcodecs, zarr, tifffile, OSError … for a bad or missing chunk
            detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
            raise InputError(
                f"cannot read {self.path}: a chunk is missing, corrupt or unreadable ({detail}) — check "
                "or re-copy the file"
            ) from exc

    def __dask_tokenize__(self) -> tuple[str, tuple[int, ...], str]:
        return (str(self.path), self.shape, str(self.dtype))


def lazy_zarr(array: Any, path: pathlib.Path) -> da.Array:
    """Wrap ``array`` in a dask array with its chunks whose failed reads raise :class:`InputError`."""
    reader = CheckedReader(array, path)
    chunks = getattr(array, "chunks", None)
    chunks = tuple(int(c) for c in chunks) if chunks is not None else "auto"
    meta = np.empty((0,) * reader.ndim, dtype=reader.dtype)
    return da.from_array(reader, chunks=chunks, asarray=False, fancy=False, meta=meta)


def is_complete(array: zarr.Array) -> bool:
    """Whether ``array`` is not an unfinished blockwise prediction.

    Arrays without ``attributes["scribbleseg"]["complete"]`` (anything not
    written block by block by ScribbleSeg) count as complete.
    """
    ours = array.attrs.get(ATTRIBUTES_KEY)
    return not (isinstance(ours, Mapping) and ours.get("complete") is False)


def check_complete(array: zarr.Array, path: pathlib.Path) -> None:
    """Raise :class:`InputError` if ``array`` (read from ``path``) is an unfinished prediction."""
    if not is_complete(array):
        raise InputError(
            f"{path} is an incomplete prediction (interrupted, or still being written) — rerun "
            "'scribbleseg predict' with the same arguments to finish it"
        )


def open_zarr_array(path: str | os.PathLike[str], *, allow_incomplete: bool = False) -> zarr.Array:
    """Open the image array of a zarr path read-only.

    Parameters
    ----------
    path : path-like
        A zarr v2 / v3 array, an OME-Zarr image (level 0 is returned), or a
        group holding exactly one array.
    allow_incomplete : bool
        Also open an unfinished blockwise prediction.

    Returns
    -------
    zarr.Array

    Raises
    ------
    InputError
        If the path is missing or not a zarr array / OME-Zarr image, or is an
        incomplete prediction (without ``allow_incomplete``).
    """
    path = pathlib.Path(path)
    array, _ = _open_image(path)
    if not allow_incomplete:
        check_complete(array, path)
    return array


def _open_image(path: pathlib.Path) -> tuple[zarr.Array, dict[str, Any] | None]:
    node = _open_node(path)
    if isinstance(node, zarr.Array):
        return node, None
    multiscales = _multiscales(node.attrs)
    if multiscales is not None:
        return _level_zero(path, node, multiscales)
    arrays = [name for name, _ in node.arrays()]
    if len(arrays) == 1:
        return _checked_attributes(node[arrays[0]], path), None
    if not arrays:
        raise InputError(f"{path} is a zarr group without arrays or OME-Zarr metadata — it holds no image")
    raise InputError(
        f"{path} is a zarr group with {len(arrays)} arrays and no OME-Zarr metadata — name the array "
        f"to use, e.g. {path / sorted(arrays)[0]}"
    )


def _ome_axes_and_spacing(image: Mapping[str, Any], ndim: int) -> tuple[str | None, tuple[float, ...] | None]:
    """Axes letters and spatial spacing (level 0) from an OME-Zarr ``multiscales`` entry."""
    names: list[str] = []
    units: list[str | None] = []
    for axis in image.get("axes") or []:
        if isinstance(axis, Mapping):
            names.append(str(axis.get("name", "")))
            units.append(axis.get("unit") if isinstance(axis.get("unit"), str) else None)
        else:  # NGFF v0.3: a list of names
            names.append(str(axis))
            units.append(None)
    letters = "".join(n.upper() for n in names)
    if len(names) != ndim or any(len(n) != 1 for n in names) or not set(letters) <= set("TCZYX"):
        return None, None
    scale = np.ones(ndim)
    try:
        transforms = list(image["datasets"][0].get("coordinateTransformations") or [])
        transforms += list(image.get("coordinateTransformations") or [])
        for transform in transforms:
            if transform.get("type") == "scale" and len(transform.get("scale", ())) == ndim:
                scale = scale * np.asarray(transform["scale"], dtype=float)
    except (AttributeError, TypeError, ValueError):
        return letters, None
    spacing = []
    for letter, unit, value in zip(letters, units, scale, strict=True):
        if letter in "ZYX":
            converted = to_micrometres(float(value), unit)
            spacing.append(float(value) if converted is None else converted)
    if not all(math.isfinite(v) and v > 0 for v in spacing):
        return letters, None
    return letters, tuple(spacing)


def _own_axes_and_spacing(array: zarr.Array) -> tuple[str | None, tuple[float, ...] | None]:
    """Axes from v3 ``dimension_names`` / our attributes, spacing from our attributes."""
    ours = array.attrs.get(ATTRIBUTES_KEY)
    ours = ours if isinstance(ours, Mapping) else {}
    axes = ours.get("axes")
    if not isinstance(axes, str):
        names = getattr(array.metadata, "dimension_names", None)
        axes = "".join(str(n).upper() for n in names) if names and all(names) else None
    if not axes or len(axes) != array.ndim or not set(axes) <= set("TCZYXS"):
        axes = None
    spacing = ours.get("spacing")
    try:
        spacing = tuple(float(v) for v in spacing) if isinstance(spacing, list) else None
    except (TypeError, ValueError):
        spacing = None
    if spacing is not None and not all(math.isfinite(v) and v > 0 for v in spacing):
        spacing = None
    return axes, spacing


def read_zarr(
    path: str | os.PathLike[str], *, lazy: bool = False, allow_incomplete: bool = False
) -> ArrayFile:
    """Read a zarr array / OME-Zarr image (level 0).

    Parameters
    ----------
    path : path-like
    lazy : bool
        Return a dask array with the zarr chunks instead of loading the data.
    allow_incomplete : bool
        Also read an unfinished blockwise prediction (its missing blocks read
        as 0); by default it is refused.

    Returns
    -------
    ArrayFile
        ``axes`` and ``spacing`` from the OME-Zarr ``multiscales`` (level 0
        scale, micrometres when the unit is known), else from the array's
        ``dimension_names`` / ``attributes["scribbleseg"]``.

    Raises
    ------
    InputError
        If the path is missing, not a zarr array / OME-Zarr image, corrupt, or
        an incomplete prediction (without ``allow_incomplete``).
    """
    path = pathlib.Path(path)
    array, image = _open_image(path)
    if not allow_incomplete:
        check_complete(array, path)
    check_array(array, path)
    if image is not None:
        axes, spacing = _ome_axes_and_spacing(image, array.ndim)
    else:
        axes, spacing = _own_axes_and_spacing(array)
    if spacing is not None and axes is not None and len(spacing) != sum(a in "ZYX" for a in axes):
        spacing = None
    if lazy:
        data: np.ndarray | da.Array = lazy_zarr(array, path)
    else:
        try:
            data = np.asarray(array[...])
        except Exception as exc:  # a missing or corrupt chunk
            raise InputError(f"cannot read {path}: a chunk is corrupt ({type(exc).__name__}: {exc})") from exc
    return ArrayFile(data, spacing, axes, path)


def default_chunks(shape: tuple[int, ...], axes: str) -> tuple[int, ...]:
    """Chunk shape for a written array: 64×256×256 voxels in 3D, 1024×1024 in 2D, 1 along C and T."""
    plane = 256 if "Z" in axes else 1024
    limits = {"T": 1, "C": 1, "Z": 64, "Y": plane, "X": plane}
    return tuple(max(1, min(int(size), limits[a])) for size, a in zip(shape, axes, strict=True))


def create_array(
    path: str | os.PathLike[str],
    *,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    dtype: Any,
    axes: str,
    attributes: Mapping[str, Any],
) -> zarr.Array:
    """Create (or replace) an empty zarr v3 array with our axes and attributes.

    ``attributes`` go under ``attributes["scribbleseg"]``; the axes become the
    array's ``dimension_names``. Unwritten chunks read as 0.
    """
    return zarr.create_array(
        store=str(path),
        shape=shape,
        chunks=chunks,
        # via its string: zarr knows dtype("<u8") but not the ulonglong np.min_scalar_type returns
        dtype=np.dtype(np.dtype(dtype).str),
        fill_value=0,
        zarr_format=3,
        dimension_names=tuple(a.lower() for a in axes),
        attributes={ATTRIBUTES_KEY: dict(attributes)},
        overwrite=True,
    )


def write_zarr(
    path: str | os.PathLike[str],
    array: Any,
    *,
    chunks: tuple[int, ...] | None = None,
    spacing: tuple[float, ...] | None = None,
    dtype: Any = None,
    axes: str | None = None,
) -> pathlib.Path:
    """Write ``array`` to a chunked zarr v3 array, block by block.

    Parameters
    ----------
    path : path-like
        The ``.zarr`` folder; built under a temporary name and renamed at the
        end. An existing zarr store there is replaced; any other folder is not.
    array : array-like or dask.array.Array
        A dask array is rechunked to the zarr chunks and stored block by block
        (never loaded whole); a NumPy array is copied one chunk-row at a time.
    chunks : tuple of int, optional
        Chunk shape; default from :func:`default_chunks`.
    spacing : tuple of float, optional
        Physical spacing of the spatial axes, stored in ``attributes["scribbleseg"]``.
    dtype : dtype, optional
        Stored dtype (default: the array's).
    axes : str, optional
        Axis letters, stored as ``dimension_names``; see
        :func:`scribbleseg.io.arrays.default_axes`.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    InputError
        If the array is empty or not numeric, an argument does not fit it, the
        folder is missing, or writing fails.
    """
    path = pathlib.Path(path)
    data = as_array(array)
    check_array(data, path, what="would hold")
    shape = tuple(int(s) for s in data.shape)
    axes = resolve_axes(axes, len(shape), spacing)
    spacing = check_spacing(spacing, axes)
    dtype = np.dtype(data.dtype if dtype is None else dtype)
    if dtype.kind not in "biuf":
        raise InputError(f"cannot write {path} with dtype {dtype}: use a numeric type")
    check_stored_dtype(dtype, path)
    if chunks is None:
        chunks = default_chunks(shape, axes)
    else:
        chunks = tuple(int(c) for c in chunks)
        if len(chunks) != len(shape) or any(c < 1 for c in chunks):
            raise InputError(
                f"chunks {chunks} do not fit an array of shape {shape}: give {len(shape)} positive sizes"
            )
        chunks = tuple(min(c, s) for c, s in zip(chunks, shape, strict=True))
    attributes: dict[str, Any] = {"axes": axes}
    if spacing is not None:
        attributes["spacing"] = list(spacing)

    with atomic_output(path, folder=True) as temporary:
        target = create_array(
            temporary, shape=shape, chunks=chunks, dtype=dtype, axes=axes, attributes=attributes
        )
        if is_lazy_array(data):
            # Chunk-aligned blocks: no two dask tasks write the same zarr chunk.
            da.store(data.astype(dtype).rechunk(chunks), target, lock=False)
        else:
            step = chunks[0]
            for start in range(0, shape[0], step):
                target[start : start + step] = np.asarray(data[start : start + step], dtype=dtype)
    return path
