from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import zarr

from scribbleseg.core.metrics import dice_iou, mean_dice
from scribbleseg.errors import InputError

PREDICTION = np.array(
    [
        [1, 1, 1, 0],
        [2, 2, 0, 0],
        [5, 5, 5, 5],
    ]
)
TRUTH = np.array(
    [
        [1, 1, 0, 0],
        [2, 2, 2, 0],
        [5, 5, 0, 0],
    ]
)


def test_known_values() -> None:
    scores = dice_iou(PREDICTION, TRUTH)
    assert list(scores) == [0, 1, 2, 5]
    # class 1: |A|=3 |B|=2 |A∩B|=2 ; class 2: 2, 3, 2 ; class 5: 4, 2, 2 ; class 0: 3, 5, 2
    assert scores[1] == pytest.approx({"dice": 4 / 5, "iou": 2 / 3})
    assert scores[2] == pytest.approx({"dice": 4 / 5, "iou": 2 / 3})
    assert scores[5] == pytest.approx({"dice": 4 / 6, "iou": 2 / 4})
    assert scores[0] == pytest.approx({"dice": 4 / 8, "iou": 2 / 6})
    assert mean_dice(scores) == pytest.approx((0.8 + 0.8 + 4 / 6) / 3)
    assert mean_dice(scores, exclude=()) == pytest.approx((0.5 + 0.8 + 0.8 + 4 / 6) / 4)


def test_perfect_and_disjoint() -> None:
    labels = np.arange(30).reshape(5, 6) % 3
    assert all(s == {"dice": 1.0, "iou": 1.0} for s in dice_iou(labels, labels).values())
    scores = dice_iou(np.ones((3, 4), int), np.full((3, 4), 2))
    assert scores == {1: {"dice": 0.0, "iou": 0.0}, 2: {"dice": 0.0, "iou": 0.0}}


def test_class_absent_from_both_scores_one() -> None:
    scores = dice_iou(PREDICTION, TRUTH, class_values=[1, 7])
    assert list(scores) == [1, 7]
    assert scores[7] == {"dice": 1.0, "iou": 1.0}


def test_ignore_value_leaves_voxels_out() -> None:
    scores = dice_iou(PREDICTION, TRUTH, ignore_value=0)
    assert list(scores) == [1, 2, 5]
    # only voxels where the truth is not 0 count: class 1 predicted 2 (both right)
    assert scores[1] == {"dice": 1.0, "iou": 1.0}
    assert scores[5] == {"dice": 1.0, "iou": 1.0}
    assert scores[2] == pytest.approx({"dice": 4 / 5, "iou": 2 / 3})


@pytest.mark.parametrize("shape", [(37, 41), (9, 23, 17)])
def test_dask_and_zarr_match_numpy(tmp_path, shape) -> None:
    rng = np.random.default_rng(0)
    prediction = rng.integers(0, 4, size=shape).astype(np.uint8)
    truth = np.where(rng.random(shape) < 0.7, prediction, rng.integers(0, 4, size=shape)).astype(np.uint8)
    expected = dice_iou(prediction, truth)
    chunks = tuple(max(1, s // 3) for s in shape)
    on_disk = zarr.create_array(tmp_path / "truth.zarr", shape=shape, chunks=chunks, dtype="u1")
    on_disk[...] = truth
    lazy = da.from_array(prediction, chunks=chunks)
    for pair in ((lazy, truth), (prediction, on_disk), (lazy, on_disk)):
        assert dice_iou(*pair) == expected  # integer counts: exact


def test_walks_blocks_and_accumulates(monkeypatch) -> None:
    import scribbleseg.core.metrics as metrics

    monkeypatch.setattr(metrics, "_BLOCK_VOXELS", 7)
    rng = np.random.default_rng(1)
    prediction = rng.integers(0, 3, size=(11, 13))
    truth = rng.integers(0, 3, size=(11, 13))
    small_blocks = dice_iou(prediction, truth)
    monkeypatch.setattr(metrics, "_BLOCK_VOXELS", 1 << 22)
    assert small_blocks == dice_iou(prediction, truth)


def test_large_and_negative_values() -> None:
    prediction = np.array([-3, 70000, 70000, 1])
    truth = np.array([-3, 70000, 1, 1])
    scores = dice_iou(prediction, truth)
    assert scores[-3]["dice"] == 1.0
    assert scores[70000] == pytest.approx({"dice": 2 / 3, "iou": 1 / 2})


def test_float_and_bool_inputs() -> None:
    scores = dice_iou(PREDICTION.astype(np.float32), TRUTH.astype(np.float64))
    assert scores == dice_iou(PREDICTION, TRUTH)
    assert dice_iou(np.eye(3, dtype=bool), np.eye(3, dtype=bool))[1]["dice"] == 1.0
    with pytest.raises(InputError, match=r"integer class values; got float values like 0\.5"):
        dice_iou(np.full((2, 2), 0.5), np.zeros((2, 2)))


def test_shape_mismatch() -> None:
    with pytest.raises(InputError, match=r"\(3, 4\) but ground truth has shape \(4, 3\)"):
        dice_iou(np.zeros((3, 4), int), np.zeros((4, 3), int))


def test_inputs_untouched_and_mean_dice_needs_a_class() -> None:
    before = PREDICTION.copy(), TRUTH.copy()
    scores = dice_iou(PREDICTION, TRUTH, class_values=[0])
    np.testing.assert_array_equal(PREDICTION, before[0])
    np.testing.assert_array_equal(TRUTH, before[1])
    with pytest.raises(ValueError, match="no class left"):
        mean_dice(scores)
