"""Point annotations from CSV, as napari's Points layer writes them.

napari saves a Points layer as ``index,axis-0,axis-1[,axis-2],<features…>``.
We read the coordinate columns (``axis-N``, or ``z,y,x`` / ``y,x``) and the
integer ``class`` column. Coordinates are in voxel (data) units.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from scribbleseg.errors import InputError

__all__ = ["read_points_csv"]

_NAMED_AXES = {2: ("y", "x"), 3: ("z", "y", "x")}


def read_points_csv(path: str | os.PathLike[str], *, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """Read point coordinates and classes from a CSV file.

    Parameters
    ----------
    path : path-like
        CSV with a header row.
    ndim : {2, 3}
        Spatial dimensions of the image.

    Returns
    -------
    coords : (N, ndim) float64 ndarray
        Voxel coordinates ``([z,] y, x)``.
    classes : (N,) int64 ndarray
        Class value of each point (>= 1).

    Raises
    ------
    InputError
        If the file is missing or lacks the needed columns or values.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no such points file: {path}")
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read points file {path}: {exc}") from None
    if not rows:
        raise InputError(f"points file {path} has no rows")
    header = {name.strip().lower(): name for name in rows[0] if name is not None}
    axis_columns = [f"axis-{i}" for i in range(ndim)]
    if all(c in header for c in axis_columns):
        # napari writes every layer axis; the last ndim are the spatial ones.
        n_axes = sum(1 for name in header if name.startswith("axis-"))
        axis_columns = [f"axis-{i}" for i in range(n_axes - ndim, n_axes)]
    elif all(c in header for c in _NAMED_AXES[ndim]):
        axis_columns = list(_NAMED_AXES[ndim])
    else:
        raise InputError(
            f"points file {path} needs coordinate columns axis-0..axis-{ndim - 1} (as napari writes them) "
            f"or {','.join(_NAMED_AXES[ndim])}"
        )
    if "class" not in header:
        raise InputError(f"points file {path} needs a 'class' column with the class value of each point")
    try:
        coords = np.array([[float(row[header[c]]) for c in axis_columns] for row in rows], dtype=np.float64)
        raw_classes = np.array([float(row[header["class"]]) for row in rows])
    except (TypeError, ValueError) as exc:
        raise InputError(f"points file {path} has a non-numeric value: {exc}") from None
    if not np.all(np.isfinite(coords)):
        raise InputError(f"points file {path} has non-finite coordinates")
    if not np.all(np.isfinite(raw_classes)) or np.any(raw_classes != np.round(raw_classes)):
        raise InputError(f"points file {path}: 'class' values must be integers")
    classes = raw_classes.astype(np.int64)
    if np.any(classes < 1):
        raise InputError(f"points file {path}: 'class' values must be >= 1 (0 means unlabelled)")
    return coords, classes
