"""The annotation feed: strokes reach the trainer, and its poll of the whole layer stays cheap."""

from __future__ import annotations

import numpy as np
import pytest

from scribbleseg.core.annotations import labels_to_target
from scribbleseg.core.config import TrainConfig
from scribbleseg.core.engine import Trainer
from scribbleseg.core.volume import ImageSource
from scribbleseg.napari import _feed
from scribbleseg.napari._feed import POLL_MS, AnnotationFeed
from scribbleseg.napari._model import LabelSync

pytestmark = pytest.mark.gui


def _feed_for(viewer, blobs2d):
    image, scribbles, _ = blobs2d
    image_layer = viewer.add_image(image, name="image")
    labels_layer = viewer.add_labels(scribbles.copy(), name="scribbles")
    trainer = Trainer(
        ImageSource(image), labels_to_target(scribbles), train_config=TrainConfig(device="cpu", seed=0)
    )
    errors: list[Exception] = []
    feed = AnnotationFeed(
        trainer,
        LabelSync(scribbles, trainer.class_map.values),
        scribbles=labels_layer,
        points=None,
        image=image_layer,
        spacing=(1.0, 1.0),
        point_radius=2.0,
        on_unknown_classes=lambda values: None,
        on_error=errors.append,
    )
    return feed, labels_layer, trainer, errors


def test_the_poll_picks_up_writes_without_events_and_waits_in_proportion_to_its_cost(
    make_napari_viewer, blobs2d, monkeypatch
):
    viewer = make_napari_viewer()
    feed, layer, trainer, errors = _feed_for(viewer, blobs2d)
    try:
        assert feed.poll_interval_ms == POLL_MS
        labelled_before = int(np.count_nonzero(layer.data))
        layer.data[:3, :3] = 1  # as undo / redo write: no paint event
        added = int(np.count_nonzero(layer.data)) - labelled_before
        assert added > 0
        # Any real read costs more than 1 ms / 10**6: the interval must grow past the floor.
        monkeypatch.setattr(_feed, "POLL_DUTY", 10**6)
        feed._poll_flush()
        assert feed.sent_regions == 1 and not errors
        assert feed.poll_interval_ms > POLL_MS
        trainer._apply_pending_labels()  # what the next training step does first
        assert trainer.labelled_voxels == labelled_before + added
        # A cheap read keeps the floor.
        monkeypatch.setattr(_feed, "POLL_DUTY", 0)
        feed._poll_flush()
        assert feed.poll_interval_ms == POLL_MS
    finally:
        feed.close()
