"""Qt-free bookkeeping of the widget: label diffs, prediction edits, view regions, channel stacks."""

from __future__ import annotations

import numpy as np
import pytest

from scribbleseg.napari._model import (
    ChannelStack,
    LabelSync,
    LossHistory,
    PredictionRecord,
    bounding_region,
    labels_for_export,
    normalised_entropy,
    view_region,
)


def test_bounding_region():
    mask = np.zeros((5, 6), bool)
    assert bounding_region(mask) is None
    mask[1, 2] = mask[3, 4] = True
    assert bounding_region(mask) == (slice(1, 4), slice(2, 5))
    assert bounding_region(mask, offset=(10, 20)) == (slice(11, 14), slice(22, 25))


def test_label_sync_sends_only_the_changed_region():
    labels = np.zeros((20, 30), np.uint8)
    labels[2, 2] = 1
    sync = LabelSync(labels, class_values=(1, 2))
    assert sync.changes(labels) is None
    current = labels.copy()
    current[5:7, 10:13] = 2
    region, block, unknown = sync.changes(current)
    assert region == (slice(5, 7), slice(10, 13))
    assert (block == 2).all() and unknown == ()
    assert sync.changes(current) is None  # taken as known
    labels[2, 2] = 99  # the original array is not referenced
    assert sync.changes(current) is None


def test_label_sync_reports_and_blanks_unknown_classes():
    sync = LabelSync(np.zeros((4, 4, 4), np.uint8), class_values=(1, 2))
    current = np.zeros((4, 4, 4), np.uint8)
    current[1, 1, 1], current[2, 2, 2] = 2, 5
    region, block, unknown = sync.changes(current)
    assert region == (slice(1, 3),) * 3
    assert unknown == (5,)
    assert block[0, 0, 0] == 2 and block[1, 1, 1] == 0


def test_label_sync_erasing_is_a_change():
    labels = np.zeros((8, 8), np.uint8)
    labels[3, 3] = 1
    sync = LabelSync(labels, class_values=(1,))
    region, block, _ = sync.changes(np.zeros_like(labels))
    assert region == (slice(3, 4), slice(3, 4)) and block.item() == 0


def test_prediction_record_keeps_user_edits_and_turns_them_into_scribbles():
    record = PredictionRecord((6, 6), np.uint8)
    layer = np.zeros((6, 6), np.uint8)
    region = (slice(0, 6), slice(0, 6))
    layer[region] = record.merge(layer[region], region, np.ones((6, 6), np.uint8))
    assert (layer == 1).all() and record.edited(layer).sum() == 0
    layer[0, 0] = 2  # the user corrects two voxels and erases one
    layer[5, 5] = 2
    layer[3, 3] = 0
    # A new prediction never overwrites an edit.
    layer[region] = record.merge(layer[region], region, np.full((6, 6), 1, np.uint8))
    assert layer[0, 0] == 2 and layer[5, 5] == 2 and layer[3, 3] == 0
    scribbles = np.zeros((6, 6), np.uint8)
    scribbles[5, 5] = 1  # already scribbled: kept
    indices, values = record.corrections(layer, scribbles)
    assert list(zip(*indices, strict=True)) == [(0, 0)] and values.tolist() == [2]
    assert record.edited(layer).sum() == 0
    # After the corrections every voxel is ours again: the next prediction fills the erased one.
    layer[region] = record.merge(layer[region], region, np.full((6, 6), 1, np.uint8))
    assert layer[3, 3] == 1


def test_view_region_of_a_slice_and_of_a_zoomed_view():
    shape = (48, 184, 152)
    region = view_region(
        shape,
        displayed=(1, 2),
        corner_low=(0, 10, 20),
        corner_high=(0, 99, 79),
        current=(30.4, 0, 0),
        max_shape=(32, 384, 384),
    )
    assert region == (slice(30, 31), slice(10, 100), slice(20, 80))
    # Corners not drawn yet (equal): the whole slice; too large: cut around the centre.
    region = view_region(
        (2000, 3000),
        displayed=(0, 1),
        corner_low=(0, 0),
        corner_high=(0, 0),
        current=(0, 0),
        max_shape=(1024, 1024),
    )
    assert region == (slice(488, 1512), slice(988, 2012))
    region = view_region(
        (10, 20),
        displayed=(0, 1),
        corner_low=(-5, -5),
        corner_high=(50, 50),
        current=(0, 0),
        max_shape=(64, 64),
    )
    assert region == (slice(0, 10), slice(0, 20))


def test_channel_stack_reads_lazily():
    a = np.arange(24, dtype=np.uint8).reshape(4, 6)
    b = np.arange(24, dtype=np.float32).reshape(4, 6) * 2
    stack = ChannelStack([a, b])
    assert stack.shape == (2, 4, 6) and stack.dtype == np.float32
    block = stack[(slice(None), slice(1, 3), slice(2, 4))]
    assert block.shape == (2, 2, 2)
    assert block[1].tolist() == (b[1:3, 2:4]).tolist()
    assert np.asarray(stack).shape == (2, 4, 6)
    with pytest.raises(ValueError, match="differ in shape"):
        ChannelStack([a, np.zeros((3, 3))])


def test_normalised_entropy_bounds():
    p = np.zeros((3, 2, 2), np.float32)
    p[0] = 1.0
    assert np.allclose(normalised_entropy(p), 0.0, atol=1e-4)
    assert np.allclose(normalised_entropy(np.full((3, 2, 2), 1 / 3, np.float32)), 1.0)


def test_labels_for_export_writes_background_as_zero():
    labels = np.array([[1, 2], [0, 1]], np.uint8)
    assert labels_for_export(labels, 1).tolist() == [[0, 2], [0, 0]]
    assert labels_for_export(labels, None) is labels
    da = pytest.importorskip("dask.array")
    assert labels_for_export(da.from_array(labels), 2).compute().tolist() == [[1, 0], [0, 1]]


def test_loss_history_is_bounded():
    history = LossHistory(capacity=8)
    for step in range(100):
        history.add(step, float(step))
    history.add(100, float("nan"))
    assert len(history) <= 8 and history.steps[-1] == 99
