"""Choose the image layer(s), the scribbles Labels layer and an optional Points layer.

The choices follow the viewer's layer list. "New" creates a scribbles or points layer that
fits the chosen image (same spatial shape, scale and translation).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, PushButton, Select
from napari.layers import Image, Labels, Points
from qtpy.QtWidgets import QGridLayout, QLabel, QWidget

from scribbleseg.errors import InputError
from scribbleseg.napari._layers import POINT_CLASS_FEATURE, ROLE_KEY, spatial_shape_of

if TYPE_CHECKING:
    import napari

__all__ = ["InputsPanel"]


def _is_ours(layer: Any) -> bool:
    return ROLE_KEY in layer.metadata


class InputsPanel(QWidget):
    """Image, scribbles and points choices.

    Parameters
    ----------
    viewer : napari.Viewer
    default_class : callable
        Returns the class value new points get (the class selected in the class table).

    Attributes
    ----------
    images : magicgui Select
        Image layers; choose several (ctrl-click) to use them as channels, in list order.
    scribbles : magicgui ComboBox
        Labels layers (the prediction layer is left out).
    points : magicgui ComboBox
        Points layers, or None.
    new_scribbles, new_points : magicgui PushButton
    """

    def __init__(
        self, viewer: napari.Viewer, default_class: Callable[[], int], parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self._default_class = default_class
        self.images = Select(
            choices=self._image_choices,
            tooltip="one image, one RGB image, or several same-shape layers used as channels (ctrl-click)",
        )
        self.images.native.setMaximumHeight(60)
        self.scribbles = ComboBox(choices=self._labels_choices, nullable=True)
        self.scribbles.tooltip = "the Labels layer you paint scribbles in (0 = unlabelled, k = class k)"
        self.points = ComboBox(choices=self._points_choices, nullable=True)
        self.points.tooltip = (
            f"optional: a Points layer whose '{POINT_CLASS_FEATURE}' feature gives each class"
        )
        self.new_scribbles = PushButton(text="New")
        self.new_scribbles.tooltip = "create an empty scribbles layer for the chosen image"
        self.new_points = PushButton(text="New")
        self.new_points.tooltip = "create a points layer; each point takes the selected class"
        self.new_scribbles.changed.connect(self._on_new_scribbles)
        self.new_points.changed.connect(self._on_new_points)
        self._errors: Callable[[Exception], None] | None = None

        grid = QGridLayout(self)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.addWidget(QLabel("image"), 0, 0)
        grid.addWidget(self.images.native, 0, 1, 1, 2)
        grid.addWidget(QLabel("scribbles"), 1, 0)
        grid.addWidget(self.scribbles.native, 1, 1)
        grid.addWidget(self.new_scribbles.native, 1, 2)
        grid.addWidget(QLabel("points"), 2, 0)
        grid.addWidget(self.points.native, 2, 1)
        grid.addWidget(self.new_points.native, 2, 2)
        grid.setColumnStretch(1, 1)

        self._watched: list[Any] = []
        layer_events = viewer.layers.events
        for emitter in (layer_events.inserted, layer_events.removed, layer_events.moved):
            emitter.connect(self._on_layers_changed)
            self._watched.append((emitter, self._on_layers_changed))
        for layer in viewer.layers:
            self._watch_name(layer)
        self.reset_choices()

    # ------------------------------------------------------------------ choices
    def _image_choices(self, _widget: Any = None) -> list[tuple[str, Image]]:
        return [
            (layer.name, layer)
            for layer in self.viewer.layers
            if isinstance(layer, Image) and not _is_ours(layer)
        ]

    def _labels_choices(self, _widget: Any = None) -> list[tuple[str, Labels]]:
        return [
            (layer.name, layer)
            for layer in self.viewer.layers
            if isinstance(layer, Labels) and not _is_ours(layer)
        ]

    def _points_choices(self, _widget: Any = None) -> list[tuple[str, Points]]:
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Points)]

    def reset_choices(self, _event: Any = None) -> None:
        """Refresh the choices from the layer list; pick sensible defaults for empty choices."""
        for widget in (self.images, self.scribbles, self.points):
            widget.reset_choices()
        if not self.images.value and self._image_choices():
            self.images.value = [self._image_choices()[0][1]]
        if self.scribbles.value is None:
            choices = [layer for _, layer in self._labels_choices()]
            named = [layer for layer in choices if layer.name == "scribbles"]
            if named or choices:
                self.scribbles.value = (named or choices)[0]

    def _watch_name(self, layer: Any) -> None:
        layer.events.name.connect(self.reset_choices)
        self._watched.append((layer.events.name, self.reset_choices))

    def _on_layers_changed(self, event: Any) -> None:
        if event.type == "inserted":
            self._watch_name(event.value)
        self.reset_choices()

    def close_connections(self) -> None:
        """Stop following the viewer (the widget is going away)."""
        for emitter, callback in self._watched:
            emitter.disconnect(callback)
        self._watched = []

    # ------------------------------------------------------------------ values
    def image_layers(self) -> list[Image]:
        """Return the chosen image layers, in layer-list order."""
        chosen = self.images.value or []
        return [layer for layer in self.viewer.layers if any(layer is c for c in chosen)]

    def scribbles_layer(self) -> Labels | None:
        """Return the chosen scribbles layer, or None."""
        return self.scribbles.value

    def points_layer(self) -> Points | None:
        """Return the chosen points layer, or None."""
        return self.points.value

    # ------------------------------------------------------------------ creation
    def set_error_handler(self, handler: Callable[[Exception], None]) -> None:
        """Where errors of the "New" buttons go (the widget shows them as notifications)."""
        self._errors = handler

    def _first_image(self) -> Image:
        layers = self.image_layers()
        if not layers:
            raise InputError(
                "no image layer is chosen: open an image (File > Open) or a sample "
                "(File > Open Sample > ScribbleSeg) first"
            )
        return layers[0]

    def create_scribbles(self) -> Labels:
        """Add an empty scribbles layer fitting the first chosen image, and choose it."""
        image = self._first_image()
        layer = self.viewer.add_labels(
            np.zeros(spatial_shape_of(image), dtype=np.uint8),
            name="scribbles",
            scale=tuple(image.scale),
            translate=tuple(image.translate),
            opacity=0.8,
        )
        layer.selected_label = self._default_class()
        layer.brush_size = 5
        layer.mode = "paint"
        self.reset_choices()
        self.scribbles.value = layer
        return layer

    def create_points(self) -> Points:
        """Add an empty points layer (feature ``class``) fitting the first chosen image, and choose it."""
        image = self._first_image()
        layer = self.viewer.add_points(
            ndim=len(spatial_shape_of(image)),
            name="points",
            scale=tuple(image.scale),
            translate=tuple(image.translate),
            features={POINT_CLASS_FEATURE: np.zeros(0, dtype=np.int64)},
            feature_defaults={POINT_CLASS_FEATURE: self._default_class()},
            size=6,
        )
        layer.mode = "add"
        self.reset_choices()
        self.points.value = layer
        return layer

    def _on_new_scribbles(self, _value: Any = None) -> None:
        try:
            self.create_scribbles()
        except Exception as exc:
            if self._errors is None:
                raise
            self._errors(exc)

    def _on_new_points(self, _value: Any = None) -> None:
        try:
            self.create_points()
        except Exception as exc:
            if self._errors is None:
                raise
            self._errors(exc)
