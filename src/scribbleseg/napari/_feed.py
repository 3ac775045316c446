"""Hand new strokes and points to a running trainer, from the main thread.

The trainer never reads a layer. :class:`AnnotationFeed` listens to the scribbles layer
(``paint``: strokes, fills, polygons; ``data``: new data) and the points layer, and a little
later (the events of one stroke are coalesced) diffs the annotations against what the trainer
already knows (:class:`~scribbleseg.napari._model.LabelSync`); only the changed region goes
to ``Trainer.add_labels``. A slow poll also catches undo / redo, which emit no ``paint`` event;
it reads the whole layer, so its interval grows with what a read costs (at most
``1 / POLL_DUTY`` of the main thread's time goes to it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QObject, QTimer

from scribbleseg.napari._layers import annotation_labels, layer_data, points_in_voxels
from scribbleseg.napari._model import LabelSync

if TYPE_CHECKING:
    from napari.layers import Image, Labels, Points

    from scribbleseg.core.engine import Trainer

__all__ = ["AnnotationFeed"]

#: Delay (ms) between a paint event and the diff, so one stroke is sent once.
COALESCE_MS = 150
#: Interval (ms) of the poll that catches undo / redo and direct writes to the data.
POLL_MS = 1000
#: The poll waits at least this many times as long as the last full read and diff took.
POLL_DUTY = 20


class AnnotationFeed(QObject):
    """Sends the user's changes to a trainer's labels, from its creation until :meth:`close`.

    Changes made while the trainer is not running are queued by the trainer and applied when
    it runs again.

    Parameters
    ----------
    trainer : Trainer
        Receives ``add_labels(region, labels)``.
    sync : LabelSync
        The labels the trainer was built from.
    scribbles : napari.layers.Labels
    points : napari.layers.Points or None
    image : napari.layers.Image
        Maps point positions to voxels.
    spacing : sequence of float
        Voxel spacing (point balls).
    point_radius : float
        Ball radius of a point, in units of the finest spacing.
    on_unknown_classes : callable
        Called with class values the trainer cannot learn (painted after training started).
    on_error : callable
        Called with an exception raised while reading the annotations (e.g. a bad point).
    """

    def __init__(
        self,
        trainer: Trainer,
        sync: LabelSync,
        *,
        scribbles: Labels,
        points: Points | None,
        image: Image,
        spacing: Sequence[float],
        point_radius: float,
        on_unknown_classes: Callable[[tuple[int, ...]], None],
        on_error: Callable[[Exception], None],
    ) -> None:
        super().__init__()
        self.trainer = trainer
        self.sync = sync
        self._scribbles = scribbles
        self._points = points
        self._image = image
        self._spacing = tuple(spacing)
        self._point_radius = point_radius
        self._on_unknown = on_unknown_classes
        self._on_error = on_error
        self._reported: set[int] = set()
        self.sent_regions = 0
        self._coalesce = QTimer(self)
        self._coalesce.setSingleShot(True)
        self._coalesce.setInterval(COALESCE_MS)
        self._coalesce.timeout.connect(self.flush)
        self._poll = QTimer(self)
        self._poll.setInterval(POLL_MS)
        self._poll.timeout.connect(self._poll_flush)
        self._connections: list[tuple[Any, Callable[..., None]]] = [
            (scribbles.events.paint, self._schedule),
            (scribbles.events.data, self._schedule),
        ]
        if points is not None:
            self._connections += [
                (points.events.data, self._schedule),
                (points.events.features, self._schedule),
            ]
        for emitter, callback in self._connections:
            emitter.connect(callback)
        self._poll.start()

    def _schedule(self, _event: Any = None) -> None:
        self._coalesce.start()

    def current_labels(self) -> np.ndarray:
        """Return the annotations now: scribbles, and point balls where nothing is scribbled."""
        scribbles = np.asarray(layer_data(self._scribbles))
        points = None
        if self._points is not None:
            points = points_in_voxels(self._points, self._image)
        return annotation_labels(scribbles, points, spacing=self._spacing, point_radius=self._point_radius)

    def _poll_flush(self) -> None:
        started = time.perf_counter()
        self.flush()
        cost_ms = 1000.0 * (time.perf_counter() - started)
        self._poll.setInterval(max(POLL_MS, int(POLL_DUTY * cost_ms)))

    @property
    def poll_interval_ms(self) -> int:
        """Milliseconds between two polls of the whole layer (grows with the layer's size)."""
        return int(self._poll.interval())

    def flush(self) -> bool:
        """Send what changed since the last flush; True if something was sent."""
        try:
            current = self.current_labels()
            if tuple(current.shape) != self.sync.shape:
                return False  # the layer's data was replaced by another shape: Train again to use it
            change = self.sync.changes(current)
        except Exception as exc:  # a bad point or layer: report it, keep training on what we have
            self._on_error(exc)
            return False
        if change is None:
            return False
        region, block, unknown = change
        new_unknown = tuple(v for v in unknown if v not in self._reported)
        if new_unknown:
            self._reported.update(new_unknown)
            self._on_unknown(new_unknown)
        self.trainer.add_labels(region, block)
        self.sent_regions += 1
        return True

    def close(self) -> None:
        """Stop listening; changes not flushed yet are not sent."""
        self._coalesce.stop()
        self._poll.stop()
        for emitter, callback in self._connections:
            emitter.disconnect(callback)
        self._connections = []
