"""napari integration of ScribbleSeg: sample data, the dock widget, the labels writer.

Importing this package is cheap and imports neither napari nor Qt: napari finds the contributions
through the npe2 manifest (``scribbleseg/napari.yaml``), which names the submodules to import
(e.g. ``scribbleseg.napari._widget:ScribbleSegWidget``), and only then are they loaded.

Run ``python -m scribbleseg.napari --sample nuclei2d`` (or ``mri3d``) to open a viewer with a
sample image, its scribbles and the widget.

Modules
-------
``_widget``
    The dock widget: composes the panels and joins their actions.
``_inputs``, ``_classes``, ``_settings``, ``_progress``, ``_outputs``
    The panels (image / scribbles / points; class table; settings -> core configs; training
    controls and loss plot; prediction, model files and export).
``_training``, ``_feed``, ``_workers``
    Training in a napari worker, new strokes sent to it, clean stops.
``_output_layers``, ``_layers``, ``_prediction``
    The prediction and uncertainty layers; layers <-> core arrays; blockwise prediction.
``_model``
    Qt-free bookkeeping (label diffs, user edits of the prediction, view regions).
``_sample_data``, ``_writer``
    npe2 sample data and writer.

Public helper (imported on first use, with napari):

:func:`new_scribbles_on_disk`
    Add a scribbles Labels layer backed by a zarr array on disk: strokes are saved as they are
    painted and survive a crash.
"""

from __future__ import annotations

from typing import Any

__all__ = ["new_scribbles_on_disk"]


def __getattr__(name: str) -> Any:
    if name == "new_scribbles_on_disk":
        from scribbleseg.napari._layers import new_scribbles_on_disk

        return new_scribbles_on_disk
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
