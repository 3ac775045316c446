"""TIFF and OME-TIFF reading and writing (tifffile).

Writing picks one of three layouts:

``imagej``
    An ImageJ hyperstack (the default for uint8, uint16 and float32 up to
    :data:`BIGTIFF_THRESHOLD` bytes, unless an axis other than Y, X has size 1,
    which ImageJ files cannot keep): Fiji and napari read the axes, the pixel
    size (``XResolution`` / ``YResolution`` = 1 / spacing) and the z step
    (``spacing``) with its ``unit``.
``plain``
    A plain TIFF, or BigTIFF when the data are larger than
    :data:`BIGTIFF_THRESHOLD` (ImageJ files cannot be BigTIFF), also used for
    dtypes ImageJ cannot hold (int8, int16, int32, uint32, float64 …). The
    resolution tags hold the pixel size per centimetre and tifffile's JSON
    description holds ``axes``, ``spacing`` and ``unit``.
``ome``
    OME-TIFF (``ome=True``, chosen by the ``.ome.tif`` name in
    :func:`~scribbleseg.io.arrays.write_array`) with ``PhysicalSizeX/Y/Z``;
    BigTIFF when large.

Data are written page by page; a dask array is computed in slabs of at most
:data:`SLAB_BYTES`, so it is never loaded whole. Lazily read TIFFs raise
:class:`~scribbleseg.errors.InputError` for pages that cannot be decoded.
``int64`` / ``uint64`` arrays (the usual NumPy labels) are stored in the
smallest type that holds their values: uint8, uint16 or uint32 when no value
is negative, else int32 (64 bits are kept only when the values need them);
``bool`` is stored as uint8 (0 / 1). Other dtypes are kept.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import struct
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from typing import Any

import dask.array as da
import numpy as np
import tifffile

from scribbleseg.errors import InputError
from scribbleseg.io.arrays import (
    ArrayFile,
    as_array,
    atomic_output,
    check_array,
    check_spacing,
    check_stored_dtype,
    is_lazy_array,
    output_path,
    resolve_axes,
    to_micrometres,
)

__all__ = ["BIGTIFF_THRESHOLD", "IMAGEJ_DTYPES", "SLAB_BYTES", "read_tiff", "tiff_dtype", "write_tiff"]

#: Uncompressed size in bytes above which a BigTIFF is written (classic TIFF
#: offsets are 32-bit; the margin leaves room for tags and compression overhead).
BIGTIFF_THRESHOLD = 2**32 - 2**25

#: dtypes written as an ImageJ hyperstack; others get the plain layout.
IMAGEJ_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))

#: Axis order of an ImageJ hyperstack.
_IMAGEJ_ORDER = "TZCYX"

#: ``unit`` argument -> OME ``PhysicalSize*Unit`` symbol.
_OME_UNITS = {"micron": "\u00b5m", "um": "\u00b5m", "\u03bcm": "\u00b5m", "micrometer": "\u00b5m"}


# --------------------------------------------------------------------------------------------------
# writing


def tiff_dtype(array: Any) -> np.dtype:
    """Return the dtype :func:`write_tiff` stores ``array`` in (see the module docstring).

    For 64-bit integers the values are scanned once (block by block for dask).
    """
    dtype = np.dtype(array.dtype)
    if dtype == np.bool_:
        return np.dtype(np.uint8)
    if dtype.kind not in "iu" or dtype.itemsize < 8:
        return dtype
    if is_lazy_array(array):
        low, high = (int(v) for v in da.compute(array.min(), array.max()))
    else:
        low, high = int(array.min()), int(array.max())
    if low >= 0:
        for candidate in (np.uint8, np.uint16, np.uint32):
            if high <= np.iinfo(candidate).max:
                return np.dtype(candidate)
    elif np.iinfo(np.int32).min <= low and high <= np.iinfo(np.int32).max:
        return np.dtype(np.int32)
    return dtype


#: Most bytes of a dask array computed at once while writing pages.
SLAB_BYTES = 256 * 2**20


def _iter_pages(data: np.ndarray | da.Array, dtype: np.dtype) -> Iterator[np.ndarray]:
    """Yield the ``(Y, X)`` planes of ``data`` in C order, converted to ``dtype``.

    A dask array is computed in slabs along its first axis: one chunk-row at
    a time, split further so that a slab holds at most :data:`SLAB_BYTES`
    (at least one plane), so memory stays bounded whatever the volume size.
    """
    if data.ndim == 2:
        yield np.ascontiguousarray(np.asarray(data), dtype=dtype)
        return
    if is_lazy_array(data):
        row_bytes = int(np.prod(data.shape[1:], dtype=np.int64)) * max(dtype.itemsize, data.dtype.itemsize)
        rows_per_slab = max(1, SLAB_BYTES // max(1, row_bytes))
        start = 0
        for size in data.chunks[0]:
            for first in range(start, start + size, rows_per_slab):
                last = min(first + rows_per_slab, start + size)
                if data.ndim > 3 and row_bytes > SLAB_BYTES:
                    # e.g. (C, Z, Y, X) with huge Z*Y*X: recurse one entry at a time
                    for entry in range(first, last):
                        yield from _iter_pages(data[entry], dtype)
                    continue
                slab = np.asarray(data[first:last].compute())
                for index in np.ndindex(slab.shape[:-2]):
                    yield np.ascontiguousarray(slab[index], dtype=dtype)
                del slab
            start += size
        return
    for index in np.ndindex(data.shape[:-2]):
        yield np.ascontiguousarray(data[index], dtype=dtype)


def write_tiff(
    path: str | os.PathLike[str],
    array: Any,
    *,
    spacing: tuple[float, ...] | None = None,
    axes: str | None = None,
    ome: bool = False,
    bigtiff: bool | None = None,
    compression: str | None = "zlib",
    unit: str | None = "micron",
) -> pathlib.Path:
    """Write ``array`` as an ImageJ hyperstack, a plain (Big)TIFF or an OME-TIFF.

    Parameters
    ----------
    path : path-like
        Output file. It is written under a temporary name and renamed at the
        end, so a failure never leaves a file that looks complete.
    array : (..., Y, X) array-like or dask.array.Array
        Written page by page; a dask array is computed chunk-row by chunk-row.
    spacing : tuple of float, optional
        Physical spacing of the spatial axes ``([Z,] Y, X)`` in ``unit``.
    axes : str, optional
        Axis letters of ``array`` (from ``TCZYX``, ending with ``YX``); see
        :func:`scribbleseg.io.arrays.default_axes` for the default.
    ome : bool
        Write OME-TIFF with ``PhysicalSizeX/Y/Z``.
    bigtiff : bool, optional
        Force (True) or forbid (False) BigTIFF. By default BigTIFF is used when
        the uncompressed data exceed :data:`BIGTIFF_THRESHOLD` bytes.
    compression : str, optional
        tifffile compression name (``"zlib"``, ``"lzw"``, ``"zstd"`` …) or None.
    unit : str, optional
        Length unit of ``spacing`` (``"micron"``, ``"nm"``, ``"mm"`` …).

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    InputError
        If the array is empty or not numeric, ``axes`` / ``spacing`` do not fit
        it, the folder is missing, or writing fails (disk full …).
    """
    path = output_path(path)
    data = as_array(array)
    check_array(data, path, what="would hold")
    check_stored_dtype(data.dtype, path)
    axes = resolve_axes(axes, data.ndim, spacing)
    spacing = check_spacing(spacing, axes)
    dtype = tiff_dtype(data)
    if ome and dtype == np.float16:
        dtype = np.dtype(np.float32)  # OME has no half floats; float32 holds them exactly
    if ome and dtype.itemsize == 8 and dtype.kind in "iu":
        raise InputError(
            f"cannot write {path}: OME-TIFF cannot store 64-bit integers, and these values need "
            "them - write .tif or .zarr instead"
        )
    nbytes = int(np.prod(data.shape, dtype=np.int64)) * dtype.itemsize
    use_bigtiff = nbytes > BIGTIFF_THRESHOLD if bigtiff is None else bool(bigtiff)
    if ome:
        layout = "ome"
    elif (
        not use_bigtiff
        and dtype in IMAGEJ_DTYPES
        # ImageJ drops axes of size 1 (a one-slice volume would read back as 2D)
        and all(size > 1 for size, letter in zip(data.shape, axes, strict=True) if letter not in "YX")
    ):
        layout = "imagej"
    else:
        layout = "plain"

    size = dict(zip((a for a in axes if a in "ZYX"), spacing, strict=True)) if spacing else {}
    options: dict[str, Any] = {}
    if layout == "imagej":
        order = sorted(range(data.ndim), key=lambda i: _IMAGEJ_ORDER.index(axes[i]))
        data = data.transpose(order)
        axes = "".join(axes[i] for i in order)
        metadata: dict[str, Any] = {"axes": axes}
        if size:
            options["resolution"] = (1.0 / size["X"], 1.0 / size["Y"])
            if "Z" in size:
                metadata["spacing"] = size["Z"]
            if unit:
                metadata["unit"] = unit
    elif layout == "ome":
        metadata = {"axes": axes}
        for letter, value in size.items():
            metadata[f"PhysicalSize{letter}"] = value
            if unit:
                metadata[f"PhysicalSize{letter}Unit"] = _OME_UNITS.get(unit.lower(), unit)
    else:
        metadata = {"axes": axes}
        if size:
            metadata["spacing"] = list(spacing or ())
            metadata["unit"] = unit
            micrometres_per_unit = to_micrometres(1.0, unit)
            if micrometres_per_unit is not None:  # the TIFF standard knows inches and centimetres
                options["resolution"] = (
                    1e4 / (size["X"] * micrometres_per_unit),
                    1e4 / (size["Y"] * micrometres_per_unit),
                )
                options["resolutionunit"] = "CENTIMETER"
            else:
                options["resolution"] = (1.0 / size["X"], 1.0 / size["Y"])
                options["resolutionunit"] = "NONE"

    with atomic_output(path) as temporary:
        try:
            with tifffile.TiffWriter(
                temporary, bigtiff=use_bigtiff, imagej=layout == "imagej", ome=layout == "ome"
            ) as writer:
                writer.write(
                    _iter_pages(data, dtype),
                    shape=tuple(int(s) for s in data.shape),
                    dtype=dtype,
                    photometric="minisblack",
                    compression=compression,
                    metadata=metadata,
                    **options,
                )
        except (ValueError, struct.error) as exc:  # e.g. data too large for a classic TIFF
            raise InputError(f"cannot write {path} as TIFF: {exc}") from exc
    return path


# --------------------------------------------------------------------------------------------------
# reading


class _ErrorRecorder(logging.Handler):
    """Collects the errors tifffile logs (it logs, rather than raises, on truncated files)."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _recording_tifffile_errors() -> Iterator[_ErrorRecorder]:
    logger = logging.getLogger("tifffile")
    recorder = _ErrorRecorder()
    logger.addHandler(recorder)
    try:
        yield recorder
    finally:
        logger.removeHandler(recorder)


def _corrupt(path: pathlib.Path, detail: str) -> InputError:
    return InputError(
        f"cannot read {path}: not a valid TIFF file, or truncated / corrupt ({detail}) — "
        "check the file opens in Fiji or re-export it"
    )


def read_tiff(path: str | os.PathLike[str], *, lazy: bool = False) -> ArrayFile:
    """Read the first image series (level 0) of a TIFF / OME-TIFF file.

    Parameters
    ----------
    path : path-like
    lazy : bool
        Return a read-only ``np.memmap`` for uncompressed contiguous data, else
        a dask array over tifffile's zarr interface; nothing is decoded yet.

    Returns
    -------
    ArrayFile
        ``axes`` from the ImageJ / OME / tifffile metadata, ``spacing`` from
        ImageJ resolution + ``spacing``, OME ``PhysicalSize*`` or tifffile's
        JSON description, in micrometres when the unit is known.

    Raises
    ------
    InputError
        If the file is not a TIFF, or is truncated or corrupt.
    """
    path = pathlib.Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder, not a TIFF file")
    with _recording_tifffile_errors() as errors:
        try:
            with tifffile.TiffFile(path) as tif:
                if not tif.series:
                    raise _corrupt(path, "no image found in it")
                series = tif.series[0]
                if errors.messages:
                    raise _corrupt(path, errors.messages[0])
                axes = _known_axes(series.axes)
                spacing = _spacing(tif, axes)
                if lazy:
                    _check_data_inside_file(path, series)
                    data = _lazy_series(path, series)
                else:
                    data = series.asarray()
                if errors.messages:
                    raise _corrupt(path, errors.messages[0])
        except InputError:
            raise
        except MemoryError as exc:
            raise InputError(
                f"cannot read {path}: not enough memory (read it lazily, or the file is corrupt)"
            ) from exc
        except Exception as exc:  # tifffile, imagecodecs, zlib, struct … all mean "bad file" here
            raise _corrupt(path, f"{type(exc).__name__}: {exc}") from exc
    return ArrayFile(data, spacing, axes, path)


def _check_data_inside_file(path: pathlib.Path, series: Any) -> None:
    """Refuse a lazily read file whose image data would lie past its end (truncated)."""
    file_size = path.stat().st_size
    for page in series.pages:
        if page is None:
            continue
        ends = [o + c for o, c in zip(page.dataoffsets, page.databytecounts, strict=False) if c]
        if ends and max(ends) > file_size:
            raise _corrupt(path, "image data past the end of the file")


def _lazy_series(path: pathlib.Path, series: Any) -> np.ndarray | da.Array:
    keyframe = series.keyframe
    if series.dataoffset is not None and keyframe.compression == 1 and series.dtype.isnative:
        return tifffile.memmap(path, series=0, mode="r")
    import zarr

    from scribbleseg.io.zarr import lazy_zarr

    # The store reopens the file on demand, so it outlives the TiffFile here; failed
    # reads of a corrupt page raise InputError naming the file.
    store = series.aszarr(level=0)
    return lazy_zarr(zarr.open_array(store, mode="r"), path)


def _as_micrometres(value: float, unit: str | None) -> float:
    """``value`` in micrometres when ``unit`` is a known length unit, else unchanged."""
    converted = to_micrometres(value, unit)
    return value if converted is None else converted


def _known_axes(axes: str) -> str | None:
    """Return tifffile's axes when they mean something (not Q = unknown, I = image sequence)."""
    return axes if axes and set(axes) <= set("TZCYXS") else None


def _spacing(tif: tifffile.TiffFile, axes: str | None) -> tuple[float, ...] | None:
    """Spacing of the spatial axes in ``axes`` from the file's metadata, or None."""
    if axes is None:
        return None
    size: dict[str, float] | None
    if tif.is_ome:
        size = _ome_physical_size(tif.ome_metadata)
    elif tif.is_imagej:
        size = _imagej_physical_size(tif)
    elif tif.is_shaped:
        size = _shaped_physical_size(tif, axes)
    else:
        size = None
    if not size:
        return None
    values = tuple(float(size.get(a, 1.0)) for a in axes if a in "ZYX")
    if not all(np.isfinite(v) and v > 0 for v in values):
        return None
    return values


def _ome_physical_size(ome_xml: str | None) -> dict[str, float] | None:
    if not ome_xml:
        return None
    try:
        root = ElementTree.fromstring(ome_xml)
    except ElementTree.ParseError:
        return None
    pixels = next((e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return None
    size: dict[str, float] = {}
    for letter in "XYZ":
        text = pixels.get(f"PhysicalSize{letter}")
        if text is None:
            continue
        try:
            value = float(text)
        except ValueError:
            continue
        size[letter] = _as_micrometres(value, pixels.get(f"PhysicalSize{letter}Unit", "\u00b5m"))
    if not size:
        return None
    # An image with only one of X / Y stated has square pixels.
    size.setdefault("X", size.get("Y", 1.0))
    size.setdefault("Y", size["X"])
    return size


def _resolution(tif: tifffile.TiffFile) -> tuple[float, float] | None:
    """``(x, y)`` pixel size from the resolution tags, in units of ResolutionUnit."""
    tags = tif.pages.first.tags
    values = []
    for name in ("XResolution", "YResolution"):
        tag = tags.get(name)
        if tag is None:
            return None
        numerator, denominator = tag.value
        if numerator <= 0 or denominator <= 0:
            return None
        values.append(denominator / numerator)
    return values[0], values[1]


def _imagej_physical_size(tif: tifffile.TiffFile) -> dict[str, float] | None:
    metadata = tif.imagej_metadata or {}
    unit = metadata.get("unit")
    unit = unit if isinstance(unit, str) and unit.lower() not in ("", "pixel", "pixels") else None
    resolution = _resolution(tif) or (1.0, 1.0)
    z = metadata.get("spacing")
    if unit is None and resolution == (1.0, 1.0) and z is None:
        return None
    size = {"X": _as_micrometres(resolution[0], unit), "Y": _as_micrometres(resolution[1], unit)}
    if isinstance(z, (int, float)) and not isinstance(z, bool):
        size["Z"] = _as_micrometres(float(z), unit)
    return size


def _shaped_physical_size(tif: tifffile.TiffFile, axes: str) -> dict[str, float] | None:
    metadata = (tif.shaped_metadata or ({},))[0]
    spacing = metadata.get("spacing")
    unit = metadata.get("unit")
    spatial = [a for a in axes if a in "ZYX"]
    if not isinstance(spacing, list) or len(spacing) != len(spatial):
        return None
    try:
        return {
            a: _as_micrometres(float(v), unit if isinstance(unit, str) else None)
            for a, v in zip(spatial, spacing, strict=True)
        }
    except (TypeError, ValueError):
        return None
