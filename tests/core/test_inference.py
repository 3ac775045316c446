"""Sliding-window and region prediction."""

from __future__ import annotations

import numpy as np
import pytest

from scribbleseg.core.config import ModelConfig
from scribbleseg.core.inference import (
    default_roi_size,
    predict_probabilities,
    predict_region,
    probabilities_to_labels,
)
from scribbleseg.core.models import build_model
from scribbleseg.core.volume import ImageSource


@pytest.fixture
def model2d():
    return build_model(ModelConfig(), spatial_dims=2, in_channels=1, num_classes=3).eval()


@pytest.mark.parametrize("shape", [(37, 53), (16, 16), (300, 20)])
def test_probabilities_shape_and_sum(model2d, shape):
    image = np.random.default_rng(0).random(shape, dtype=np.float32)
    probs = predict_probabilities(model2d, ImageSource(image), device="cpu")
    assert probs.shape == (3, *shape)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)


def test_tta_and_region(model2d):
    image = np.random.default_rng(1).random((40, 50), dtype=np.float32)
    source = ImageSource(image)
    probs = predict_probabilities(model2d, source, device="cpu", tta=True)
    assert probs.shape == (3, 40, 50)
    part = predict_probabilities(model2d, source, region=(slice(5, 25), slice(10, 50)), device="cpu")
    assert part.shape == (3, 20, 40)
    preview = predict_region(model2d, source, (slice(-5, 25), slice(10, 60)), device="cpu")
    assert preview.shape == (3, 25, 40)  # clipped to the image


def test_labels_use_class_values():
    probs = np.zeros((3, 2, 2), dtype=np.float32)
    probs[0, 0, 0] = probs[1, 0, 1] = probs[2, 1, :] = 1
    labels = probabilities_to_labels(probs, (1, 2, 5))
    np.testing.assert_array_equal(labels, [[1, 2], [5, 5]])
    assert labels.dtype == np.uint8


def test_default_roi_size_is_a_multiple_of_16():
    assert default_roi_size((512, 512)) == (256, 256)
    assert default_roi_size((20, 37, 500)) == (32, 48, 96)
