"""CRF refinement: noise estimate, mean-field inference, halo, trainer and prediction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr
from scipy import ndimage

from scribbleseg.core.annotations import labels_to_target
from scribbleseg.core.blockwise import model_fingerprint, predict_blockwise, predict_grid
from scribbleseg.core.config import LossConfig, ModelConfig, TrainConfig
from scribbleseg.core.engine import Trainer
from scribbleseg.core.inference import predict_probabilities
from scribbleseg.core.models import build_model
from scribbleseg.core.refine import (
    NOISE_FLOOR,
    NOISE_WIDTHS,
    MeanField,
    estimate_noise,
    noise_of,
    with_refinement_weight,
)
from scribbleseg.core.volume import ImageSource
from scribbleseg.errors import ConfigError

TINY = ModelConfig(features=(4, 4, 8, 8, 16, 4))
PCE = LossConfig(crf_weight=0.0, contrastive_weight=0.0, dynamic_crf_weight=0.0, teacher_weight=0.0)


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _disk_case(noise: float = 0.03, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A bright disk on a dark ground, and probabilities that make it 2 px too wide.

    Returns the normalised (1, Y, X) image, (2, Y, X) probabilities (ground, disk) and the truth.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:64, :80]
    truth = (yy - 30) ** 2 + (xx - 40) ** 2 < 15**2
    image = truth.astype(np.float32) * 0.6 + 0.2 + rng.normal(0, noise, truth.shape).astype(np.float32)
    ring = ndimage.binary_dilation(truth, iterations=2) & ~truth
    disk = np.where(truth, 0.9, np.where(ring, 0.6, 0.1)).astype(np.float32)
    return image[None], np.stack([1 - disk, disk]), truth


def _dice(mask: np.ndarray, truth: np.ndarray) -> float:
    return 2 * (mask & truth).sum() / (mask.sum() + truth.sum())


def test_noise_is_recovered_across_edges_and_shading():
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:200, :300]
    shading = 0.3 * xx / 300 + 0.5 * ((yy // 50) % 2)  # ramps and steps: not noise
    for sd in (0.01, 0.05):
        image = (shading + rng.normal(0, sd, shading.shape))[None]
        (estimate,) = noise_of(image)
        assert estimate == pytest.approx(sd, rel=0.1)
    # One value per channel; a flat channel has none.
    two = np.stack([shading + rng.normal(0, 0.02, shading.shape), np.zeros_like(shading)])
    first, second = noise_of(two)
    assert first == pytest.approx(0.02, rel=0.1) and second == 0.0


def test_large_images_are_sampled_and_flat_images_get_the_floor():
    rng = np.random.default_rng(2)
    image = rng.normal(0.5, 0.04, (300, 400)).astype(np.float32)
    source = ImageSource(image)
    whole = estimate_noise(source)
    sampled = estimate_noise(source, patch_size=(64, 64), max_voxels=20_000)
    assert sampled[0] == pytest.approx(whole[0], rel=0.1)
    # Normalisation divides by the image's 1–99.8 percentile range: the estimate is in those units.
    assert whole[0] == pytest.approx(0.04 / np.ptp(np.percentile(image, [1, 99.8])), rel=0.1)
    assert estimate_noise(ImageSource(np.zeros((40, 40), np.float32))) == (NOISE_FLOOR,)
    # A sample of a large image estimates what the whole image gives, also where most of it is
    # a flat surround.
    framed = np.zeros((600, 600), np.float32)
    framed[50:550, 50:550] = rng.normal(0.5, 0.04, (500, 500))
    sampled = estimate_noise(ImageSource(framed), patch_size=(50, 50), max_voxels=100_000)
    assert sampled[0] == pytest.approx(noise_of(ImageSource(framed).read())[0], rel=0.2)


def test_mean_field_moves_the_undecided_band_to_the_edge():
    image, probabilities, truth = _disk_case()
    before = probabilities.argmax(0) == 1
    refinement = MeanField.for_noise(noise_of(image))
    assert refinement.sigma_intensity[0] == pytest.approx(NOISE_WIDTHS * 0.03, rel=0.15)
    copy = probabilities.copy()
    refined = refinement.apply(probabilities, image, (1.0, 1.0))
    np.testing.assert_array_equal(probabilities, copy)  # the input is not modified
    assert refined.shape == probabilities.shape and refined.dtype == np.float32
    np.testing.assert_allclose(refined.sum(0), 1.0, atol=1e-5)
    after = refined.argmax(0) == 1
    assert _dice(before, truth) < 0.9
    assert _dice(after, truth) > 0.98
    # Far from the edge nothing changes class.
    inside = ndimage.binary_erosion(truth, iterations=4)
    outside = ~ndimage.binary_dilation(truth, iterations=6)
    assert after[inside].all() and not after[outside].any()


def test_mean_field_uses_every_channel_and_anisotropic_spacing():
    image, probabilities, truth = _disk_case()
    # The edge is only in the second channel; the first is noise.
    rng = np.random.default_rng(3)
    two = np.concatenate([rng.normal(0.5, 0.03, image.shape).astype(np.float32), image])
    refined = MeanField.for_noise(noise_of(two)).apply(probabilities, two, (1.0, 1.0))
    assert _dice(refined.argmax(0) == 1, truth) > 0.98
    # 3D with very thick slices: the same disk on 4 slices 13 units apart is refined slice by slice
    # (neighbours 13 units away weigh less than the cut-off).
    volume = np.repeat(image[:, None], 4, axis=1)
    stack = np.repeat(probabilities[:, None], 4, axis=1)
    refinement = MeanField.for_noise(noise_of(image))
    assert refinement.halo((13.0, 1.0, 1.0)) == (0, 15, 15)
    assert refinement.halo((5.0, 1.0, 1.0)) == (10, 15, 15)  # 2 slices of the 3 reach
    assert refinement.halo((2.0, 1.0, 1.0)) == (15, 15, 15)
    refined3d = refinement.apply(stack, volume, (13.0, 1.0, 1.0))
    refined2d = refinement.apply(probabilities, image, (1.0, 1.0))
    np.testing.assert_allclose(refined3d[:, 2], refined2d, atol=1e-5)


def test_slabs_and_regions_give_the_values_of_one_piece():
    rng = np.random.default_rng(5)
    image = ndimage.gaussian_filter(rng.random((1, 30, 24, 20)), 1.5).astype(np.float32)
    logits = ndimage.gaussian_filter(rng.normal(0, 3, (3, 30, 24, 20)), (0, 1, 1, 1))
    probabilities = (np.exp(logits) / np.exp(logits).sum(0)).astype(np.float32)
    refinement = MeanField((0.02,), iterations=2, window_radius=2)
    assert refinement.halo((1.0, 1.0, 1.0)) == (4, 4, 4)
    whole = refinement.apply(probabilities, image, (1.0, 1.0, 1.0))
    assert np.abs(whole - probabilities).max() > 0.05
    # Slabs of 2 planes (with 4 planes of halo on each side) ...
    slabs = refinement.apply(probabilities, image, (1.0, 1.0, 1.0), max_voxels=10 * 24 * 20)
    np.testing.assert_allclose(slabs, whole, atol=1e-6)
    # ... and a region: its values, with the context around it.
    region = (slice(5, 17), slice(3, 20), slice(0, 9))
    part = refinement.apply(probabilities, image, (1.0, 1.0, 1.0), region=region, max_voxels=3000)
    np.testing.assert_allclose(part, whole[(slice(None), *region)], atol=1e-6)
    with pytest.raises(ValueError, match="not a non-empty region"):
        refinement.apply(
            probabilities, image, (1.0, 1.0, 1.0), region=(slice(5, 5), slice(None), slice(None))
        )


def test_bad_arguments_are_refused():
    image, probabilities, _ = _disk_case()
    refinement = MeanField((0.05,))
    with pytest.raises(ValueError, match="set up for 1 channel"):
        refinement.apply(probabilities, np.concatenate([image, image]), (1.0, 1.0))
    with pytest.raises(ValueError, match="differ in size"):
        refinement.apply(probabilities, image[:, :10], (1.0, 1.0))
    with pytest.raises(ValueError, match="one value per spatial axis"):
        refinement.apply(probabilities, image, (1.0,))
    for bad, message in [
        ({"sigma_intensity": ()}, "one value per channel"),
        ({"sigma_intensity": (0.0,)}, "sigma_intensity must be a finite number > 0"),
        ({"sigma_intensity": "0.1"}, "one number per channel"),
        ({"sigma_intensity": (0.1,), "weight": -1}, "weight must be"),
        ({"sigma_intensity": (0.1,), "iterations": 0}, "iterations must be an integer"),
        ({"sigma_intensity": (0.1,), "window_radius": True}, "window_radius must be an integer"),
    ]:
        with pytest.raises(ConfigError, match=message):
            MeanField(**bad)
    assert MeanField.from_dict(refinement.to_dict()) == refinement
    with pytest.raises(ConfigError, match="exactly the keys"):
        MeanField.from_dict({"sigma_intensity": [0.1]})
    for value in (-1.0, float("nan"), 101.0):
        with pytest.raises(ConfigError, match="crf_refinement must be in"):
            TrainConfig(crf_refinement=value)


@pytest.mark.parametrize(("shape", "block"), [((70, 53), (16, 16)), ((12, 40, 36), (4, 16, 16))])
def test_blocks_with_the_halo_equal_the_whole_image(tmp_path, shape, block):
    rng = np.random.default_rng(0)
    image = ndimage.gaussian_filter(rng.random(shape), 2).astype(np.float32)
    source = ImageSource(image, spacing=(2.0, 1.0, 1.0)[-len(shape) :])
    torch.manual_seed(0)
    model = build_model(TINY, spatial_dims=len(shape), in_channels=1, num_classes=3).eval()
    roi = (16,) * len(shape)
    plain = predict_grid(model, source, roi_size=roi, device="cpu")
    model.refinement = MeanField((0.02,), weight=2.0)
    assert model_fingerprint(model) != model_fingerprint(
        build_model(TINY, spatial_dims=len(shape), in_channels=1, num_classes=3)
    )
    whole = predict_grid(model, source, roi_size=roi, device="cpu")
    assert np.abs(whole - plain).max() > 0.05  # the refinement does something here
    np.testing.assert_allclose(whole, model.refinement.apply(plain, source.read(), source.spacing), atol=1e-5)
    # A region, and a blockwise prediction, are the whole image's values there.
    region = tuple(slice(n // 3, n // 3 + b) for n, b in zip(shape, block, strict=True))
    part = predict_grid(model, source, region, roi_size=roi, device="cpu")
    np.testing.assert_allclose(part, whole[(slice(None), *region)], atol=1e-5)
    predict_blockwise(
        model,
        source,
        tmp_path / "labels.zarr",
        class_values=(1, 2, 3),
        probabilities=tmp_path / "probabilities.zarr",
        chunks=block,
        block_shape=block,
        roi_size=roi,
        device="cpu",
    )
    np.testing.assert_allclose(zarr.open_array(str(tmp_path / "probabilities.zarr"))[...], whole, atol=1e-4)


def test_a_model_predicts_with_another_refinement_weight_without_being_changed():
    image, _, _ = _disk_case()
    source = ImageSource(image[0])
    model = build_model(TINY, spatial_dims=2, in_channels=1, num_classes=2).eval()
    assert with_refinement_weight(model, 0.0, source) is model  # nothing to change
    refined = with_refinement_weight(model, 2.0, source)  # none yet: one for the image's noise
    assert model.refinement is None
    assert refined.refinement == MeanField.for_noise(estimate_noise(source), weight=2.0, spatial_dims=2)
    assert refined.refinement.window_radius == 5
    assert refined.segmentation_head is model.segmentation_head  # the same weights
    model.refinement = refined.refinement
    assert with_refinement_weight(model, 2.0, source) is model
    assert with_refinement_weight(model, 0.5, source).refinement.weight == 0.5
    off = with_refinement_weight(model, 0.0, source)
    assert off.refinement is None and model.refinement is not None
    plain = predict_grid(off, source, roi_size=(32, 32), device="cpu")
    model.refinement = None
    np.testing.assert_array_equal(plain, predict_grid(model, source, roi_size=(32, 32), device="cpu"))


def _blobs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[:64, :64]
    truth = ((yy - 20) ** 2 + (xx - 22) ** 2 < 81) | ((yy - 44) ** 2 + (xx - 42) ** 2 < 100)
    image = (truth * 0.6 + 0.2 + rng.normal(0, 0.05, truth.shape)).astype(np.float32)
    labels = np.zeros(truth.shape, np.uint8)
    labels[ndimage.binary_erosion(truth, iterations=4)] = 2
    labels[~ndimage.binary_dilation(truth, iterations=4) & (xx % 8 == 0)] = 1
    return image, labels


def test_the_trainer_gives_the_model_its_refinement_and_previews_with_it():
    image, labels = _blobs()
    source = ImageSource(image)
    config = TrainConfig(device="cpu", steps=10, batch_size=2, forest_blend=0.0, feature_preview_steps=0)
    assert config.crf_refinement == 1.0  # on by default
    trainer = Trainer(
        source, labels_to_target(labels), model_config=TINY, loss_config=PCE, train_config=config
    )
    list(trainer.run())
    refinement = trainer.model.refinement
    assert refinement == MeanField.for_noise(estimate_noise(source), weight=1.0, spatial_dims=2)
    assert (
        refinement.halo((1.0, 1.0)) == (25, 25)
        and MeanField.for_noise((0.1,), spatial_dims=3).window_radius == 3
    )
    assert refinement.sigma_intensity[0] == pytest.approx(
        NOISE_WIDTHS * 0.05 / np.ptp(np.percentile(image, [1, 99.8])), rel=0.15
    )
    refined = predict_probabilities(trainer.model, source, device="cpu")
    trainer.model.refinement = None
    plain = predict_probabilities(trainer.model, source, device="cpu")
    np.testing.assert_allclose(refined, refinement.apply(plain, source.read(), (1.0, 1.0)), atol=1e-5)
    # The preview of the whole image (no halo needed) is the refined prediction.
    trainer.model.refinement = refinement
    preview = trainer.preview((slice(0, 64), slice(0, 64)))
    assert preview is not None and preview.source == "network"
    np.testing.assert_allclose(preview.probabilities, refined, atol=2e-2)
    # A part of it is computed with the refinement's halo: the same values there.
    part = trainer.preview((slice(10, 40), slice(20, 50)))
    np.testing.assert_allclose(part.probabilities, refined[:, 10:40, 20:50], atol=2e-2)
    # Off: no refinement anywhere.
    off = TrainConfig(device="cpu", steps=2, batch_size=2, forest_blend=0.0, crf_refinement=0.0)
    trainer = Trainer(source, labels_to_target(labels), model_config=TINY, loss_config=PCE, train_config=off)
    list(trainer.run())
    assert trainer.model.refinement is None and trainer.refinement() is None
