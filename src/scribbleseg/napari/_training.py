"""Training from the widget: build the trainer, run it in a worker, show its previews.

:class:`TrainingController` owns the trainer, its worker and the
:class:`~scribbleseg.napari._feed.AnnotationFeed`. The worker only runs ``Trainer.run``;
every layer is read and written here, on the main thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QObject, QTimer, Signal

from scribbleseg.core.annotations import labels_to_target
from scribbleseg.core.engine import Trainer, TrainUpdate
from scribbleseg.core.inference import resolve_device
from scribbleseg.errors import ConfigError, InputError
from scribbleseg.napari._feed import AnnotationFeed
from scribbleseg.napari._layers import (
    annotation_labels,
    check_scribbles_layer,
    current_view_region,
    image_source,
    points_in_voxels,
)
from scribbleseg.napari._model import LabelSync, normalised_entropy
from scribbleseg.napari._notify import report_error, show_info, show_warning
from scribbleseg.napari._workers import BackgroundRun

if TYPE_CHECKING:
    import napari

    from scribbleseg.core.config import ModelConfig
    from scribbleseg.core.models import ScribbleNet
    from scribbleseg.napari._classes import ClassTable
    from scribbleseg.napari._inputs import InputsPanel
    from scribbleseg.napari._output_layers import OutputLayers
    from scribbleseg.napari._progress import TrainingPanel
    from scribbleseg.napari._settings import SettingsPanel

__all__ = ["TrainingController"]

#: Delay (ms) after the view moved before the preview region follows (one update per gesture).
VIEW_DEBOUNCE_MS = 250


@dataclass(frozen=True)
class _Shown:
    """A training record and, with a preview, its uncertainty (computed in the worker)."""

    update: TrainUpdate
    uncertainty: np.ndarray | None


def _with_uncertainty(trainer: Trainer) -> Iterator[_Shown]:
    for update in trainer.run():
        preview = update.preview
        yield _Shown(update, normalised_entropy(preview.probabilities) if preview is not None else None)


class TrainingController(QObject):
    """Starts, follows and stops training for the widget.

    Parameters
    ----------
    viewer : napari.Viewer
    inputs : InputsPanel
    classes : ClassTable
    settings : SettingsPanel
    panel : TrainingPanel
    outputs : OutputLayers
    init_model : callable
        Returns a model to warm-start a new trainer from (e.g. a loaded one), or None.

    Attributes
    ----------
    trainer : Trainer or None
        The current trainer (kept after a run: Train again continues from its weights).
    update_received : Signal(object)
        Every :class:`TrainUpdate`, after it is shown.
    preview_written : Signal(int)
        The step of a preview just written into the prediction layer.
    running_changed : Signal(bool)
    """

    update_received = Signal(object)
    preview_written = Signal(int)
    running_changed = Signal(bool)

    def __init__(
        self,
        viewer: napari.Viewer,
        *,
        inputs: InputsPanel,
        classes: ClassTable,
        settings: SettingsPanel,
        panel: TrainingPanel,
        outputs: OutputLayers,
        init_model: Callable[[], ScribbleNet | None],
    ) -> None:
        super().__init__()
        self.viewer = viewer
        self.inputs = inputs
        self.classes = classes
        self.settings = settings
        self.panel = panel
        self.outputs = outputs
        self._init_model = init_model
        self.trainer: Trainer | None = None
        self.feed: AnnotationFeed | None = None
        self.run: BackgroundRun | None = None
        self.last_update: TrainUpdate | None = None
        self._key: tuple[Any, ...] | None = None
        self._image_layer: Any = None
        self._region: tuple[slice, ...] | None = None
        self._closed = False
        self._view_timer = QTimer(self)
        self._view_timer.setSingleShot(True)
        self._view_timer.setInterval(VIEW_DEBOUNCE_MS)
        self._view_timer.timeout.connect(self.follow_view)
        # napari 0.9 moved the camera to viewer.scene.camera (viewer.camera is deprecated there).
        camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
        self._view_events = [
            camera.events.center,
            camera.events.zoom,
            viewer.dims.events.current_step,
            viewer.dims.events.ndisplay,
            viewer.dims.events.order,
        ]
        for emitter in self._view_events:
            emitter.connect(self._on_view_changed)

    # ------------------------------------------------------------------ state
    @property
    def running(self) -> bool:
        """True from Train until the run's end has been handled here, in the main thread.

        The worker thread ends a moment before its ``finished`` signal reaches the main thread;
        until then the run still counts as running, so Train stays disabled and a new run cannot
        start and then be cleared by the old run's end.
        """
        return self.run is not None

    def forget(self) -> None:
        """Drop the trainer (e.g. after a model was loaded); the next Train builds a new one."""
        if self.running:
            raise RuntimeError("cannot forget the trainer while it runs")
        self._close_feed()
        self.trainer = None
        self._key = None

    # ------------------------------------------------------------------ start
    def start(self) -> bool:
        """Train on the current inputs; True if a run started (failures become notifications)."""
        if self.running or self._closed:
            return False
        try:
            self._start()
        except Exception as exc:
            report_error(exc, "starting training")
            return False
        return True

    def _start(self) -> None:
        image_layers = self.inputs.image_layers()
        # Checks the layers without copying them; a new trainer gets its own copy below.
        source = image_source(image_layers, snapshot_bytes=0)
        scribbles_layer = self.inputs.scribbles_layer()
        scribbles = check_scribbles_layer(scribbles_layer, source.spatial_shape)
        assert scribbles_layer is not None
        points_layer = self.inputs.points_layer()
        points = points_in_voxels(points_layer, image_layers[0])
        try:
            configs = self.settings.to_config(spatial_dims=source.spatial_dims)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (change it under Settings > Advanced)") from None
        try:
            resolve_device(configs.train.device)
        except ValueError as exc:
            raise InputError(f"{exc} (Advanced > device)") from None
        labels = annotation_labels(
            scribbles, points, spacing=source.spacing, point_radius=configs.train.point_radius
        )
        present = [int(v) for v in np.unique(labels) if v != 0]
        self.classes.merge_values(present)
        class_map = self.classes.class_map()
        key = (
            tuple(id(layer) for layer in image_layers),
            id(scribbles_layer),
            id(points_layer),
            source.shape,
            class_map,
            configs,
        )
        if self.trainer is None or key != self._key:
            target = labels_to_target(
                labels,
                spacing=source.spacing,
                class_values=class_map.values,
                class_names=class_map.names,
                background=class_map.background,
                spatial_shape=source.spatial_shape,
            )
            trainer = Trainer(
                image_source(image_layers),
                target,
                model_config=configs.model,
                loss_config=configs.loss,
                train_config=configs.train,
                init_model=self._warm_start_model(
                    configs.model, source.n_channels, source.spatial_dims, len(class_map.values)
                ),
            )
            self._close_feed()
            self.trainer, self._key = trainer, key
            self.feed = AnnotationFeed(
                trainer,
                LabelSync(labels, class_map.values),
                scribbles=scribbles_layer,
                points=points_layer,
                image=image_layers[0],
                spacing=source.spacing,
                point_radius=configs.train.point_radius,
                on_unknown_classes=self._on_unknown_classes,
                on_error=lambda exc: report_error(exc, "reading the scribbles"),
            )
            self.panel.history.clear()
        assert self.trainer is not None and self.feed is not None
        self.feed.flush()  # strokes painted since the last run
        self.outputs.prepare(
            image_layers[0], source.spatial_shape, max_value=max(class_map.values), below=scribbles_layer
        )
        self._image_layer = image_layers[0]
        self._region = None
        self.follow_view()
        trainer = self.trainer
        self.panel.start_run()
        self.run = BackgroundRun(
            lambda: _with_uncertainty(trainer),
            on_yield=self._on_yield,
            on_error=self._on_error,
            on_finished=self._on_finished,
            on_stop=trainer.stop,
        )
        self.panel.set_running(True)
        self.running_changed.emit(True)

    def _warm_start_model(
        self, config: ModelConfig, channels: int, spatial_dims: int, num_classes: int
    ) -> ScribbleNet | None:
        """Return the previous (or a loaded) model if it fits the new run, to go on from it."""
        candidates = [self.trainer.model if self.trainer is not None else None, self._init_model()]
        wanted = (channels, spatial_dims, num_classes, config.resolved_features)
        for model in candidates:
            if (
                model is not None
                and (
                    model.in_channels,
                    model.spatial_dims,
                    model.num_classes,
                    model.config.resolved_features,
                )
                == wanted
            ):
                return model
        return None

    def _on_unknown_classes(self, values: tuple[int, ...]) -> None:
        listed = ", ".join(str(v) for v in values)
        show_warning(
            f"ScribbleSeg: class {listed} was painted after training started and is not learnt yet; "
            "press Stop, then Train, to include it"
        )

    # ------------------------------------------------------------------ view
    def _on_view_changed(self, _event: Any = None) -> None:
        if self.running:
            self._view_timer.start()

    def follow_view(self) -> None:
        """Point the trainer's preview at what the viewer shows now."""
        if self.trainer is None or self._image_layer is None or self._image_layer not in self.viewer.layers:
            return
        region = current_view_region(self.viewer, self._image_layer, self.trainer.source.spatial_shape)
        if region != self._region:
            self._region = region
            self.trainer.set_preview_region(region)

    # ------------------------------------------------------------------ records
    def _on_yield(self, shown: _Shown) -> None:
        if self._closed:
            return
        update = shown.update
        self.last_update = update
        self.panel.show_update(update)
        if update.message:
            show_warning(f"ScribbleSeg: {update.message}")
        preview = update.preview
        if preview is not None and self.outputs.write(preview.region, preview.labels, shown.uncertainty):
            self.preview_written.emit(preview.step)
        self.update_received.emit(update)

    def _on_error(self, exc: Exception) -> None:
        if not self._closed:
            report_error(exc, "training")

    def _on_finished(self) -> None:
        if self._closed:
            return
        self.run = None
        self.panel.set_running(False)
        if self.last_update is not None:
            self.panel.show_finished(self.last_update)
        self.running_changed.emit(False)

    # ------------------------------------------------------------------ stop
    def stop(self) -> None:
        """Ask training to stop; honoured after the current step (returns at once)."""
        if self.run is not None:
            self.run.stop()

    def apply_corrections(self) -> int:
        """Turn edits of the prediction layer into scribbles, then go on training.

        Returns
        -------
        int
            Voxels added to the scribbles.
        """
        scribbles = self.inputs.scribbles_layer()
        if scribbles is None or self.outputs.prediction is None:
            show_warning("ScribbleSeg: nothing to correct yet: train first, then edit the prediction layer")
            return 0
        added = self.outputs.corrections_to_scribbles(scribbles)
        if added == 0:
            show_info(
                "ScribbleSeg: no corrections found: paint the right class into the prediction layer "
                "where it is wrong, then press the button"
            )
            return 0
        show_info(f"ScribbleSeg: {added} corrected voxels added to the scribbles")
        if self.feed is not None:
            self.feed.flush()
        if self.trainer is not None and not self.running:
            self.start()
        return added

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop the worker and wait for its thread to end (the widget or the viewer closes)."""
        if self._closed:
            return
        self._closed = True
        self._view_timer.stop()
        for emitter in self._view_events:
            emitter.disconnect(self._on_view_changed)
        self._close_feed()
        if self.run is not None:
            self.run.disconnect()
            self.run.stop()
            self.run.wait(timeout)

    def _close_feed(self) -> None:
        if self.feed is not None:
            self.feed.close()
            self.feed = None
