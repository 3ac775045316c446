"""Read and write image and label arrays: TIFF / OME-TIFF, NumPy ``.npy`` and zarr / OME-Zarr.

:func:`read_array` and :func:`write_array` are the one entry point the CLI and
the Python API use; the format is chosen by the file name. Every problem a
user can cause (missing file, unsupported format, corrupt file, empty array,
output folder missing …) raises :class:`~scribbleseg.errors.InputError` with a
one-line message naming the path.

Arrays are returned in the axis order stored in the file; mapping a channel
axis to the core's ``(C, [Z], Y, X)`` layout happens once, in the CLI or the
widget. ``spacing`` always describes the spatial axes ``([Z,] Y, X)`` only, in
micrometres when the file names a known length unit.

Writers never leave a file that looks complete after a failure: they write
into a temporary file (or folder) beside the target and rename it at the end.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import dask.array as da
import numpy as np

from scribbleseg.errors import InputError

__all__ = [
    "SUPPORTED_SUFFIXES",
    "ArrayFile",
    "FileFormat",
    "file_format",
    "read_array",
    "write_array",
]

FileFormat = Literal["tiff", "ome-tiff", "npy", "zarr"]

#: File name endings understood by :func:`read_array` and :func:`write_array`.
SUPPORTED_SUFFIXES: tuple[str, ...] = (".tif", ".tiff", ".ome.tif", ".ome.tiff", ".npy", ".zarr")

_SUPPORTED_TEXT = ", ".join(SUPPORTED_SUFFIXES)
#: dtype kinds an image or labels file may hold: bool, signed, unsigned, float.
_NUMERIC_KINDS = "biuf"
#: Letters :func:`write_array` accepts in ``axes``; every layout ends with Y, X.
_AXIS_LETTERS = "TCZYX"
_ZARR_MARKERS = ("zarr.json", ".zarray", ".zgroup")

#: Length units (ImageJ, OME-XML and OME-NGFF spellings) and their size in micrometres.
_MICROMETRES_PER_UNIT = {
    "micron": 1.0,
    "microns": 1.0,
    "micrometer": 1.0,
    "micrometre": 1.0,
    "um": 1.0,
    "\u00b5m": 1.0,  # micro sign
    "\u03bcm": 1.0,  # greek mu
    "\\u00b5m": 1.0,  # ImageJ writes the escape sequence itself
    "nm": 1e-3,
    "nanometer": 1e-3,
    "nanometre": 1e-3,
    "mm": 1e3,
    "millimeter": 1e3,
    "millimetre": 1e3,
    "cm": 1e4,
    "centimeter": 1e4,
    "m": 1e6,
    "meter": 1e6,
    "\u00e5": 1e-4,  # Å
    "angstrom": 1e-4,
}


@dataclass(frozen=True)
class ArrayFile:
    """An array read from a file, with what the file says about it.

    Attributes
    ----------
    data : ndarray or dask.array.Array
        The array in the file's axis order. Lazy (a dask array, or a read-only
        ``np.memmap``) when read with ``lazy=True``.
    spacing : tuple of float or None
        Physical spacing of the spatial axes ``([Z,] Y, X)``, in micrometres
        when the file names a known unit; ``None`` when the file does not say.
    axes : str or None
        Axis letters such as ``"ZYX"`` or ``"CYX"`` when the file says so.
    path : pathlib.Path
        The file that was read.
    """

    data: np.ndarray | da.Array
    spacing: tuple[float, ...] | None
    axes: str | None
    path: pathlib.Path

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of :attr:`data`."""
        return tuple(int(s) for s in self.data.shape)

    @property
    def is_lazy(self) -> bool:
        """Whether :attr:`data` is read on demand (dask array or memory map)."""
        return isinstance(self.data, (da.Array, np.memmap))


# --------------------------------------------------------------------------------------------------
# format and validation helpers (shared by tiff.py and zarr.py)


def file_format(path: str | os.PathLike[str]) -> FileFormat:
    """Return the format of ``path`` judged by its name.

    A folder holding zarr metadata counts as zarr whatever its name, so an
    array inside a zarr group (``image.zarr/0``) can be named directly.

    Raises
    ------
    InputError
        If the name ends with none of :data:`SUPPORTED_SUFFIXES`.
    """
    path = pathlib.Path(path)
    name = path.name.lower()
    if name.endswith((".ome.tif", ".ome.tiff")):
        return "ome-tiff"
    if name.endswith((".tif", ".tiff")):
        return "tiff"
    if name.endswith(".npy"):
        return "npy"
    if name.endswith(".zarr") or (path.is_dir() and any((path / m).exists() for m in _ZARR_MARKERS)):
        return "zarr"
    raise InputError(f"unsupported file type: {path} (use one of {_SUPPORTED_TEXT})")


def to_micrometres(value: float, unit: str | None) -> float | None:
    """``value`` in ``unit`` converted to micrometres, or None when the unit is unknown."""
    factor = _MICROMETRES_PER_UNIT.get(unit.strip().lower()) if isinstance(unit, str) else None
    return None if factor is None else value * factor


def is_lazy_array(array: Any) -> bool:
    """Whether ``array`` is a dask array (computed block by block)."""
    return isinstance(array, da.Array)


def check_array(array: Any, path: pathlib.Path, *, what: str = "holds") -> None:
    """Raise :class:`InputError` unless ``array`` is a non-empty numeric image (2+ dimensions)."""
    shape = tuple(array.shape)
    dtype = np.dtype(array.dtype)
    if dtype.kind not in _NUMERIC_KINDS:
        raise InputError(
            f"{path} {what} an array of type {dtype} — images and labels must be numbers (integer or float)"
        )
    if len(shape) < 2:
        raise InputError(
            f"{path} {what} a {len(shape)}-dimensional array of shape {shape} — "
            "an image needs at least Y and X"
        )
    if 0 in shape:
        raise InputError(f"{path} {what} an empty array of shape {shape} — there is nothing to process")


def check_stored_dtype(dtype: Any, path: pathlib.Path) -> None:
    """Raise :class:`InputError` for numbers TIFF and zarr cannot store (float128 …)."""
    dtype = np.dtype(dtype)
    if dtype.itemsize > 8:
        raise InputError(
            f"cannot write {path} with dtype {dtype}: TIFF and zarr store numbers of at most 64 bits "
            "(convert to float64, or write .npy)"
        )


def default_axes(ndim: int, spacing: tuple[float, ...] | None = None) -> str:
    """Axis letters assumed for an array written without ``axes``.

    ``YX`` in 2D; in 3D ``ZYX`` (labels and predictions are spatial) unless
    ``spacing`` has two entries, then ``CYX``; ``CZYX`` in 4D and ``TCZYX`` in 5D.
    """
    if ndim == 2:
        return "YX"
    if ndim == 3:
        return "CYX" if spacing is not None and len(spacing) == 2 else "ZYX"
    if ndim == 4:
        return "CZYX"
    if ndim == 5:
        return "TCZYX"
    raise InputError(f"cannot write a {ndim}-dimensional array: at most 5 axes (T, C, Z, Y, X) are supported")


def resolve_axes(axes: str | None, ndim: int, spacing: tuple[float, ...] | None) -> str:
    """Check ``axes`` (or choose :func:`default_axes`) for an array of ``ndim`` dimensions."""
    if axes is None:
        return default_axes(ndim, spacing)
    axes = axes.upper()
    if (
        len(axes) != ndim
        or len(set(axes)) != ndim
        or not set(axes) <= set(_AXIS_LETTERS)
        or not axes.endswith("YX")
    ):
        raise InputError(
            f"axes {axes!r} do not fit an array with {ndim} dimensions: use {ndim} distinct letters "
            f"of {_AXIS_LETTERS} ending with YX"
        )
    return axes


def check_spacing(spacing: Any, axes: str) -> tuple[float, ...] | None:
    """Return ``spacing`` as floats, one per spatial axis (Z, Y, X) in ``axes``."""
    if spacing is None:
        return None
    spatial = "".join(a for a in axes if a in "ZYX")
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise InputError(f"spacing must be numbers, got {spacing!r}") from None
    if len(values) != len(spatial):
        raise InputError(
            f"spacing {values} has {len(values)} values but the image has "
            f"{len(spatial)} spatial axes ({spatial})"
        )
    if not all(np.isfinite(v) and v > 0 for v in values):
        raise InputError(f"spacing values must be positive numbers, got {values}")
    return values


def as_array(array: Any) -> np.ndarray | da.Array:
    """Return ``array`` as a dask array if it is one, else as a NumPy array (no copy if possible)."""
    if isinstance(array, da.Array):
        return array
    if not isinstance(array, np.ndarray) and all(hasattr(array, a) for a in ("shape", "dtype", "chunks")):
        # zarr / h5py arrays: wrap so that they are read block by block, not loaded whole.
        return da.from_array(array, chunks=array.chunks)
    return np.asarray(array)


# --------------------------------------------------------------------------------------------------
# atomic output


def output_path(path: str | os.PathLike[str]) -> pathlib.Path:
    """Return ``path`` after checking that its folder exists and is a folder."""
    path = pathlib.Path(path)
    parent = path.parent
    if not parent.exists():
        raise InputError(f"output folder does not exist: {parent} — create it first or choose another path")
    if not parent.is_dir():
        raise InputError(f"cannot write {path}: {parent} is a file, not a folder")
    return path


def _describe_os_error(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "the disk is full"
    if exc.errno == errno.EDQUOT:
        return "the disk quota is exceeded"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "permission denied (the folder is read-only or belongs to someone else)"
    return exc.strerror or str(exc)


def _remove(path: pathlib.Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


#: Read once at import (setting the umask to read it is not thread-safe).
_UMASK = _current_umask()


def _is_zarr_folder(path: pathlib.Path) -> bool:
    return any((path / m).exists() for m in _ZARR_MARKERS)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], *, folder: bool = False) -> Iterator[pathlib.Path]:
    """Yield a temporary path beside ``path`` that replaces ``path`` when the block succeeds.

    On any failure the temporary file or folder is removed, so no file that
    looks complete is left behind; an :class:`OSError` (disk full, permission
    denied …) becomes an :class:`InputError` naming ``path``.

    Parameters
    ----------
    path : path-like
        The final file (or, with ``folder=True``, folder such as a ``.zarr``).
        An existing folder is only replaced if it is a zarr store.
    folder : bool
        Create a temporary folder instead of a temporary file.
    """
    path = output_path(path)
    if path.is_dir() and not (folder and _is_zarr_folder(path)):
        raise InputError(
            f"cannot write {path}: a folder of that name exists (remove it or choose another name)"
        )
    if path.exists() and folder and not path.is_dir():
        raise InputError(
            f"cannot write {path}: a file of that name exists (remove it or choose another name)"
        )
    temporary: pathlib.Path | None = None
    try:
        prefix = f".{path.name}."
        if folder:
            temporary = pathlib.Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=path.parent))
        else:
            handle, name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
            os.close(handle)
            temporary = pathlib.Path(name)
        yield temporary
        if folder and path.exists():
            # A folder cannot be renamed over a non-empty one: move the old store aside first.
            old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(path, old)
            try:
                os.rename(temporary, path)
            except OSError:
                os.rename(old, path)
                raise
            _remove(old)
        else:
            os.replace(temporary, path)
        # mkstemp / mkdtemp create owner-only entries; give the permissions a new file gets.
        os.chmod(path, (0o777 if folder else 0o666) & ~_UMASK)
        temporary = None
    except OSError as exc:
        raise InputError(f"cannot write {path}: {_describe_os_error(exc)}") from exc
    finally:
        if temporary is not None:
            _remove(temporary)


# --------------------------------------------------------------------------------------------------
# reading


def read_array(path: str | os.PathLike[str], *, lazy: bool = False) -> ArrayFile:
    """Read an image or labels array from a TIFF, ``.npy`` or zarr / OME-Zarr file.

    Parameters
    ----------
    path : path-like
        ``.tif`` / ``.tiff`` / ``.ome.tif`` (the first series, level 0),
        ``.npy``, or ``.zarr`` (an array, an OME-Zarr image — its level 0 — or a
        group holding a single array).
    lazy : bool
        Do not load the data: zarr and compressed TIFF give a dask array,
        ``.npy`` and uncompressed TIFF a read-only ``np.memmap``.

    Returns
    -------
    ArrayFile
        ``data`` in the file's axis order, with ``spacing`` and ``axes`` when
        the file states them.

    Raises
    ------
    InputError
        If the file is missing, of an unsupported type, unreadable or corrupt,
        holds objects instead of numbers, or holds an empty array.
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise InputError(f"no such file: {path} — check the path")
    kind = file_format(path)
    if kind in ("tiff", "ome-tiff"):
        from scribbleseg.io import tiff

        result = tiff.read_tiff(path, lazy=lazy)
    elif kind == "npy":
        result = _read_npy(path, lazy=lazy)
    else:
        from scribbleseg.io import zarr as zarr_io

        result = zarr_io.read_zarr(path, lazy=lazy)
    check_array(result.data, path)
    return ArrayFile(_native_byte_order(result.data), result.spacing, result.axes, path)


def _native_byte_order(data: np.ndarray | da.Array) -> np.ndarray | da.Array:
    """Convert big-endian data to native order (torch refuses non-native arrays)."""
    dtype = np.dtype(data.dtype)
    if dtype.byteorder in ("=", "|") or dtype.isnative:
        return data
    native = dtype.newbyteorder("=")
    if isinstance(data, np.memmap):
        return da.from_array(data, chunks="auto").astype(native)
    return data.astype(native)


def _read_npy(path: pathlib.Path, *, lazy: bool) -> ArrayFile:
    if path.is_dir():
        raise InputError(f"{path} is a folder, not a .npy file")
    try:
        data = np.load(path, mmap_mode="r" if lazy else None, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise InputError(
                f"{path} holds Python objects (pickle), which are never loaded for safety — "
                "save the image as a numeric array (np.save of a number array) or as TIFF"
            ) from exc
        raise InputError(f"cannot read {path}: not a valid .npy file ({exc})") from exc
    except (OSError, EOFError) as exc:
        raise InputError(f"cannot read {path}: the file is truncated or not a .npy file ({exc})") from exc
    except Exception as exc:  # a corrupt header: numpy's parser raises SyntaxError, TokenError …
        raise InputError(f"cannot read {path}: not a valid .npy file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, np.ndarray):  # np.load gives an NpzFile for .npz content
        raise InputError(f"cannot read {path}: it is not a single .npy array (an .npz archive?)")
    return ArrayFile(data, None, None, path)


# --------------------------------------------------------------------------------------------------
# writing


def write_array(
    path: str | os.PathLike[str],
    array: Any,
    *,
    spacing: tuple[float, ...] | None = None,
    chunks: tuple[int, ...] | None = None,
    axes: str | None = None,
) -> pathlib.Path:
    """Write ``array`` to ``path`` in the format its name asks for.

    Parameters
    ----------
    path : path-like
        ``.tif`` / ``.tiff`` (ImageJ hyperstack, or BigTIFF when large — see
        :func:`scribbleseg.io.tiff.write_tiff`), ``.ome.tif`` / ``.ome.tiff``,
        ``.npy`` or ``.zarr`` (chunked, written block by block).
    array : array-like or dask.array.Array
        The data; a dask array is written block by block, never loaded whole.
    spacing : tuple of float, optional
        Physical spacing (micrometres) of the spatial axes ``([Z,] Y, X)``.
        Stored in TIFF and zarr; ``.npy`` holds neither spacing nor axes.
    chunks : tuple of int, optional
        Chunk shape of a ``.zarr`` output (ignored by the other formats).
    axes : str, optional
        Axis letters of ``array`` (from ``TCZYX``, ending with ``YX``); by
        default ``YX``, ``ZYX`` (``CYX`` when ``spacing`` has 2 values), ``CZYX``.

    Returns
    -------
    pathlib.Path
        The written path.

    Raises
    ------
    InputError
        If the type is unsupported, the output folder is missing, or writing
        fails (disk full, permission denied …); nothing is left at ``path`` then.
    """
    path = pathlib.Path(path)
    kind = file_format(path)
    if kind in ("tiff", "ome-tiff"):
        from scribbleseg.io import tiff

        return tiff.write_tiff(path, array, spacing=spacing, axes=axes, ome=kind == "ome-tiff")
    if kind == "npy":
        return _write_npy(path, array)
    from scribbleseg.io import zarr as zarr_io

    return zarr_io.write_zarr(path, array, chunks=chunks, spacing=spacing, axes=axes)


def _write_npy(path: pathlib.Path, array: Any) -> pathlib.Path:
    data = as_array(array)
    check_array(data, path, what="would hold")
    with atomic_output(path) as temporary:
        if is_lazy_array(data):
            target = np.lib.format.open_memmap(temporary, mode="w+", dtype=data.dtype, shape=data.shape)
            da.store(data, target, lock=False)
            target.flush()
            del target
        else:
            with open(temporary, "wb") as handle:
                np.save(handle, data, allow_pickle=False)
    return path
