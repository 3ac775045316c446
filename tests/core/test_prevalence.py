"""Prevalence correction: EM estimate of the class shares and re-weighting of probabilities to them."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from scribbleseg.core.annotations import labels_to_target
from scribbleseg.core.config import LossConfig, ModelConfig, TrainConfig
from scribbleseg.core.engine import Trainer
from scribbleseg.core.inference import predict_probabilities, predict_region
from scribbleseg.core.pixel_classifier import ForestTeacher
from scribbleseg.core.prevalence import check_factors, estimate_factors, reweight
from scribbleseg.core.volume import ImageSource

TINY = ModelConfig(features=(4, 4, 8, 8, 8, 4), embedding_dim=2)
PCE = LossConfig(contrastive_weight=0.0, crf_weight=0.0, dynamic_crf_weight=0.0, teacher_weight=0.0)


def _balanced_posteriors(prevalence: float, n: int = 200_000) -> tuple[np.ndarray, np.ndarray]:
    """Posteriors of a classifier trained on balanced classes, on data where class 1 has ``prevalence``.

    Two unit Gaussians 2 apart: the balanced posterior is the likelihood ratio, the Bayes posterior
    on the data is that re-weighted by the true shares.
    """
    rng = np.random.default_rng(0)
    classes = (rng.random(n) < prevalence).astype(int)
    x = rng.normal(2.0 * classes, 1.0)
    likelihood = np.stack([np.exp(-0.5 * x**2), np.exp(-0.5 * (x - 2.0) ** 2)])
    return likelihood / likelihood.sum(0), classes


def test_em_finds_the_class_shares_of_the_data():
    posteriors, classes = _balanced_posteriors(0.2)
    factors = estimate_factors(posteriors)
    np.testing.assert_allclose(factors / 2, [0.8, 0.2], atol=0.01)
    # Re-weighted, the posteriors are the Bayes posteriors: fewer errors than the balanced ones.
    errors_before = np.mean(posteriors.argmax(0) != classes)
    errors_after = np.mean(reweight(posteriors, factors).argmax(0) != classes)
    assert errors_after < errors_before - 0.03
    # Balanced data need no correction.
    np.testing.assert_allclose(estimate_factors(_balanced_posteriors(0.5)[0]), [1.0, 1.0], atol=0.02)


def test_a_large_input_is_sampled_evenly():
    posteriors, _ = _balanced_posteriors(0.3)
    np.testing.assert_allclose(
        estimate_factors(posteriors, max_voxels=10_000), estimate_factors(posteriors), atol=0.03
    )


def test_reweight_keeps_shape_sums_and_zero_voxels():
    probabilities = np.array([[0.5, 0.0, 0.2], [0.5, 0.0, 0.8]], dtype=np.float32)[:, None, :]
    out = reweight(probabilities, (3.0, 1.0))
    assert out.shape == probabilities.shape and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0, 0], [0.75, 0.25])
    np.testing.assert_array_equal(out[:, 0, 1], [0.0, 0.0])  # nothing to re-weight: left as it was
    np.testing.assert_allclose(out[:, 0, 2].sum(), 1.0)
    assert reweight(probabilities, None) is probabilities


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="2 or more classes"):
        estimate_factors(np.ones((1, 10)))
    with pytest.raises(ValueError, match="must be 2 finite numbers"):
        check_factors([1.0, float("nan")], 2)
    with pytest.raises(ValueError, match="must be 2 finite numbers"):
        check_factors([0.0, 0.0], 2)
    with pytest.raises(ValueError, match="list of numbers"):
        check_factors("ab", 2)
    assert check_factors([1, 2], 2) == (1.0, 2.0)


def _disks() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Blurred bright disks on 15 % of the image, strokes inside them and far from them.

    As a person paints: nothing within 3 pixels of a boundary, and about as many strokes on
    the disks as on the background, so a classifier sees the classes as equally common.
    """
    yy, xx = np.mgrid[:128, :128]
    truth = np.zeros((128, 128), bool)
    for cy, cx in [(24, 24), (24, 90), (70, 50), (100, 100), (100, 20)]:
        truth |= (yy - cy) ** 2 + (xx - cx) ** 2 < 10**2
    rng = np.random.default_rng(0)
    image = ndimage.gaussian_filter(truth.astype(np.float32), 2.0) + rng.normal(0, 0.08, truth.shape)
    labels = np.zeros(truth.shape, np.uint8)
    labels[ndimage.binary_erosion(truth, iterations=5)] = 2
    far = ~ndimage.binary_dilation(truth, iterations=8)
    labels[np.isin(yy, [60, 61]) & far] = 1  # one background stroke
    return image.astype(np.float32), labels, truth


def test_the_corrected_forest_gives_the_undecided_voxels_to_the_majority():
    """Why the correction is off by default: it narrows the minority class wherever undecided.

    Here the strokes cover only the disks' cores, the forest is unsure in the rest of each disk,
    and the correction takes much of that rim away (Dice 0.98 -> about 0.73); on the nuclei
    sample, where the undecided band lies outside the nuclei, the same shift is right.
    """
    image, labels, truth = _disks()
    source, target = ImageSource(image), labels_to_target(labels)
    plain = ForestTeacher(source, target, trees=20, threads=1)
    corrected = ForestTeacher(source, target, trees=20, threads=1, prevalence_correction=True)
    assert plain.fit() and corrected.fit()
    assert plain.factors is None and len(corrected.factors) == 2
    assert corrected.factors[1] < 1 < corrected.factors[0]  # the disks are the minority
    plain_disks = plain.probabilities.argmax(0) == 1
    corrected_disks = corrected.probabilities.argmax(0) == 1
    assert not np.any(corrected_disks & ~plain_disks)  # only ever taken from the minority
    assert corrected_disks.sum() < plain_disks.sum() <= 1.1 * truth.sum()
    np.testing.assert_allclose(corrected.probabilities.astype(np.float32).sum(0), 1.0, atol=2e-3)


def test_the_trainer_gives_the_network_its_factors_and_applies_them():
    image, labels, _ = _disks()
    source = ImageSource(image)
    config = TrainConfig(
        device="cpu",
        steps=30,
        batch_size=2,
        forest_blend=0.0,
        feature_preview_steps=0,
        prevalence_correction=True,
        crf_refinement=0.0,  # applied after the factors (tests/core/test_refine.py)
    )
    trainer = Trainer(
        source, labels_to_target(labels), model_config=TINY, loss_config=PCE, train_config=config
    )
    list(trainer.run())
    model = trainer.model
    factors = model.class_factors
    assert factors is not None and len(factors) == 2 and all(f > 0 for f in factors)
    corrected = predict_probabilities(model, source, device="cpu")
    model.class_factors = None
    plain = predict_probabilities(model, source, device="cpu")
    np.testing.assert_allclose(corrected, reweight(plain, factors), atol=1e-5)
    # The preview applies them too.
    model.class_factors = factors
    region = (slice(0, 64), slice(0, 64))
    preview = trainer.preview(region)
    network = predict_region(model, source, region, halo=trainer._preview_halo, device="cpu")
    np.testing.assert_allclose(preview.probabilities, reweight(network, factors), atol=1e-3)


def test_the_correction_is_off_by_default():
    image, labels, _ = _disks()
    config = TrainConfig(device="cpu", steps=5, batch_size=2, forest_blend=0.0)
    trainer = Trainer(
        ImageSource(image), labels_to_target(labels), model_config=TINY, loss_config=PCE, train_config=config
    )
    list(trainer.run())
    assert trainer.model.class_factors is None
    with pytest.raises(Exception, match="prevalence_correction must be True or False"):
        TrainConfig(prevalence_correction=1)
