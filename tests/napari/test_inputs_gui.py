"""Inputs in the GUI: 3D channel layers with anisotropic scale, bad inputs, model files, export."""

from __future__ import annotations

import numpy as np
import pytest

from scribbleseg.core.inference import predict_probabilities, probabilities_to_labels
from scribbleseg.io.arrays import read_array
from scribbleseg.io.checkpoint import load_model
from scribbleseg.napari.__main__ import add_sample_layers
from scribbleseg.napari._layers import image_source

pytestmark = pytest.mark.gui


def _train_until_done(qtbot, widget, steps, timeout=120_000):
    widget.settings.max_steps.value = steps
    widget.training_panel.train_button.click()
    qtbot.waitUntil(
        lambda: (
            not widget.training.running
            and widget.training.last_update is not None
            and widget.training.last_update.done
        ),
        timeout=timeout,
    )


def test_3d_channel_layers_with_anisotropic_scale_train_and_predict(
    make_napari_viewer, dock_widget, qtbot, blobs3d, notifications
):
    image, scribbles, truth = blobs3d
    viewer = make_napari_viewer()
    scale = (3.0, 1.0, 1.0)
    first = viewer.add_image(image[0], name="channel A", scale=scale)
    second = viewer.add_image(image[1], name="channel B", scale=scale, blending="additive")
    viewer.add_labels(scribbles, name="scribbles", scale=scale)
    viewer.dims.set_point(0, 5 * scale[0])  # slice z = 5
    widget = dock_widget(viewer)
    widget.inputs.images.value = [first, second]
    assert widget.inputs.image_layers() == [first, second]
    assert widget.classes.values() == (1, 2)

    previews = []
    widget.training.preview_written.connect(previews.append)
    _train_until_done(qtbot, widget, steps=4)
    assert not notifications.errors(), notifications.errors()
    trainer = widget.training.trainer
    assert trainer.source.n_channels == 2 and trainer.source.spacing == scale
    assert trainer.patch_size[0] < trainer.patch_size[1]  # fewer voxels along the coarse axis
    # The live preview covered the current z-slice only.
    assert previews
    prediction = widget.output_layers.prediction
    assert tuple(prediction.scale) == scale
    predicted_slices = np.flatnonzero(np.any(prediction.data, axis=(1, 2)))
    assert predicted_slices.tolist() == [5]

    with qtbot.waitSignal(widget.prediction_finished, timeout=90_000):
        assert widget.predict()
    assert prediction.data.shape == truth.shape
    assert set(np.unique(prediction.data)) <= {1, 2} and np.all(prediction.data > 0)
    uncertainty = widget.output_layers.uncertainty.data
    assert 0.0 <= uncertainty.min() and uncertainty.max() <= 1.0


def _errors_after_train(qtbot, widget, notifications):
    notifications.clear()
    widget.training_panel.train_button.click()
    qtbot.wait(50)
    assert not widget.training.running
    return notifications.errors()


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("no image", "no image layer"),
        ("different shapes", "different shapes"),
        ("no scribbles", "no labelled voxels"),
        ("one class", "only class 2 is labelled"),
        ("scribbles of another shape", "scribbles layer 'scribbles' has shape (10, 10)"),
        ("no scribbles layer", "no scribbles layer"),
        ("bad patch size", "multiples of 16 (change it under Settings > Advanced)"),
    ],
)
def test_bad_input_is_a_notification_and_the_viewer_keeps_working(
    make_napari_viewer, dock_widget, qtbot, notifications, case, expected
):
    viewer = make_napari_viewer()
    image = np.random.default_rng(0).random((32, 40)).astype(np.float32)
    scribbles = np.zeros((32, 40), np.uint8)
    scribbles[5, 5:15], scribbles[20, 5:15] = 1, 2
    if case != "no image":
        viewer.add_image(image, name="image")
    if case == "different shapes":
        viewer.add_image(np.zeros((16, 16), np.float32), name="other")
    if case == "no scribbles":
        scribbles[:] = 0
    elif case == "one class":
        scribbles[scribbles == 1] = 2
    elif case == "scribbles of another shape":
        scribbles = np.ones((10, 10), np.uint8)
    if case != "no scribbles layer":
        viewer.add_labels(scribbles, name="scribbles")
    widget = dock_widget(viewer)
    if case == "different shapes":
        widget.inputs.images.value = list(viewer.layers[:2])
    if case == "bad patch size":
        widget.settings.patch_size.value = "100"
    errors = _errors_after_train(qtbot, widget, notifications)
    assert len(errors) == 1 and expected in errors[0], errors
    # The widget and the viewer still work.
    assert widget.training_panel.train_button.isEnabled()
    viewer.add_points(np.zeros((1, 2)), name="after")
    assert "after" in viewer.layers


def test_new_layers_predict_without_model_and_export_errors(make_napari_viewer, dock_widget, notifications):
    viewer = make_napari_viewer()
    widget = dock_widget(viewer)
    widget.inputs.new_scribbles.clicked()  # no image yet
    assert "no image layer" in notifications.errors()[-1]
    image = viewer.add_image(np.zeros((20, 30), np.float32), name="image", scale=(2.0, 0.5))
    widget.inputs.new_scribbles.clicked()
    widget.inputs.new_points.clicked()
    scribbles, points = viewer.layers["scribbles"], viewer.layers["points"]
    assert scribbles.data.shape == (20, 30) and tuple(scribbles.scale) == tuple(image.scale)
    assert points.feature_defaults["class"][0] == scribbles.selected_label
    assert widget.inputs.scribbles_layer() is scribbles and widget.inputs.points_layer() is points
    assert widget.classes.values() == (1, 2)  # default classes for an empty scribbles layer
    notifications.clear()
    assert not widget.predict()
    assert "no model yet" in notifications.errors()[-1]
    assert not widget.save_model("/nonexistent/folder/model")
    assert not widget.export("out.png", layer=scribbles)
    assert ".tif, .tiff or .zarr" in notifications.errors()[-1]


def test_save_load_predict_and_export(make_napari_viewer, dock_widget, qtbot, tmp_path, notifications):
    viewer = make_napari_viewer()
    add_sample_layers(viewer, "nuclei2d")
    widget = dock_widget(viewer)
    widget.settings.preview_interval.value = 60.0  # one preview only: this test is about files
    _train_until_done(qtbot, widget, steps=5)
    with qtbot.waitSignal(widget.prediction_finished, timeout=60_000):
        assert widget.predict()
    prediction = widget.output_layers.prediction
    trained = np.array(prediction.data)
    model_path = tmp_path / "nuclei.model"
    assert widget.save_model(str(model_path)), notifications.errors()

    # A new widget instance (as after a restart) loads the model and predicts the same.
    viewer.window.remove_dock_widget("all")
    prediction.data[:] = 0
    widget = dock_widget(viewer)
    widget.classes.set_background(None)
    assert widget.load_model(str(model_path)), notifications.errors()
    assert widget.training.trainer is None and widget.classes.background() == 1
    assert widget.settings.preview_interval.value == 60.0  # the model's settings are shown
    with qtbot.waitSignal(widget.prediction_finished, timeout=60_000):
        assert widget.predict()
    assert widget.output_layers.prediction is prediction
    assert np.array_equal(prediction.data, trained)

    for name in ("prediction.tif", "prediction.zarr"):
        assert widget.export(str(tmp_path / name), layer=prediction), notifications.errors()
        written = read_array(tmp_path / name)
        assert np.array_equal(np.asarray(written.data), np.where(trained == 1, 0, trained))

    # The CRF refinement setting applies to predictions: 0 gives the model's unrefined labels, and
    # the model itself keeps its refinement.
    model, metadata = load_model(model_path)
    assert model.refinement is not None and widget.settings.crf_refinement.value == 1.0
    widget.settings.crf_refinement.value = 0.0
    with qtbot.waitSignal(widget.prediction_finished, timeout=60_000):
        assert widget.predict()
    model.refinement = None
    source = image_source(widget.inputs.image_layers())
    expected = probabilities_to_labels(predict_probabilities(model, source), metadata.class_values)
    assert np.array_equal(prediction.data, expected)
    assert widget.current_model()[0].refinement is not None
    assert not notifications.errors()


def test_an_rgb_layer_gives_three_channels(make_napari_viewer, dock_widget, qtbot, blobs2d, notifications):
    image, scribbles, _ = blobs2d
    rgb = (np.stack([image, 1 - image, image * 0.5], axis=-1) * 255).clip(0, 255).astype(np.uint8)
    viewer = make_napari_viewer()
    viewer.add_image(rgb, name="rgb", rgb=True)
    viewer.add_labels(scribbles, name="scribbles")
    widget = dock_widget(viewer)
    _train_until_done(qtbot, widget, steps=2)
    assert not notifications.errors(), notifications.errors()
    assert widget.training.trainer.source.n_channels == 3
    assert widget.output_layers.prediction.data.shape == scribbles.shape


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (lambda: RuntimeError("boom"), "training failed: RuntimeError: boom"),
        (MemoryError, "out of memory while training"),
    ],
)
def test_a_failure_in_the_worker_is_a_notification(
    make_napari_viewer, dock_widget, qtbot, blobs2d, notifications, monkeypatch, error, expected
):
    from scribbleseg.core.engine import Trainer

    def fail(self):
        raise error()  # a new exception each time: its traceback must not outlive the test

    monkeypatch.setattr(Trainer, "_train_step", fail)
    image, scribbles, _ = blobs2d
    viewer = make_napari_viewer()
    viewer.add_image(image, name="image")
    viewer.add_labels(scribbles, name="scribbles")
    widget = dock_widget(viewer)
    widget.training_panel.train_button.click()
    qtbot.waitUntil(lambda: bool(notifications.errors()) and not widget.training.running, timeout=10_000)
    assert expected in notifications.errors()[0]
    assert widget.training_panel.train_button.isEnabled()
