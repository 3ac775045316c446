"""napari layers <-> ScribbleSeg arrays: image sources, annotations, output layers, the view.

These helpers take napari layers (and the viewer) and return core objects; they never build
widgets. Errors a user can fix are raised as :class:`~scribbleseg.errors.ScribbleSegError`
with a message that says what to do.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from scribbleseg.core.annotations import points_to_labels
from scribbleseg.core.volume import ImageSource
from scribbleseg.errors import AnnotationError, InputError
from scribbleseg.napari._model import ChannelStack, Region, view_region

if TYPE_CHECKING:
    import napari
    from napari.layers import Image, Labels, Layer, Points

__all__ = [
    "MAX_PREVIEW_SHAPE",
    "POINT_CLASS_FEATURE",
    "ROLE_KEY",
    "SNAPSHOT_BYTES",
    "annotation_labels",
    "check_scribbles_layer",
    "current_view_region",
    "ensure_prediction_layer",
    "ensure_uncertainty_layer",
    "find_output_layer",
    "image_source",
    "layer_data",
    "new_scribbles_on_disk",
    "points_in_voxels",
    "spatial_shape_of",
]

#: Layer metadata key that marks the layers this plugin writes (``"prediction"``, ``"uncertainty"``).
ROLE_KEY = "scribbleseg_role"
#: Points feature holding each point's class value.
POINT_CLASS_FEATURE = "class"
#: In-memory image data up to this size is copied for training (see :func:`image_source`).
SNAPSHOT_BYTES = 1 << 30
#: Largest live preview per spatial dimensionality; a larger view is cut around its centre.
MAX_PREVIEW_SHAPE = {2: (1024, 1024), 3: (32, 384, 384)}

_OPEN_IMAGE_HINT = "open an image (File > Open) or a sample (File > Open Sample > ScribbleSeg)"


def layer_data(layer: Layer) -> Any:
    """Return the full-resolution data of a layer (level 0 when multiscale); not copied."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def spatial_shape_of(layer: Image) -> tuple[int, ...]:
    """Spatial shape ``([Z,] Y, X)`` of an image layer (an RGB layer's colour axis left out)."""
    shape = tuple(int(s) for s in layer_data(layer).shape)
    return shape[:-1] if layer.rgb else shape


def _spacing(layer: Layer) -> tuple[float, ...]:
    return tuple(abs(float(s)) for s in layer.scale)


def _snapshot(data: Any, budget: list[int]) -> Any:
    """Copy an in-memory array while the budget (bytes) lasts; return other arrays as they are.

    Training reads the copy in its thread, never the layer's own array. Lazy arrays (dask,
    zarr) are read from their store, which the layer does not change.
    """
    if isinstance(data, np.ndarray) and data.nbytes <= budget[0]:
        budget[0] -= data.nbytes
        return np.array(data, copy=True)
    return data


def image_source(layers: Sequence[Image], *, snapshot_bytes: int = SNAPSHOT_BYTES) -> ImageSource:
    """Build the image source of one image layer, an RGB layer, or same-shape channel layers.

    Parameters
    ----------
    layers : sequence of napari.layers.Image
        One layer (grey or RGB), or several grey layers of one shape used as channels, in order.
    snapshot_bytes : int
        In-memory (numpy) layer data up to this many bytes in all is copied, so that the
        training thread never reads a layer's array; larger or lazy data is wrapped as it is.

    Returns
    -------
    ImageSource
        Its spacing is the first layer's ``scale``.

    Raises
    ------
    InputError
        No layer, a layer that is not 2D or 3D, an RGB layer mixed with others, or channel
        layers of different shapes or scales.
    """
    layers = list(layers)
    if not layers:
        raise InputError(f"no image layer is chosen: {_OPEN_IMAGE_HINT}, then choose it under 'image'")
    first = layers[0]
    spacing = _spacing(first)
    budget = [int(snapshot_bytes)]
    if len(layers) == 1:
        data = layer_data(first)
        if first.rgb:
            return ImageSource(_snapshot(data, budget), channel_axis=-1, spacing=spacing)
        if data.ndim not in (2, 3):
            raise InputError(
                f"image layer '{first.name}' has {data.ndim} dimensions (shape {tuple(data.shape)}); "
                "ScribbleSeg segments 2D (Y, X) or 3D (Z, Y, X) images - split other axes into layers "
                "(right-click > Split Stack) and choose the channel layers together"
            )
        return ImageSource(_snapshot(data, budget), spacing=spacing)
    if any(layer.rgb for layer in layers):
        raise InputError("an RGB layer already holds its channels: choose it alone, not with other layers")
    shapes = {layer.name: tuple(int(s) for s in layer_data(layer).shape) for layer in layers}
    if len(set(shapes.values())) != 1:
        listed = ", ".join(f"'{name}' {shape}" for name, shape in shapes.items())
        raise InputError(
            f"the chosen image layers have different shapes ({listed}); channel layers must have one "
            "shape - choose layers of the same image"
        )
    scales = {layer.name: _spacing(layer) for layer in layers}
    if len(set(scales.values())) != 1:
        listed = ", ".join(f"'{name}' {scale}" for name, scale in scales.items())
        raise InputError(
            f"the chosen image layers have different voxel sizes (scale: {listed}); channel layers "
            "must have the same scale - fix it in the layer properties or choose other layers"
        )
    stack = ChannelStack([_snapshot(layer_data(layer), budget) for layer in layers])
    return ImageSource(stack, channel_axis=0, spacing=spacing)


def check_scribbles_layer(layer: Labels | None, spatial_shape: Sequence[int]) -> np.ndarray:
    """Return the scribbles layer's data, checked against the image's spatial shape.

    Raises
    ------
    AnnotationError
        When there is no scribbles layer.
    InputError
        When its shape is not the image's spatial shape.
    """
    if layer is None:
        raise AnnotationError(
            "no scribbles layer: press 'New' next to 'scribbles' to create one, then paint a few strokes "
            "of each class"
        )
    data = layer_data(layer)
    shape = tuple(int(s) for s in data.shape)
    if shape != tuple(spatial_shape):
        raise InputError(
            f"scribbles layer '{layer.name}' has shape {shape} but the image's spatial shape is "
            f"{tuple(spatial_shape)}; choose a labels layer of the image's shape or press 'New'"
        )
    return np.asarray(data)


def points_in_voxels(points: Points | None, image: Image) -> tuple[np.ndarray, np.ndarray] | None:
    """Points in the image's voxel coordinates and their classes (feature ``class``).

    Parameters
    ----------
    points : napari.layers.Points or None
    image : napari.layers.Image
        The (first) image layer; its transform maps world to voxel coordinates.

    Returns
    -------
    (coordinates, classes) or None
        ``(N, ndim)`` float coordinates and ``(N,)`` class values; None without points.

    Raises
    ------
    InputError
        If the points do not have the image's number of spatial dimensions.
    AnnotationError
        If the layer has points but no ``class`` feature.
    """
    if points is None or len(points.data) == 0:
        return None
    ndim = len(spatial_shape_of(image))
    if points.ndim != ndim:
        raise InputError(
            f"points layer '{points.name}' is {points.ndim}D but the image is {ndim}D; choose another "
            "points layer or press 'New'"
        )
    if POINT_CLASS_FEATURE not in points.features:
        raise AnnotationError(
            f"points layer '{points.name}' has no '{POINT_CLASS_FEATURE}' feature: create the points layer "
            "with 'New' (each point then takes the class selected in the class table)"
        )
    coordinates = np.asarray(
        [image.world_to_data(points.data_to_world(p)) for p in np.asarray(points.data)], dtype=np.float64
    )
    classes = np.asarray(points.features[POINT_CLASS_FEATURE])
    return coordinates, classes


def annotation_labels(
    scribbles: np.ndarray,
    points: tuple[np.ndarray, np.ndarray] | None,
    *,
    spacing: Sequence[float],
    point_radius: float,
) -> np.ndarray:
    """Scribbles with every point drawn as a ball of its class where nothing is scribbled.

    Parameters
    ----------
    scribbles : ([Z,] Y, X) ndarray of int
        Not modified (returned as is without points).
    points : (coordinates, classes) or None
        From :func:`points_in_voxels`.
    spacing : sequence of float
        Voxel spacing (shapes the balls).
    point_radius : float
        Ball radius in units of the finest spacing.
    """
    if points is None:
        return scribbles
    balls = points_to_labels(
        points[0], points[1], shape=scribbles.shape, spacing=spacing, radius=point_radius
    )
    dtype = np.result_type(scribbles.dtype, balls.dtype)
    return np.where(scribbles != 0, scribbles, balls).astype(dtype, copy=False)


#: Chunk shape of on-disk scribbles: a brush dab rewrites its chunk(s), so they stay small.
_SCRIBBLE_CHUNKS = {2: (512, 512), 3: (16, 256, 256)}


def new_scribbles_on_disk(
    viewer: napari.Viewer,
    image: Image,
    path: str | os.PathLike[str],
    *,
    name: str = "scribbles",
    max_value: int = 255,
) -> Labels:
    """Add a scribbles Labels layer whose data is a zarr array on disk.

    Every stroke is written into the zarr store as it is painted (napari writes the painted
    region back into the layer's array; zarr replaces each chunk file atomically), so the
    scribbles survive the process being killed. Opening the same ``path`` again continues
    with the scribbles saved there. Training reads the layer and never writes it.

    Parameters
    ----------
    viewer : napari.Viewer
    image : napari.layers.Image
        The image to scribble on: the layer takes its spatial shape, scale and translation.
    path : path-like
        A ``.zarr`` folder. Created (zarr v3, chunked, 0 = unlabelled) when missing; an
        existing zarr array of the image's spatial shape is opened as it is.
    name : str
        Layer name.
    max_value : int
        The largest class value to be painted: uint8 up to 255, else uint16.

    Returns
    -------
    napari.layers.Labels
        The new layer; its ``data`` is the zarr array.

    Raises
    ------
    InputError
        If ``path`` exists but is not a zarr array of the image's spatial shape (it is never
        overwritten), or its folder does not exist.
    """
    import zarr

    from scribbleseg.io.zarr import create_array

    path = pathlib.Path(path)
    shape = spatial_shape_of(image)
    if path.exists():
        try:
            store = zarr.open_array(str(path), mode="r+")
        except Exception as exc:  # a group, a foreign folder or file, corrupt metadata …
            raise InputError(
                f"cannot use {path} for scribbles: it exists and is not a zarr array "
                f"({type(exc).__name__}) - choose a new .zarr path"
            ) from None
        if tuple(store.shape) != shape or store.dtype.kind not in "iu":
            raise InputError(
                f"cannot use {path} for scribbles: it holds a {store.dtype} array of shape "
                f"{tuple(store.shape)}, the image's spatial shape is {shape} - choose a new .zarr path"
            )
    else:
        if not path.parent.is_dir():
            raise InputError(f"cannot create {path}: folder {path.parent} does not exist")
        axes = "ZYX"[-len(shape) :]
        chunks = tuple(min(c, s) for c, s in zip(_SCRIBBLE_CHUNKS[len(shape)], shape, strict=True))
        store = create_array(
            path,
            shape=shape,
            chunks=chunks,
            dtype=np.uint8 if max_value < 256 else np.uint16,
            axes=axes,
            attributes={"axes": axes, "spacing": list(_spacing(image)), "role": "scribbles"},
        )
    layer = viewer.add_labels(store, name=name, opacity=0.8, **_placement(image))
    layer.brush_size = 5
    layer.mode = "paint"
    return layer


def find_output_layer(viewer: napari.Viewer, role: str, spatial_shape: Sequence[int]) -> Layer | None:
    """Return the layer this plugin made for ``role`` with this shape, if still in the viewer."""
    for layer in viewer.layers:
        if layer.metadata.get(ROLE_KEY) == role and tuple(layer.data.shape) == tuple(spatial_shape):
            return layer
    return None


def _placement(reference: Image) -> dict[str, Any]:
    return {"scale": tuple(reference.scale), "translate": tuple(reference.translate)}


def _label_dtype(max_value: int) -> np.dtype:
    return np.dtype(np.uint8) if max_value < 256 else np.dtype(np.uint16 if max_value < 65536 else np.int32)


def ensure_prediction_layer(
    viewer: napari.Viewer,
    reference: Image,
    spatial_shape: Sequence[int],
    *,
    max_value: int,
    below: Layer | None = None,
) -> Labels:
    """Return the persistent, editable ``prediction`` Labels layer (created once, then reused).

    Parameters
    ----------
    viewer : napari.Viewer
    reference : napari.layers.Image
        The image layer whose scale and translation the prediction takes.
    spatial_shape : tuple of int
        Its shape.
    max_value : int
        The largest class value it must hold; an existing layer whose dtype is too small gets a
        wider copy of its data (the layer object stays the same).
    below : napari layer, optional
        Put a new prediction layer just below this one (the scribbles stay visible on top).
    """
    layer = find_output_layer(viewer, "prediction", spatial_shape)
    dtype = _label_dtype(max_value)
    if layer is not None:
        if np.iinfo(layer.data.dtype).max < max_value:
            layer.data = np.asarray(layer.data).astype(dtype)
        return layer
    layer = viewer.add_labels(
        np.zeros(tuple(spatial_shape), dtype=dtype),
        name="prediction",
        opacity=0.45,
        metadata={ROLE_KEY: "prediction"},
        **_placement(reference),
    )
    if below is not None and below in viewer.layers:
        viewer.layers.move(viewer.layers.index(layer), viewer.layers.index(below))
    return layer


def ensure_uncertainty_layer(viewer: napari.Viewer, reference: Image, spatial_shape: Sequence[int]) -> Image:
    """Return the ``uncertainty`` Image layer (normalised entropy: 0 = certain, 1 = undecided)."""
    layer = find_output_layer(viewer, "uncertainty", spatial_shape)
    if layer is not None:
        return layer
    layer = viewer.add_image(
        np.zeros(tuple(spatial_shape), dtype=np.float32),
        name="uncertainty",
        colormap="magma",
        contrast_limits=(0.0, 1.0),
        blending="additive",
        opacity=0.6,
        visible=False,
        metadata={ROLE_KEY: "uncertainty"},
        **_placement(reference),
    )
    # Keep it under the labels layers so that it never hides a stroke.
    viewer.layers.move(viewer.layers.index(layer), 1 if len(viewer.layers) > 1 else 0)
    return layer


def current_view_region(viewer: napari.Viewer, layer: Image, spatial_shape: Sequence[int]) -> Region:
    """Return the region of ``layer`` on screen: the visible part of the slice, or of the volume.

    Parameters
    ----------
    viewer : napari.Viewer
    layer : napari.layers.Image
        The image layer (its ``corner_pixels`` tell what is visible after the last draw).
    spatial_shape : tuple of int
        The image's spatial shape.

    Returns
    -------
    tuple of slice
        At most :data:`MAX_PREVIEW_SHAPE` voxels, around the centre of the view.
    """
    offset = viewer.dims.ndim - layer.ndim
    displayed = [axis - offset for axis in viewer.dims.displayed if axis - offset >= 0]
    corners = np.asarray(layer.corner_pixels, dtype=np.float64)
    if viewer.dims.ndisplay == 3:
        # napari's corners describe a 2D canvas; in the 3D view take the volume (cut around its centre).
        corners = np.zeros_like(corners)
    current = np.asarray(layer.world_to_data(viewer.dims.point), dtype=np.float64)
    ndim = len(spatial_shape)
    return view_region(
        spatial_shape,
        displayed=displayed,
        corner_low=corners[0][-ndim:],
        corner_high=corners[1][-ndim:],
        current=current[-ndim:],
        max_shape=MAX_PREVIEW_SHAPE[ndim],
    )
