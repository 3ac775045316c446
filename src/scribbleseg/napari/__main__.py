"""Open napari with ScribbleSeg.

Usage::

    python -m scribbleseg.napari [--sample nuclei2d|mri3d]

With ``--sample`` the viewer opens with the sample image and its scribbles (a Labels layer),
scaled to the sample's physical spacing, on a slice that has scribbles. The ScribbleSeg dock
widget is docked on the right.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

import numpy as np

from scribbleseg.napari import _sample_data
from scribbleseg.samples import SAMPLE_NAMES

if TYPE_CHECKING:
    import napari

#: Display name of the dock widget in the manifest (``napari.yaml``).
WIDGET_NAME = "ScribbleSeg"

SAMPLE_LOADERS = {"nuclei2d": _sample_data.nuclei2d, "mri3d": _sample_data.mri3d}


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser of ``python -m scribbleseg.napari``."""
    parser = argparse.ArgumentParser(
        prog="python -m scribbleseg.napari", description="Open napari with ScribbleSeg."
    )
    parser.add_argument("--sample", choices=SAMPLE_NAMES, help="open a sample image with its scribbles")
    return parser


def add_sample_layers(viewer: napari.Viewer, name: str) -> list:
    """Add a sample's image and scribbles to ``viewer`` and show a slice that has scribbles.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer to add the layers to.
    name : str
        One of `scribbleseg.samples.SAMPLE_NAMES`.

    Returns
    -------
    list of napari.layers.Layer
        The added layers, image first; the scribbles layer is made the active layer.
    """
    layers = []
    for data, kwargs, layer_type in SAMPLE_LOADERS[name]():
        layers.append(getattr(viewer, f"add_{layer_type}")(data, **kwargs))
    scribbles = layers[-1]
    if scribbles.data.ndim == 3:
        # Scribbles lie on a few slices only: open on the middle one of those rather than on an
        # arbitrary slice without any strokes.
        scribbled_slices = np.flatnonzero(np.any(scribbles.data, axis=(1, 2)))
        if len(scribbled_slices):
            z = int(scribbled_slices[(len(scribbled_slices) - 1) // 2])
            viewer.dims.set_point(0, z * float(scribbles.scale[0]))
    viewer.layers.selection.active = scribbles
    return layers


def main(argv: list[str] | None = None) -> int:
    """Open a napari viewer (optionally with a sample) and run the Qt event loop."""
    args = build_parser().parse_args(argv)
    import napari

    viewer = napari.Viewer(title="ScribbleSeg")
    if args.sample is not None:
        add_sample_layers(viewer, args.sample)

    # The dock widget comes through the npe2 manifest, as from the Plugins menu.
    viewer.window.add_plugin_dock_widget("scribbleseg", WIDGET_NAME)

    napari.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
