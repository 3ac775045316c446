"""The forest blend: the teacher's forest mixed into previews and predictions, fading with it."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest
import zarr

from scribbleseg.core.annotations import labels_to_target
from scribbleseg.core.blockwise import model_fingerprint, predict_blockwise
from scribbleseg.core.config import LossConfig, ModelConfig, TrainConfig, default_forest_blend_steps
from scribbleseg.core.engine import Trainer
from scribbleseg.core.inference import predict_probabilities, probabilities_to_labels
from scribbleseg.core.pixel_classifier import ForestBlend, ForestTeacher
from scribbleseg.core.volume import ImageSource

TINY = ModelConfig(features=(4, 4, 8, 8, 8, 4), embedding_dim=2)
# Partial CE alone: no regularizers, and no teacher loss either, so the forest is fitted for the
# blend only (TrainConfig.forest_blend > 0 is enough). It fades over 100 steps.
LOSS = LossConfig(
    contrastive_weight=0.0, crf_weight=0.0, dynamic_crf_weight=0.0, teacher_weight=0.0, teacher_steps=100
)


def _forest(image, scribbles, weight=0.5):
    source = ImageSource(image)
    target = labels_to_target(scribbles)
    teacher = ForestTeacher(source, target, trees=10, threads=1)
    assert teacher.fit()
    blend = ForestBlend(teacher.forest, teacher.spec, weight, target.num_classes, factors=teacher.factors)
    return source, target, teacher, blend


def _trainer_with_forest(image, scribbles, *, wait=True, **train):
    """A trainer that has run until its forest came in (it is fitted in a background thread).

    With ``wait=False`` it runs its steps once: a trainer whose blend is off would wait in vain.
    """
    source = ImageSource(image)
    # Without the CRF refinement, which would change the mix afterwards (tests/core/test_refine.py).
    options = {"device": "cpu", "seed": 0, "batch_size": 2, "steps": 3, "crf_refinement": 0.0} | train
    trainer = Trainer(
        source,
        labels_to_target(scribbles),
        model_config=TINY,
        loss_config=LOSS,
        train_config=TrainConfig(**options),
    )
    list(trainer.run())
    deadline = time.monotonic() + 60
    while wait and trainer.model.forest_blend is None and time.monotonic() < deadline:
        list(trainer.run())
    return source, trainer


def test_forest_probabilities_do_not_depend_on_blocks_or_region(blobs2d):
    image, scribbles, _ = blobs2d
    source, _, teacher, blend = _forest(image, scribbles)
    whole = blend.probabilities(source, (slice(0, 64), slice(0, 80)))
    tiled = blend.probabilities(source, (slice(0, 64), slice(0, 80)), block_shape=(16, 24))
    part = blend.probabilities(source, (slice(10, 50), slice(33, 80)), block_shape=(7, 9))
    np.testing.assert_allclose(tiled, whole, atol=1e-6)
    np.testing.assert_allclose(part, whole[:, 10:50, 33:80], atol=1e-6)
    np.testing.assert_allclose(whole, teacher.probabilities.astype(np.float32), atol=1e-3)  # float16 there
    np.testing.assert_allclose(whole.sum(0), 1.0, atol=1e-5)


def test_forest_blend_checks_its_weight_and_classes(blobs2d):
    image, scribbles, _ = blobs2d
    _, target, teacher, _ = _forest(image, scribbles)
    with pytest.raises(ValueError, match="weight must be in"):
        ForestBlend(teacher.forest, teacher.spec, 1.5, target.num_classes)
    with pytest.raises(ValueError, match="not class indices"):
        ForestBlend(teacher.forest, teacher.spec, 0.5, 1)


def test_prediction_mixes_the_forest_in(blobs2d, tmp_path):
    image, scribbles, _ = blobs2d
    source, trainer = _trainer_with_forest(image, scribbles)
    blend = trainer.model.forest_blend
    assert blend is not None, "the forest never came in"
    # It fades with the teacher: 0.7 at the step the forest came in, 0 after teacher_steps (100).
    assert 0.7 * (1 - trainer.step / 100) <= blend.weight < 0.7
    mixed = predict_probabilities(trainer.model, source, device="cpu")
    trainer.model.forest_blend = None
    network = predict_probabilities(trainer.model, source, device="cpu")
    fingerprint = model_fingerprint(trainer.model)
    trainer.model.forest_blend = blend
    assert model_fingerprint(trainer.model) != fingerprint  # a resumed prediction notices the change
    forest = blend.probabilities(source, (slice(0, 64), slice(0, 80)))
    np.testing.assert_allclose(mixed, (1 - blend.weight) * network + blend.weight * forest, atol=1e-5)
    # Blockwise prediction (blocks smaller than the image) writes the same labels.
    out = tmp_path / "labels.zarr"
    predict_blockwise(trainer.model, source, out, class_values=[1, 2], block_shape=(32, 48), device="cpu")
    expected = probabilities_to_labels(mixed, [1, 2])
    np.testing.assert_array_equal(zarr.open_array(str(out))[...], expected)


def test_the_blend_fades_out_and_can_be_switched_off(blobs2d):
    image, scribbles, _ = blobs2d
    _, trainer = _trainer_with_forest(image, scribbles)
    trainer.train_config = replace(trainer.train_config, steps=100)
    list(trainer.run())  # past teacher_steps: the network stands alone
    assert trainer.model.forest_blend is None
    _, trainer = _trainer_with_forest(image, scribbles, wait=False, forest_blend=0.0, steps=20)
    assert trainer.model.forest_blend is None and trainer.step == 20
    assert trainer.metadata().training["forest_blend"] == 0.0


def test_the_network_takes_over_after_forest_blend_steps(blobs2d):
    image, scribbles, _ = blobs2d
    # The teacher's fade (100 steps) is far from done when the blend hands over at 30 steps.
    _, trainer = _trainer_with_forest(image, scribbles, forest_blend_steps=30, steps=1)
    start = trainer._teacher_start_step  # the step at which the forest came in
    assert trainer.model.forest_blend is not None and trainer.step - start < 24
    trainer.train_config = replace(trainer.train_config, steps=24 - (trainer.step - start))
    list(trainer.run())  # 24 steps in: between 20 and 30 the weight falls to 0
    weight = trainer.model.forest_blend.weight
    assert 0 < weight < 0.7 * (1 - (trainer.step - start) / 100)
    trainer.train_config = replace(trainer.train_config, steps=10)
    list(trainer.run())
    assert trainer.model.forest_blend is None
    assert trainer.metadata().train["forest_blend_steps"] == 30
    with pytest.raises(ValueError, match="forest_blend_steps"):
        TrainConfig(forest_blend_steps=2)


def test_by_default_the_blend_hands_over_in_2d_only():
    # docs/benchmarks.md: a 2D network is better alone after ~900 CPU steps; a 3D one is not.
    assert TrainConfig().forest_blend_steps is None
    assert default_forest_blend_steps(2) == 900
    assert default_forest_blend_steps(3) is None
    with pytest.raises(ValueError, match="spatial_dims"):
        default_forest_blend_steps(4)


def test_preview_mixes_the_teachers_probabilities_in(blobs2d):
    image, scribbles, _ = blobs2d
    _, trainer = _trainer_with_forest(image, scribbles, feature_preview_steps=0, forest_blend=1.0)
    # With weight 1 at the start and 100 steps to fade, the preview is mostly the forest's.
    region = (slice(0, 64), slice(0, 80))
    preview = trainer.preview(region)
    forest = trainer.model.forest_blend.probabilities(trainer.source, region)
    network_only = preview.probabilities - trainer.model.forest_blend.weight * forest
    assert preview.source == "network"
    assert np.all(network_only >= -2e-3)  # what is left is (1 - w) * network probabilities
    np.testing.assert_allclose(network_only.sum(0), 1 - trainer.model.forest_blend.weight, atol=2e-3)


def test_the_teacher_is_refined_in_2d_by_default_and_the_blend_stays_the_forests(blobs2d, blobs3d):
    image, scribbles, _ = blobs2d
    source = ImageSource(image)
    taught = replace(LOSS, teacher_weight=1.0)
    trainer = Trainer(
        source,
        labels_to_target(scribbles),
        model_config=TINY,
        loss_config=taught,
        train_config=TrainConfig(device="cpu", seed=0, batch_size=2, steps=100_000, crf_refinement=0.0),
    )
    # One run until the teacher comes in (its self-training takes seconds; a run that ends first
    # abandons the fit).
    deadline = time.monotonic() + 120
    for _ in trainer.run():
        if trainer._teacher is not None or time.monotonic() > deadline:
            trainer.stop()
    teacher = trainer._teacher
    assert teacher is not None and teacher.refinement is not None
    assert teacher.refinement.weight == 1.0
    assert teacher.self_training == 8  # and self-trained (LossConfig.teacher_self_training)
    whole = (slice(0, 64), slice(0, 80))
    assert not np.allclose(teacher.read(whole), teacher.read_forest(whole), atol=1e-3)
    # The blend in previews is the forest's, as in whole-image prediction.
    blend = trainer.model.forest_blend
    np.testing.assert_allclose(blend.probabilities(source, whole), teacher.read_forest(whole), atol=2e-3)
    # Off with weight 0, and by default in 3D; a bad weight is refused.
    no_refinement = replace(taught, teacher_refinement=0)
    off = Trainer(source, labels_to_target(scribbles), model_config=TINY, loss_config=no_refinement)
    assert off.teacher_refinement() is None
    volume, sparse, _ = blobs3d
    three_d = Trainer(ImageSource(volume, channel_axis=0), labels_to_target(sparse), model_config=TINY)
    assert three_d.teacher_refinement() is None and three_d.teacher_self_training() == 0
    assert LossConfig(teacher_refinement=2).teacher_refinement == 2.0
    with pytest.raises(ValueError, match="teacher_refinement"):
        LossConfig(teacher_refinement=-1.0)
    assert replace(taught, teacher_self_training=0).teacher_self_training == 0
    for bad in (-1, 1.5, True, "8", 101):
        with pytest.raises(ValueError, match="teacher_self_training"):
            LossConfig(teacher_self_training=bad)


def test_a_forest_being_fitted_outlives_a_checkpoint_but_not_a_stop_or_a_plain_end(blobs2d):
    """A checkpoint run that ends on its step count or budget leaves the fit going for the next run."""
    image, scribbles, _ = blobs2d

    def trainer(steps: int) -> Trainer:
        train = TrainConfig(device="cpu", seed=0, batch_size=2, steps=steps, crf_refinement=0.0)
        source, target = ImageSource(image), labels_to_target(scribbles)
        return Trainer(source, target, model_config=TINY, loss_config=LOSS, train_config=train)

    checkpointed = trainer(1)
    list(checkpointed.run(checkpoint=True))  # one step: the forest is still being fitted when it ends
    assert checkpointed._teacher_job is not None
    thread, teacher, _ = checkpointed._teacher_job
    thread.join(timeout=60)
    assert not teacher.abandoned and teacher.forest is not None
    list(checkpointed.run())
    assert checkpointed._teacher is teacher  # taken up, not fitted again
    assert checkpointed._teacher_job is None and checkpointed.model.forest_blend is not None

    stopped = trainer(100_000)
    for _ in stopped.run(checkpoint=True):
        stopped.stop()
    # Told to give up (it does at its next check: tests/core/test_pixel_classifier.py), unless done.
    assert stopped._teacher_cancel.is_set()
    plain = trainer(1)
    list(plain.run())
    assert plain._teacher_cancel.is_set()
