"""The feature forest: instant previews and the teacher's soft labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scribbleseg.core.annotations import labels_to_target
from scribbleseg.core.losses import IGNORE_INDEX, teacher_cross_entropy
from scribbleseg.core.metrics import dice_iou
from scribbleseg.core.pixel_classifier import ForestTeacher, _block_features, feature_preview, temper
from scribbleseg.core.refine import MeanField, estimate_noise
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


def test_temper_keeps_the_refined_order_and_at_most_the_reference_confidence():
    rng = np.random.default_rng(0)
    for classes in (2, 3, 5):
        refined = rng.dirichlet(np.ones(classes), size=(6, 7)).transpose(2, 0, 1).astype(np.float32)
        reference = rng.dirichlet(np.ones(classes), size=(6, 7)).transpose(2, 0, 1).astype(np.float32)
        tempered = temper(refined, reference)
        np.testing.assert_allclose(tempered.sum(axis=0), 1.0, atol=1e-5)
        assert (tempered >= 0).all()
        np.testing.assert_array_equal(tempered.argmax(axis=0), refined.argmax(axis=0))
        assert (tempered.max(axis=0) <= np.maximum(reference.max(axis=0), 1 / classes) + 1e-5).all()
        # Where the refinement is the less sure of the two it is left as it is.
        less_sure = refined.max(axis=0) <= reference.max(axis=0)
        np.testing.assert_allclose(tempered[:, less_sure], refined[:, less_sure], atol=1e-6)


def test_refined_teacher_teaches_edges_and_blends_the_forest_as_it_is(blobs2d):
    image, scribbles, truth = blobs2d
    source, target = _setup(image, scribbles)
    plain = ForestTeacher(source, target, trees=20, seed=3)
    refinement = MeanField.for_noise(estimate_noise(source), spatial_dims=2)
    refined = ForestTeacher(source, target, trees=20, seed=3, refinement=refinement)
    assert plain.fit() and refined.fit()
    whole = tuple(slice(0, n) for n in source.spatial_shape)
    # The blend (read_forest) is the forest's; the soft labels taught (read) are refined.
    np.testing.assert_array_equal(refined.read_forest(whole), plain.read(whole))
    forest, soft = refined.read_forest(whole), refined.read(whole)
    assert not np.allclose(soft, forest, atol=1e-3)
    np.testing.assert_allclose(soft.sum(axis=0), 1.0, atol=2e-3)
    assert (soft.max(axis=0) <= forest.max(axis=0) + 2e-3).all()  # never more confident
    dice = [dice_iou(p.argmax(axis=0) + 1, truth)[2]["dice"] for p in (forest, soft)]
    assert dice[1] >= dice[0]
    # Computed in blocks with the refinement's halo, it is the same as in one piece.
    blocks = ForestTeacher(source, target, trees=20, seed=3, refinement=refinement, block_shape=(24, 32))
    assert blocks.fit()
    np.testing.assert_allclose(blocks.read(whole), soft, atol=2e-3)


def test_a_stop_during_the_refinement_abandons_the_fit(blobs2d):
    image, scribbles, _ = blobs2d
    source, target = _setup(image, scribbles)
    calls = []

    def stop_at_refinement() -> bool:
        calls.append(1)
        return len(calls) > 2  # one block to fit, one to predict, then the refinement's first

    refinement = MeanField.for_noise(estimate_noise(source), spatial_dims=2)
    teacher = ForestTeacher(source, target, trees=5, refinement=refinement, should_stop=stop_at_refinement)
    assert not teacher.fit() and teacher.abandoned and teacher.probabilities is None


def test_self_training_refits_on_confident_voxels_and_still_teaches_a_tempered_map(blobs2d):
    image, scribbles, truth = blobs2d
    source, target = _setup(image, scribbles)
    refinement = MeanField.for_noise(estimate_noise(source), spatial_dims=2)
    once = ForestTeacher(source, target, trees=20, seed=3, refinement=refinement)
    trained = ForestTeacher(source, target, trees=20, seed=3, refinement=refinement, self_training=4)
    assert once.fit() and trained.fit()
    whole = tuple(slice(0, n) for n in source.spatial_shape)
    forest, soft = trained.read_forest(whole), trained.read(whole)
    # A new forest (the last round's), fitted on more than the user's labels.
    assert trained.forest is not once.forest
    fitted_on = [t.forest.estimators_[0].tree_.weighted_n_node_samples[0] for t in (once, trained)]
    assert fitted_on[1] > fitted_on[0]
    assert not np.array_equal(forest, once.read_forest(whole))
    np.testing.assert_allclose(soft.sum(axis=0), 1.0, atol=2e-3)
    assert (soft.max(axis=0) <= forest.max(axis=0) + 2e-3).all()  # tempered to the last forest
    dice = [dice_iou(t.read(whole).argmax(axis=0) + 1, truth)[2]["dice"] for t in (once, trained)]
    assert dice[1] > 0.8 and dice[1] >= dice[0] - 0.02
    # In blocks (pseudo-labels chosen by position, not by block) it teaches the same map.
    blocks = ForestTeacher(
        source, target, trees=20, seed=3, refinement=refinement, self_training=4, block_shape=(24, 32)
    )
    assert blocks.fit()
    agree = blocks.read(whole).argmax(axis=0) == soft.argmax(axis=0)
    assert agree.mean() > 0.99


def test_self_training_draws_pseudo_labels_several_times_into_one_forest(blobs2d):
    image, scribbles, truth = blobs2d
    source, target = _setup(image, scribbles)
    refinement = MeanField.for_noise(estimate_noise(source), spatial_dims=2)
    kwargs = {"trees": 10, "seed": 3, "refinement": refinement, "self_training": 2}
    one = ForestTeacher(source, target, pseudo_draws=1, **kwargs)
    three = ForestTeacher(source, target, pseudo_draws=3, **kwargs)
    assert one.fit() and three.fit()
    # Sub-forests of 4, 3 and 3 trees, each on its own draw, merged into one forest of 10 trees.
    assert len(three.forest.estimators_) == three.forest.n_estimators == 10
    whole = tuple(slice(0, n) for n in source.spatial_shape)
    assert not np.array_equal(three.read_forest(whole), one.read_forest(whole))
    features = _block_features(source, three.spec, whole)
    table = features.reshape(len(features), -1).T
    trees = np.mean([tree.predict_proba(table) for tree in three.forest.estimators_], axis=0)
    np.testing.assert_allclose(three.forest.predict_proba(table), trees, atol=1e-6)
    forest = three.read_forest(whole).astype(np.float32)
    np.testing.assert_allclose(forest.reshape(len(forest), -1).T, trees, atol=2e-3)  # float16 storage
    dice = [dice_iou(t.read(whole).argmax(axis=0) + 1, truth)[2]["dice"] for t in (one, three)]
    assert dice[1] > 0.8 and dice[1] >= dice[0] - 0.03
    few = ForestTeacher(source, target, trees=2, seed=3, self_training=1, pseudo_draws=4)
    assert few.fit() and few.forest.n_estimators == 2  # one draw per tree at most
    # The draws' seeds stay in the range scikit-learn takes for the largest seed TrainConfig allows.
    largest = ForestTeacher(source, target, trees=4, seed=2**31 - 1, self_training=1)
    assert largest.fit() and largest.forest.n_estimators == 4
    with pytest.raises(ValueError, match="pseudo_draws"):
        ForestTeacher(source, target, pseudo_draws=0)


def test_pseudo_labels_near_the_boundary_when_asked(blobs2d):
    from scipy import ndimage

    from scribbleseg.core.pixel_classifier import _FeatureCache

    image, scribbles, truth = blobs2d
    source, target = _setup(image, scribbles)
    refinement = MeanField.for_noise(estimate_noise(source), spatial_dims=2)
    kwargs = {"trees": 10, "seed": 3, "refinement": refinement, "self_training": 2, "pseudo_labels": 40}
    even = ForestTeacher(source, target, pseudo_boundary=0.0, **kwargs)
    near = ForestTeacher(source, target, pseudo_boundary=2.0, **kwargs)
    assert even.fit() and near.fit()
    refined = even.read(tuple(slice(0, n) for n in source.spatial_shape))
    top = refined.argmax(axis=0)
    distance = np.where(
        top == 1, ndimage.distance_transform_edt(top == 1), ndimage.distance_transform_edt(top == 0)
    )

    # The pseudo-labels' positions are not returned; read them back from their features.
    features = _block_features(source, even.spec, tuple(slice(0, n) for n in source.spatial_shape))
    table = features.reshape(len(features), -1).T
    lookup = {row.tobytes(): i for i, row in enumerate(table)}

    def distances(teacher: ForestTeacher) -> np.ndarray:
        cache, boundary = _FeatureCache(teacher, whole=True), teacher._boundary_distance(refined)
        rows, classes = teacher._pseudo_labels(refined, 1, cache, boundary)
        assert len(rows) == len(classes) <= 2 * 40  # at most pseudo_labels per class
        where = [lookup[row.tobytes()] for row in rows.astype(table.dtype)]
        return distance.ravel()[where]

    assert np.median(distances(near)) < np.median(distances(even))
    assert np.median(distances(near)) <= 3.0
    soft = near.read(tuple(slice(0, n) for n in source.spatial_shape))
    assert dice_iou(soft.argmax(axis=0) + 1, truth)[2]["dice"] > 0.8
    with pytest.raises(ValueError, match="pseudo_boundary"):
        ForestTeacher(source, target, pseudo_boundary=-1.0)


def test_self_training_without_a_refinement_and_a_stop_in_a_round(blobs2d):
    image, scribbles, _ = blobs2d
    source, target = _setup(image, scribbles)
    plain = ForestTeacher(source, target, trees=10, self_training=2)
    assert plain.fit()
    whole = tuple(slice(0, n) for n in source.spatial_shape)
    np.testing.assert_allclose(plain.read(whole).sum(axis=0), 1.0, atol=2e-3)
    calls = []

    def stop_in_the_second_round() -> bool:
        calls.append(1)
        return len(calls) > 5  # fit, predict, then round 1's selection, gathering and prediction

    stopped = ForestTeacher(source, target, trees=5, self_training=2, should_stop=stop_in_the_second_round)
    assert not stopped.fit() and stopped.abandoned and stopped.probabilities is None
    with pytest.raises(ValueError, match="self_training"):
        ForestTeacher(source, target, self_training=-1)
    with pytest.raises(ValueError, match="pseudo_confidence"):
        ForestTeacher(source, target, pseudo_confidence=1.0)
