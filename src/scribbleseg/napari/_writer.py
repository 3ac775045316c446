"""npe2 writer: a Labels layer to TIFF (``.tif`` / ``.tiff``) or zarr (``.zarr``).

The layer is written as it is (class values unchanged; the widget's Export writes the background
class as 0). The layer's ``scale`` is stored as the spacing. Writing is atomic
(:func:`scribbleseg.io.arrays.write_array`): a failed write leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["write_labels"]


def write_labels(path: str, data: Any, meta: Mapping[str, Any]) -> list[str]:
    """Write one Labels layer; napari calls this from File > Save Selected Layers.

    Parameters
    ----------
    path : str
        Output path ending in ``.tif``, ``.tiff`` or ``.zarr``.
    data : array-like
        The layer's data (level 0 of a multiscale layer is written).
    meta : mapping
        The layer's attributes; ``scale`` becomes the spacing.

    Returns
    -------
    list of str
        The written path, or an empty list when writing failed (the reason is shown as a
        notification).
    """
    from scribbleseg.errors import ScribbleSegError
    from scribbleseg.io.arrays import write_array

    if isinstance(data, list):  # multiscale: the full-resolution level
        data = data[0]
    scale = meta.get("scale")
    spacing = tuple(abs(float(s)) for s in scale) if scale is not None else None
    if spacing is not None and len(spacing) != getattr(data, "ndim", len(spacing)):
        spacing = None
    try:
        written = write_array(path, data, spacing=spacing)
    except ScribbleSegError as exc:
        from napari.utils.notifications import show_error

        show_error(f"ScribbleSeg: cannot write {path}: {exc}")
        return []
    return [str(written)]
