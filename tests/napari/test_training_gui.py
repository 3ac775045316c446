"""The widget, docked through the npe2 manifest into a real viewer, training on CPU.

Timeouts bound every wait against a hang (generous: CI machines vary 2x in speed); training uses one
torch thread (see conftest).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from skimage.filters import threshold_otsu

from scribbleseg.core.metrics import dice_iou
from scribbleseg.napari.__main__ import add_sample_layers
from scribbleseg.samples import load_sample

pytestmark = pytest.mark.gui


def _set(settings, **values):
    for name, value in values.items():
        getattr(settings, name).value = value


def _start(qtbot, widget, timeout=60_000):
    """Press Train and wait for the first record."""
    with qtbot.waitSignal(widget.training.update_received, timeout=timeout):
        widget.training_panel.train_button.click()
    assert widget.training.running or widget.training.last_update.done


def _stop(qtbot, widget, timeout=5_000) -> float:
    """Press Stop; return the seconds until the worker thread has ended."""
    from qtpy.QtCore import QThreadPool

    start = time.perf_counter()
    widget.training_panel.stop_button.click()
    qtbot.waitUntil(lambda: not widget.training.running, timeout=timeout)
    seconds = time.perf_counter() - start
    # "running" ends when the worker emits "finished"; its pool thread (which still holds the
    # widget's handlers) ends a moment later. Wait for it, or the viewer's leak check at teardown
    # can find the viewer still referenced (seen once in CI under load).
    qtbot.waitUntil(lambda: QThreadPool.globalInstance().activeThreadCount() == 0, timeout=timeout)
    # "running" turns False in the worker thread; the widget's own "finished" handler (which
    # re-enables Train) is queued to the GUI thread: let it run (a race seen once in CI).
    qtbot.waitUntil(lambda: widget.training.run is None, timeout=timeout)
    return seconds


def test_trains_on_the_2d_sample_and_beats_a_threshold(make_napari_viewer, dock_widget, qtbot):
    """pCE for a fixed number of steps (deterministic with a seed and one thread), then Predict.

    Baselines (nucleus Dice on nuclei2d): mean threshold 0.78, Otsu 0.84. The default loss weights
    (CRF, contrastive) do worse than pCE alone after a few seconds on this image; see the report
    of issue 4. The net must beat the stronger baseline, Otsu.
    """
    viewer = make_napari_viewer()
    add_sample_layers(viewer, "nuclei2d")
    widget = dock_widget(viewer)
    assert widget.classes.values() == (1, 2) and widget.classes.background() == 1
    _set(widget.settings, max_steps=150)  # default losses
    previews = []
    widget.training.preview_written.connect(previews.append)
    widget.training_panel.train_button.click()
    # A bound against a hang only: 150 steps take 30-60 s on a 2-core CI machine, and its speed varies.
    qtbot.waitUntil(
        lambda: not widget.training.running and widget.training.last_update is not None, timeout=240_000
    )
    assert widget.training.trainer.step == 150
    assert previews, "no live preview was written while training"
    prediction = widget.output_layers.prediction
    assert prediction is not None and set(np.unique(prediction.data)) == {1, 2}
    assert widget.output_layers.uncertainty.data.max() > 0

    with qtbot.waitSignal(widget.prediction_finished, timeout=60_000):
        assert widget.predict()
    assert widget.outputs_panel.progress.value() == 100
    assert [layer.name for layer in viewer.layers].count("prediction") == 1  # the same, persistent layer
    sample = load_sample("nuclei2d")
    image = sample.image.astype(np.float32)
    nucleus_dice = dice_iou(prediction.data, sample.ground_truth)[2]["dice"]
    mean_dice = dice_iou(np.where(image > image.mean(), 2, 1), sample.ground_truth)[2]["dice"]
    otsu_dice = dice_iou(np.where(image > threshold_otsu(image), 2, 1), sample.ground_truth)[2]["dice"]
    print(f"nucleus Dice: network {nucleus_dice:.3f}, Otsu {otsu_dice:.3f}, mean threshold {mean_dice:.3f}")
    assert nucleus_dice > otsu_dice > mean_dice


def test_strokes_painted_while_training_are_used_and_stop_is_quick(make_napari_viewer, dock_widget, qtbot):
    viewer = make_napari_viewer()
    add_sample_layers(viewer, "nuclei2d")
    widget = dock_widget(viewer)
    scribbles = viewer.layers["scribbles"]
    before = int(np.count_nonzero(scribbles.data))
    _start(qtbot, widget)
    assert widget.training.last_update.labelled_voxels == before
    # A stroke, painted as the brush does it (Labels.paint emits the paint event).
    scribbles.brush_size = 5
    for x in range(300, 340, 2):
        scribbles.paint((40, x), 1, refresh=True)
    added = int(np.count_nonzero(scribbles.data)) - before
    assert added > 50
    qtbot.waitUntil(lambda: widget.training.last_update.labelled_voxels == before + added, timeout=15_000)
    assert widget.training.running
    # A hang bound: the 1 s target of Stop is measured by benchmarks/ui_latency.py.
    assert _stop(qtbot, widget) < 10.0
    assert widget.training_panel.train_button.isEnabled()


def test_closing_the_viewer_mid_training_leaves_no_thread(make_napari_viewer, dock_widget, qtbot):
    from qtpy.QtCore import QThreadPool

    viewer = make_napari_viewer()
    add_sample_layers(viewer, "nuclei2d")
    widget = dock_widget(viewer)
    _start(qtbot, widget)
    run = widget.training.run
    assert run is not None and run.running
    viewer.close()
    assert not run.running  # the close waited for the worker thread to end
    qtbot.waitUntil(lambda: QThreadPool.globalInstance().activeThreadCount() == 0, timeout=5_000)
    qtbot.wait(100)  # queued signals of the ended worker are delivered without error


def test_closing_the_widget_mid_training_stops_it(make_napari_viewer, dock_widget, qtbot):
    viewer = make_napari_viewer()
    add_sample_layers(viewer, "nuclei2d")
    widget = dock_widget(viewer)
    _start(qtbot, widget)
    run = widget.training.run
    viewer.window.remove_dock_widget(widget)
    assert not run.running
    # The viewer keeps working.
    viewer.add_points(np.zeros((1, 2)))
    assert len(viewer.layers) == 5


def test_corrections_add_exactly_the_edited_voxels(make_napari_viewer, dock_widget, qtbot, notifications):
    viewer = make_napari_viewer()
    add_sample_layers(viewer, "nuclei2d")
    widget = dock_widget(viewer)
    _set(widget.settings, max_steps=3)
    previews = []
    widget.training.preview_written.connect(previews.append)
    widget.training_panel.train_button.click()
    qtbot.waitUntil(lambda: not widget.training.running and bool(previews), timeout=90_000)
    prediction = widget.output_layers.prediction
    scribbles = viewer.layers["scribbles"]
    old_scribbles = np.array(scribbles.data)
    labelled_before = widget.training.last_update.labelled_voxels

    # Edit the prediction: flip a 6x6 block where nothing is scribbled, and one scribbled voxel.
    free = np.argwhere(old_scribbles == 0)
    y, x = free[len(free) // 2]
    block = (slice(y, y + 6), slice(x, x + 6))
    assert (old_scribbles[block] == 0).all()
    flipped = np.where(prediction.data[block] == 1, 2, 1).astype(prediction.data.dtype)
    prediction.data[block] = flipped
    scribbled = tuple(np.argwhere(old_scribbles != 0)[0])
    prediction.data[scribbled] = 3 - prediction.data[scribbled]
    prediction.refresh()
    assert widget.output_layers.edited_voxels() == 37

    max_steps_again = widget.settings.max_steps.value
    assert max_steps_again == 3
    with qtbot.waitSignal(widget.training.update_received, timeout=60_000):
        widget.training_panel.corrections_button.click()
    changed = scribbles.data != old_scribbles
    expected = np.zeros_like(changed)
    expected[block] = True
    assert (changed == expected).all(), "exactly the edited, unscribbled voxels become scribbles"
    assert (scribbles.data[block] == flipped).all()
    assert any("36 corrected voxels" in m for m in notifications.messages())
    # Training went on (same trainer), with the new scribbles.
    assert widget.training.last_update.labelled_voxels == labelled_before + 36
    qtbot.waitUntil(lambda: not widget.training.running, timeout=60_000)


def test_points_with_a_class_feature_are_training_labels(make_napari_viewer, dock_widget, qtbot, blobs2d):
    image, scribbles, _ = blobs2d
    viewer = make_napari_viewer()
    viewer.add_image(image, name="image")
    viewer.add_labels(scribbles, name="scribbles")
    widget = dock_widget(viewer)
    widget.classes.select_value(2)
    widget.inputs.new_points.clicked()
    points = viewer.layers["points"]
    points.add([[10.0, 10.0]])  # takes the selected class, 2
    assert points.features["class"].tolist() == [2]
    radius = widget.settings.point_radius.value
    _start(qtbot, widget)
    before = widget.training.last_update.labelled_voxels
    assert before > int(np.count_nonzero(scribbles))  # the ball of the point counts
    widget.classes.select_value(1)  # selecting a class sets the class of new points
    assert points.feature_defaults["class"][0] == 1
    points.add([[50.0, 60.0]])  # added while training: sent to the trainer as a ball
    qtbot.waitUntil(lambda: widget.training.last_update.labelled_voxels > before, timeout=15_000)
    assert widget.training.last_update.labelled_voxels - before <= (2 * radius + 1) ** 2
    _stop(qtbot, widget)


def test_the_preview_follows_the_slice_being_viewed(make_napari_viewer, dock_widget, qtbot, blobs3d):
    image, scribbles, _ = blobs3d
    viewer = make_napari_viewer()
    viewer.add_image(image[0], name="image", scale=(3.0, 1.0, 1.0))
    viewer.add_labels(scribbles, name="scribbles", scale=(3.0, 1.0, 1.0))
    viewer.dims.set_point(0, 3.0)  # z = 1
    widget = dock_widget(viewer)
    widget.settings.preview_interval.value = 0.5
    with qtbot.waitSignal(widget.training.preview_written, timeout=60_000):
        widget.training_panel.train_button.click()
    prediction = widget.output_layers.prediction
    assert np.flatnonzero(np.any(prediction.data, axis=(1, 2))).tolist() == [1]
    viewer.dims.set_point(0, 27.0)  # z = 9
    qtbot.waitUntil(lambda: bool(np.any(prediction.data[9])), timeout=60_000)
    viewer.dims.ndisplay = 3  # the 3D view: the volume (this one is small enough to take whole)
    qtbot.waitUntil(lambda: bool(np.all(np.any(prediction.data, axis=(1, 2)))), timeout=60_000)
    _stop(qtbot, widget)


def test_whole_image_prediction_can_be_cancelled(make_napari_viewer, dock_widget, qtbot, monkeypatch):
    from scribbleseg.napari import _prediction

    monkeypatch.setitem(_prediction._BLOCK_SHAPE, 2, (64, 64))  # 64 blocks on the 512² sample
    viewer = make_napari_viewer()
    add_sample_layers(viewer, "nuclei2d")
    widget = dock_widget(viewer)
    widget.settings.max_steps.value = 1
    widget.training_panel.train_button.click()
    qtbot.waitUntil(
        lambda: not widget.training.running and widget.training.last_update is not None, timeout=60_000
    )
    progress = widget.outputs_panel.progress
    with qtbot.waitSignal(widget.prediction_finished, timeout=60_000):
        assert widget.predict()
        qtbot.waitUntil(lambda: progress.value() > 0, timeout=60_000)
        widget.outputs_panel.cancel_button.click()
    assert 0 < progress.value() < 100
    assert widget.outputs_panel.predict_button.isEnabled()
