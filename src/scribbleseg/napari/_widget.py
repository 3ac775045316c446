"""The ScribbleSeg dock widget: small panels composed, and the actions that join them.

Panels (attributes, so tests and scripts set values without clicking):

- ``inputs`` (:class:`~scribbleseg.napari._inputs.InputsPanel`): image layer(s), scribbles, points;
- ``classes`` (:class:`~scribbleseg.napari._classes.ClassTable`): value, name, colour, background;
- ``settings`` (:class:`~scribbleseg.napari._settings.SettingsPanel`): ``to_config()`` builds the
  core configurations;
- ``training_panel`` (:class:`~scribbleseg.napari._progress.TrainingPanel`) driven by
  ``training`` (:class:`~scribbleseg.napari._training.TrainingController`);
- ``outputs_panel`` (:class:`~scribbleseg.napari._outputs.OutputsPanel`): whole-image prediction,
  model files, export.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QEvent, QObject, Signal
from qtpy.QtWidgets import QFileDialog, QGroupBox, QVBoxLayout, QWidget

from scribbleseg.core.config import LossConfig, TrainConfig
from scribbleseg.errors import InputError, ModelFileError
from scribbleseg.io.arrays import write_array
from scribbleseg.io.checkpoint import load_model, save_model
from scribbleseg.napari._classes import ClassTable
from scribbleseg.napari._inputs import InputsPanel
from scribbleseg.napari._layers import POINT_CLASS_FEATURE, image_source, layer_data
from scribbleseg.napari._model import labels_for_export
from scribbleseg.napari._notify import report_error, show_info, show_warning
from scribbleseg.napari._output_layers import OutputLayers
from scribbleseg.napari._outputs import OutputsPanel
from scribbleseg.napari._prediction import BlockPrediction, predict_blocks
from scribbleseg.napari._progress import TrainingPanel
from scribbleseg.napari._settings import SettingsPanel
from scribbleseg.napari._training import TrainingController
from scribbleseg.napari._workers import BackgroundRun

if TYPE_CHECKING:
    import napari

    from scribbleseg.core.models import ScribbleNet
    from scribbleseg.io.checkpoint import ModelMetadata

__all__ = ["ScribbleSegWidget"]

#: Classes offered for a scribbles layer that has none yet.
_DEFAULT_CLASSES = {1: "background", 2: "object"}


class _CloseWatcher(QObject):
    """Calls back once when the window around a widget closes, or the widget leaves its dock.

    It filters the events of the widget and of its ancestors (re-read when a parent changes):
    ``Close`` on the top-level window, or the widget's parent set to None (napari's "x" on a
    dock widget), mean the widget is going away. Hiding a dock is not closing it.
    """

    def __init__(self, widget: QWidget, on_close: Callable[[], None]) -> None:
        super().__init__(widget)
        self._widget = widget
        self._on_close = on_close
        self._watched: list[QObject] = []
        self._had_parent = False
        self._done = False
        widget.installEventFilter(self)

    def _rewatch(self) -> None:
        for obj in self._watched:
            with contextlib.suppress(RuntimeError):  # already deleted by Qt
                obj.removeEventFilter(self)
        self._watched = []
        parent = self._widget.parent()
        while parent is not None:
            parent.installEventFilter(self)
            self._watched.append(parent)
            parent = parent.parent()

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:
        kind = event.type()
        if kind == QEvent.Type.ParentChange:
            if obj is self._widget and self._widget.parent() is None and self._had_parent:
                self._fire()
            else:
                self._had_parent = self._had_parent or self._widget.parent() is not None
                self._rewatch()
        elif kind == QEvent.Type.Close and self._watched and obj is self._watched[-1]:
            self._fire()
        return False

    def _fire(self) -> None:
        if not self._done:
            self._done = True
            self._on_close()


def _shutdown_on_destroy(shutdown: Callable[[], None], *_: Any) -> None:
    """Last resort when Qt deletes the widget first (connected without a reference to it)."""
    with contextlib.suppress(RuntimeError):
        shutdown()


class ScribbleSegWidget(QWidget):
    """Train a network from scribbles, live, and use it.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        Given by napari when the widget is opened from the Plugins menu.

    Attributes
    ----------
    inputs, classes, settings, training_panel, outputs_panel
        The panels (see the module docstring).
    training : TrainingController
    output_layers : OutputLayers
        The prediction and uncertainty layers.
    loaded : (ScribbleNet, ModelMetadata) or None
        The model loaded from a file, if any.
    prediction_finished : Signal()
        Emitted when a whole-image prediction ends (done, cancelled or failed).
    """

    prediction_finished = Signal()

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.loaded: tuple[ScribbleNet, ModelMetadata] | None = None
        # A one-item list rather than an attribute, so the shutdown closure can read it without
        # holding the widget.
        self._prediction_slot: list[BackgroundRun | None] = [None]
        self._closed = False
        self._class_source: Any = None

        self.classes = ClassTable()
        self.inputs = InputsPanel(napari_viewer, default_class=self._default_class)
        self.inputs.set_error_handler(lambda exc: report_error(exc, "creating the layer"))
        self.settings = SettingsPanel()
        self.training_panel = TrainingPanel()
        self.outputs_panel = OutputsPanel(napari_viewer)
        self.output_layers = OutputLayers(napari_viewer)
        self.training = TrainingController(
            napari_viewer,
            inputs=self.inputs,
            classes=self.classes,
            settings=self.settings,
            panel=self.training_panel,
            outputs=self.output_layers,
            init_model=lambda: self.loaded[0] if self.loaded is not None else None,
        )

        layout = QVBoxLayout(self)
        for title, panel in (
            ("Data", self.inputs),
            ("Classes", self.classes),
            ("Settings", self.settings),
            ("Training", self.training_panel),
            ("Prediction and export", self.outputs_panel),
        ):
            box = QGroupBox(title)
            box_layout = QVBoxLayout(box)
            box_layout.setContentsMargins(6, 6, 6, 6)
            box_layout.addWidget(panel)
            layout.addWidget(box)
        layout.addStretch(1)

        self.training_panel.train_button.clicked.connect(self.training.start)
        self.training_panel.stop_button.clicked.connect(self.training.stop)
        self.training_panel.corrections_button.clicked.connect(self.training.apply_corrections)
        self.training.running_changed.connect(self._on_running_changed)
        self.outputs_panel.predict_button.clicked.connect(self.predict)
        self.outputs_panel.cancel_button.clicked.connect(self.cancel_prediction)
        self.outputs_panel.save_button.clicked.connect(lambda: self.save_model())
        self.outputs_panel.load_button.clicked.connect(self._on_load_clicked)
        self.outputs_panel.export_button.clicked.connect(lambda: self.export())
        self.classes.class_selected.connect(self._on_class_selected)
        self.inputs.scribbles.changed.connect(self._on_scribbles_changed)
        self._on_scribbles_changed(self.inputs.scribbles_layer())

        self._watcher = _CloseWatcher(self, self.shutdown)
        self.destroyed.connect(functools.partial(_shutdown_on_destroy, self._shutdown_parts()))

    @property
    def prediction_run(self) -> BackgroundRun | None:
        """The running whole-image prediction, or None."""
        return self._prediction_slot[0]

    @prediction_run.setter
    def prediction_run(self, run: BackgroundRun | None) -> None:
        self._prediction_slot[0] = run

    # ------------------------------------------------------------------ classes
    def _default_class(self) -> int:
        selected = self.classes.selected_value()
        if selected is not None:
            return selected
        scribbles = self.inputs.scribbles_layer()
        return int(scribbles.selected_label) if scribbles is not None else 1

    def _on_scribbles_changed(self, layer: Any) -> None:
        """Fill the class table from a newly chosen scribbles layer (its values and metadata)."""
        if layer is None or layer is self._class_source:
            return
        self._class_source = layer
        metadata = layer.metadata
        names = {int(k): str(v) for k, v in dict(metadata.get("class_names") or {}).items()}
        values = set(names) | {int(v) for v in np.unique(np.asarray(layer_data(layer))) if v != 0}
        background = metadata.get("background_class")
        if not values:
            names, values, background = dict(_DEFAULT_CLASSES), set(_DEFAULT_CLASSES), 1
        self.classes.set_classes(values, names, background if background in values else None)
        self.classes.set_colour_source(layer.get_color)

    def _on_class_selected(self, value: int) -> None:
        scribbles = self.inputs.scribbles_layer()
        if scribbles is not None:
            scribbles.selected_label = value
        points = self.inputs.points_layer()
        if points is not None and POINT_CLASS_FEATURE in points.features:
            defaults = points.feature_defaults.copy()
            defaults[POINT_CLASS_FEATURE] = value
            points.feature_defaults = defaults

    def _on_running_changed(self, running: bool) -> None:
        self.outputs_panel.predict_button.setEnabled(not running and self.prediction_run is None)
        self.outputs_panel.save_button.setEnabled(not running)
        self.outputs_panel.load_button.setEnabled(not running)

    # ------------------------------------------------------------------ model
    def current_model(self) -> tuple[ScribbleNet, ModelMetadata] | None:
        """Return the model Predict and Save use: the trainer's, else the loaded one."""
        trainer = self.training.trainer
        if trainer is not None:
            return trainer.model, trainer.metadata()
        return self.loaded

    def predict(self) -> bool:
        """Predict the whole image in a worker, block by block; True if it started."""
        if self.prediction_run is not None or self._closed:
            return False
        try:
            if self.training.running:
                raise InputError("training is running: press Stop first, then Predict whole image")
            current = self.current_model()
            if current is None:
                raise InputError("no model yet: press Train (or Load model) first")
            model, metadata = current
            layers = self.inputs.image_layers()
            source = image_source(layers)
            if (source.n_channels, source.spatial_dims) != (metadata.in_channels, metadata.spatial_dims):
                raise InputError(
                    f"the model was trained on {metadata.spatial_dims}D images with {metadata.in_channels} "
                    f"channel(s) but the chosen image is {source.spatial_dims}D with {source.n_channels}; "
                    "choose matching image layers"
                )
            self.output_layers.prepare(
                layers[0],
                source.spatial_shape,
                max_value=max(metadata.class_values),
                below=self.inputs.scribbles_layer(),
            )
            device = self.settings.device.value
            refinement = self.settings.crf_refinement.value  # the setting shown applies, as in training
            values = metadata.class_values
            self.outputs_panel.progress.setValue(0)
            self.prediction_run = BackgroundRun(
                lambda: predict_blocks(model, source, values, device=device, crf_refinement=refinement),
                on_yield=self._on_block,
                on_error=lambda exc: None if self._closed else report_error(exc, "prediction"),
                on_finished=self._on_prediction_finished,
            )
        except Exception as exc:
            report_error(exc, "starting the prediction")
            return False
        self.outputs_panel.set_predicting(True)
        self.training_panel.train_button.setEnabled(False)
        return True

    def _on_block(self, block: BlockPrediction) -> None:
        if self._closed:
            return
        self.output_layers.write(block.region, block.labels, block.uncertainty)
        self.outputs_panel.progress.setValue(round(100 * block.done / block.total))

    def _on_prediction_finished(self) -> None:
        if self._closed:
            return
        self.prediction_run = None
        self.outputs_panel.set_predicting(False)
        self.training_panel.train_button.setEnabled(not self.training.running)
        self.prediction_finished.emit()

    def cancel_prediction(self) -> None:
        """Stop the whole-image prediction after the current block."""
        if self.prediction_run is not None:
            self.prediction_run.stop()

    def save_model(self, path: str | None = None) -> bool:
        """Save the current model as a model folder (default: the path in the widget)."""
        try:
            if self.training.running:
                raise InputError("training is running: press Stop first, then Save model")
            current = self.current_model()
            if current is None:
                raise InputError("no model to save yet: press Train first")
            target = str(path or self.outputs_panel.model_path.value or "")
            if target in ("", "."):
                raise InputError("choose where to save the model (the 'model' path) first")
            saved = save_model(target, current[0], current[1])
        except Exception as exc:
            report_error(exc, "saving the model")
            return False
        show_info(f"ScribbleSeg: model saved to {saved}")
        return True

    def _on_load_clicked(self) -> None:
        """Load the model at the 'model' path, or ask for a model folder when the path is empty."""
        if str(self.outputs_panel.model_path.value or "") in ("", "."):
            folder = QFileDialog.getExistingDirectory(self, "Load a ScribbleSeg model folder")
            if not folder:
                return
            self.outputs_panel.model_path.value = folder
        self.load_model()

    def load_model(self, path: str | None = None) -> bool:
        """Load a model folder; Predict then uses it, and Train goes on from it when it fits."""
        try:
            if self.training.running:
                raise InputError("training is running: press Stop first, then Load model")
            source = str(path or self.outputs_panel.model_path.value or "")
            if source in ("", "."):
                raise ModelFileError("choose the model folder to load (the 'model' path) first")
            model, metadata = load_model(source, device="cpu")
            loss, train = LossConfig.from_dict(metadata.loss), TrainConfig.from_dict(metadata.train)
            self.training.forget()
            self.loaded = (model, metadata)
            self.classes.set_classes(
                metadata.class_values,
                dict(zip(metadata.class_values, metadata.class_names, strict=True)),
                metadata.background_class,
            )
            notes = self.settings.set_config(metadata.model, loss, train)
        except Exception as exc:
            report_error(exc, "loading the model")
            return False
        show_info(f"ScribbleSeg: loaded model with classes {', '.join(metadata.class_names)}")
        if notes:
            show_warning(f"ScribbleSeg: the model's settings did not all fit: {'; '.join(notes)}")
        return True

    def export(self, path: str | None = None, layer: Any = None) -> bool:
        """Write a Labels layer (default: the chosen one) to TIFF or zarr, background as 0."""
        try:
            layer = layer or self.outputs_panel.export_layer.value
            if layer is None:
                raise InputError("no labels layer to export: train or predict first, or choose a layer")
            target = str(path or self.outputs_panel.export_path.value or "")
            if not target.lower().endswith((".tif", ".tiff", ".zarr")):
                raise InputError(f"export to a .tif, .tiff or .zarr path, not {target!r}")
            data = labels_for_export(layer_data(layer), self.classes.background())
            spacing = tuple(abs(float(s)) for s in layer.scale)
            written = write_array(target, data, spacing=spacing)
        except Exception as exc:
            report_error(exc, "exporting")
            return False
        show_info(f"ScribbleSeg: exported '{layer.name}' to {written}")
        return True

    # ------------------------------------------------------------------ closing
    def _shutdown_parts(self) -> Callable[[], None]:
        """Return a shutdown function that holds no reference to this widget (for ``destroyed``)."""
        training, slot = self.training, self._prediction_slot
        closers = (self.inputs.close_connections, self.outputs_panel.close_connections)

        def shutdown() -> None:
            training.shutdown()
            run = slot[0]
            if run is not None:
                run.disconnect()
                run.stop()
                run.wait(5.0)
            for close in closers:
                with contextlib.suppress(Exception):
                    close()

        return shutdown

    def shutdown(self) -> None:
        """Stop training and prediction and wait for their threads; stop following the viewer."""
        if self._closed:
            return
        self._closed = True
        self._shutdown_parts()()
        self.prediction_run = None
