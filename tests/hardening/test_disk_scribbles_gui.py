"""Scribbles on disk in the GUI: ``new_scribbles_on_disk``, and training reads them, never writes.

The crash itself (SIGKILL while painting) is in ``test_crash.py``; here the layer lives in a
viewer with the widget docked: strokes reach the zarr store as they are painted, training reads
the layer without writing a byte to the store, strokes painted while training are saved and used,
and reopening the path continues with what was saved.
"""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from scribbleseg.errors import InputError
from scribbleseg.napari import new_scribbles_on_disk

pytestmark = [pytest.mark.gui, pytest.mark.timeout(120)]


def _files(path):
    """Every file of the store with its content and modification time."""
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(path.rglob("*")) if p.is_file()}


def _on_disk(path):
    return zarr.open_array(str(path), mode="r")[...]  # a fresh reader: what a new process would see


def test_scribbles_on_disk_are_saved_as_painted_and_training_never_writes_them(
    make_napari_viewer, dock_widget, qtbot, blobs2d, notifications, tmp_path
):
    image, scribbles, _ = blobs2d
    viewer = make_napari_viewer()
    image_layer = viewer.add_image(image, name="image", scale=(0.5, 0.25), translate=(3.0, 4.0))
    path = tmp_path / "scribbles.zarr"
    layer = new_scribbles_on_disk(viewer, image_layer, path)
    assert isinstance(layer.data, zarr.Array) and layer.data.shape == image.shape
    assert tuple(layer.scale) == (0.5, 0.25) and tuple(layer.translate) == (3.0, 4.0)
    for value in (1, 2):  # the fixture's strokes, written as the undo history and corrections do
        layer.data_setitem(np.nonzero(scribbles == value), value)
    assert np.array_equal(_on_disk(path), scribbles)

    widget = dock_widget(viewer)
    assert widget.inputs.scribbles_layer() is layer and widget.classes.values() == (1, 2)
    widget.settings.max_steps.value = 3
    before = _files(path)
    widget.training_panel.train_button.click()
    qtbot.waitUntil(
        lambda: not widget.training.running and getattr(widget.training.last_update, "done", False),
        timeout=90_000,
    )
    assert not notifications.errors(), notifications.errors()
    assert widget.training.trainer.labelled_voxels == np.count_nonzero(scribbles)
    assert _files(path) == before  # read, never written

    # A stroke painted while training is saved at once and used by the trainer.
    widget.settings.max_steps.value = 100_000
    with qtbot.waitSignal(widget.training.update_received, timeout=60_000):
        widget.training_panel.train_button.click()
    layer.brush_size = 3
    for x in range(10, 30, 2):
        layer.paint((60, x), 2, refresh=True)
    saved = _on_disk(path)
    added = int(np.count_nonzero(saved)) - int(np.count_nonzero(scribbles))
    assert added > 10 and np.array_equal(saved, np.asarray(layer.data))
    qtbot.waitUntil(
        lambda: widget.training.last_update.labelled_voxels == np.count_nonzero(scribbles) + added,
        timeout=60_000,
    )
    widget.training_panel.stop_button.click()
    qtbot.waitUntil(lambda: not widget.training.running, timeout=10_000)
    assert np.array_equal(_on_disk(path), saved)

    # Opening the same path again continues with the saved strokes.
    again = new_scribbles_on_disk(viewer, image_layer, path, name="scribbles (reopened)")
    assert np.array_equal(np.asarray(again.data), saved)
    assert not notifications.errors(), notifications.errors()


def test_new_scribbles_on_disk_never_overwrites_something_else(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((3, 20, 30), np.float32), name="volume", scale=(4.0, 1.0, 1.0))
    layer = new_scribbles_on_disk(viewer, image, tmp_path / "big.zarr", max_value=300)
    assert layer.data.dtype == np.uint16 and layer.data.shape == (3, 20, 30)
    assert layer.data.chunks == (3, 20, 30)  # chunks cut to the image

    other = viewer.add_image(np.zeros((20, 30), np.float32), name="plane")
    with pytest.raises(InputError, match="spatial shape is"):
        new_scribbles_on_disk(viewer, other, tmp_path / "big.zarr")
    (tmp_path / "notes.zarr").mkdir()
    (tmp_path / "notes.zarr" / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not a zarr array"):
        new_scribbles_on_disk(viewer, other, tmp_path / "notes.zarr")
    assert (tmp_path / "notes.zarr" / "notes.txt").read_text() == "keep me"
    with pytest.raises(InputError, match="does not exist"):
        new_scribbles_on_disk(viewer, other, tmp_path / "missing" / "s.zarr")
    assert np.array_equal(_on_disk(tmp_path / "big.zarr"), np.zeros((3, 20, 30)))
