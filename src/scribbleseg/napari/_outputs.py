"""Whole-image prediction, model files and export: the widgets (the actions live in the widget)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from magicgui.widgets import ComboBox, FileEdit
from napari.layers import Labels
from qtpy.QtWidgets import QGridLayout, QLabel, QProgressBar, QPushButton, QWidget

from scribbleseg.napari._layers import ROLE_KEY

if TYPE_CHECKING:
    import napari

__all__ = ["OutputsPanel"]


class OutputsPanel(QWidget):
    """Predict / cancel with a progress bar; save and load a model; export a labels layer.

    Attributes
    ----------
    predict_button, cancel_button : QPushButton
    progress : QProgressBar
    model_path : magicgui FileEdit
        The model folder to save to or load from.
    save_button, load_button : QPushButton
    export_layer : magicgui ComboBox
        The Labels layer to export (the prediction by default).
    export_path : magicgui FileEdit
        ``.tif`` / ``.tiff`` or ``.zarr``.
    export_button : QPushButton
    """

    def __init__(self, viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.predict_button = QPushButton("Predict whole image")
        self.predict_button.setToolTip("predict every voxel with the current model, block by block")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self.progress.setFormat("%p%")
        self.model_path = FileEdit(mode="w", filter="ScribbleSeg model folder (*)")
        self.model_path.native.setToolTip("model folder (a new name to save, an existing model to load)")
        self.save_button = QPushButton("Save model")
        self.load_button = QPushButton("Load model")
        self.export_layer = ComboBox(choices=self._labels_choices, nullable=True)
        self.export_layer.tooltip = "the labels layer to export (background class written as 0)"
        self.export_path = FileEdit(mode="w", filter="TIFF or zarr (*.tif *.tiff *.zarr)")
        self.export_path.native.setToolTip("output file: .tif / .tiff, or a .zarr folder")
        self.export_button = QPushButton("Export")

        grid = QGridLayout(self)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.addWidget(self.predict_button, 0, 0, 1, 2)
        grid.addWidget(self.cancel_button, 0, 2)
        grid.addWidget(self.progress, 1, 0, 1, 3)
        grid.addWidget(QLabel("model"), 2, 0)
        grid.addWidget(self.model_path.native, 2, 1, 1, 2)
        grid.addWidget(self.save_button, 3, 1)
        grid.addWidget(self.load_button, 3, 2)
        grid.addWidget(QLabel("export"), 4, 0)
        grid.addWidget(self.export_layer.native, 4, 1, 1, 2)
        grid.addWidget(self.export_path.native, 5, 1, 1, 2)
        grid.addWidget(self.export_button, 6, 2)
        grid.setColumnStretch(1, 1)

        events = viewer.layers.events
        self._watched = [events.inserted, events.removed, events.moved]
        for emitter in self._watched:
            emitter.connect(self.reset_choices)
        self.reset_choices()

    def _labels_choices(self, _widget: Any = None) -> list[tuple[str, Labels]]:
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Labels)]

    def reset_choices(self, _event: Any = None) -> None:
        """Refresh the export choices; default to the prediction layer."""
        self.export_layer.reset_choices()
        if self.export_layer.value is None:
            predictions = [
                layer for _, layer in self._labels_choices() if layer.metadata.get(ROLE_KEY) == "prediction"
            ]
            if predictions:
                self.export_layer.value = predictions[0]

    def set_predicting(self, predicting: bool) -> None:
        """Enable Cancel while predicting, Predict otherwise."""
        self.predict_button.setEnabled(not predicting)
        self.cancel_button.setEnabled(predicting)

    def close_connections(self) -> None:
        """Stop following the viewer (the widget is going away)."""
        for emitter in self._watched:
            emitter.disconnect(self.reset_choices)
        self._watched = []
