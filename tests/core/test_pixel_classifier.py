"""The feature forest: instant previews and the teacher's soft labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scribbleseg.core.annotations import labels_to_target
from scribbleseg.core.losses import IGNORE_INDEX, teacher_cross_entropy
from scribbleseg.core.metrics import dice_iou
from scribbleseg.core.pixel_classifier import ForestTeacher, feature_preview
from scribbleseg.core.volume import ImageSource


def _setup(image, scribbles, channel_axis=None):
    source = ImageSource(image, channel_axis=channel_axis)
    return source, labels_to_target(scribbles, spacing=source.spacing)


def test_teacher_fits_all_labels_and_is_right_at_once(blobs2d):
    image, scribbles, truth = blobs2d
    source, target = _setup(image, scribbles)
    teacher = ForestTeacher(source, target, trees=20)
    assert teacher.fit()
    probabilities = teacher.probabilities
    assert probabilities.shape == (2, 64, 80) and probabilities.dtype == np.float16
    np.testing.assert_allclose(probabilities.astype(np.float32).sum(axis=0), 1.0, atol=2e-3)
    labels = probabilities.argmax(axis=0) + 1
    assert dice_iou(labels, truth)[2]["dice"] > 0.8


def test_blocks_give_the_same_probabilities_as_one_block(blobs3d):
    image, scribbles, _ = blobs3d
    source, target = _setup(image, scribbles, channel_axis=0)
    whole = ForestTeacher(source, target, trees=10, seed=1)
    blocks = ForestTeacher(source, target, trees=10, seed=1, block_shape=(5, 16, 16))
    assert whole.fit() and blocks.fit()
    np.testing.assert_array_equal(whole.probabilities, blocks.probabilities)


def test_read_pads_with_zeros_and_before_fit_is_all_zero(blobs2d):
    image, scribbles, _ = blobs2d
    source, target = _setup(image, scribbles)
    teacher = ForestTeacher(source, target, trees=5)
    region = (slice(-4, 12), slice(70, 90))
    assert not teacher.read(region).any()
    teacher.fit()
    soft = teacher.read(region)
    assert soft.shape == (2, 16, 20)
    assert not soft[:, :4].any() and not soft[:, :, 10:].any()
    np.testing.assert_allclose(soft[:, 4:, :10].sum(axis=0), 1.0, atol=2e-3)


def test_stop_abandons_and_large_images_get_none(blobs2d):
    image, scribbles, _ = blobs2d
    source, target = _setup(image, scribbles)
    stopped = ForestTeacher(source, target, should_stop=lambda: True)
    assert not stopped.fit() and stopped.abandoned and stopped.probabilities is None
    tiny_limit = ForestTeacher(source, target, max_voxels=100)
    assert not tiny_limit.available and not tiny_limit.fit()


def test_teacher_cross_entropy_counts_confident_unlabelled_voxels_only():
    logits = torch.zeros(1, 2, 1, 4)  # the network says 50/50 everywhere
    teacher = torch.tensor([[[[1.0, 0.5, 1.0, 0.0]], [[0.0, 0.5, 0.0, 0.0]]]])
    target = torch.tensor([[[IGNORE_INDEX, IGNORE_INDEX, 1, IGNORE_INDEX]]])
    valid = torch.ones(1, 1, 4, dtype=torch.bool)
    # voxel 0: confident and unlabelled (weight 1); voxel 1: uniform teacher (weight 0);
    # voxel 2: labelled (pCE's job); voxel 3: no teacher there.
    loss = teacher_cross_entropy(logits, teacher, target, valid)
    assert loss.item() == pytest.approx(np.log(2), rel=1e-6)
    assert teacher_cross_entropy(logits, teacher, target, torch.zeros_like(valid)).item() == 0.0


def test_feature_preview_of_a_3d_slice(blobs3d):
    image, scribbles, truth = blobs3d
    source, target = _setup(image, scribbles, channel_axis=0)
    region = (slice(5, 6), slice(0, 40), slice(0, 36))
    probabilities = feature_preview(source, target, region, trees=20)
    assert probabilities.shape == (2, 1, 40, 36)
    assert dice_iou(probabilities.argmax(axis=0) + 1, truth[region])[2]["dice"] > 0.7
