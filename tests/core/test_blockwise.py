"""Blockwise whole-image prediction: no seams, resumable, bounded to blocks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import zarr

from scribbleseg.core.blockwise import (
    BlockwiseProgress,
    WindowGrid,
    predict_blockwise,
    predict_grid,
)
from scribbleseg.core.config import ModelConfig
from scribbleseg.core.inference import probabilities_to_labels
from scribbleseg.core.models import build_model
from scribbleseg.core.volume import ImageSource
from scribbleseg.errors import ConfigError, InputError
from scribbleseg.io.arrays import read_array, write_array

TINY = ModelConfig(features=(4, 4, 8, 8, 16, 4))


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_model(spatial_dims: int, in_channels: int, num_classes: int, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(TINY, spatial_dims=spatial_dims, in_channels=in_channels, num_classes=num_classes)
    # Non-trivial batch-norm statistics, so that eval differs from train mode.
    for module in model.modules():
        if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def reference_prediction(model, image: np.ndarray, grid: WindowGrid) -> np.ndarray:
    """Brute force: every grid window of the reflect-padded image, Gaussian weights, normalised."""
    pad = [(0, 0)] + [
        (-o, max(0, o + (n - 1) * s + r - size))
        for o, n, s, r, size in zip(
            grid.origin, grid.counts, grid.stride, grid.roi_size, grid.image_shape, strict=True
        )
    ]
    padded = np.pad(image, pad, mode="reflect")
    weight = grid.profiles()[0]
    for profile in grid.profiles()[1:]:
        weight = np.multiply.outer(weight, profile)
    padded_shape = padded.shape[1:]
    numerator = np.zeros((model.num_classes, *padded_shape), dtype=np.float64)
    denominator = np.zeros(padded_shape, dtype=np.float64)
    for index in itertools.product(*(range(n) for n in grid.counts)):
        start = [o + k * s - o for o, k, s in zip(grid.origin, index, grid.stride, strict=True)]
        box = tuple(slice(a, a + r) for a, r in zip(start, grid.roi_size, strict=True))
        with torch.no_grad():
            logits = model(torch.from_numpy(padded[(slice(None), *box)][None].copy())).logits
        numerator[(slice(None), *box)] += torch.softmax(logits, 1)[0].numpy() * weight
        denominator[box] += weight
    crop = tuple(slice(-o, -o + size) for o, size in zip(grid.origin, grid.image_shape, strict=True))
    return (numerator[(slice(None), *crop)] / denominator[crop]).astype(np.float32)


CASES = [
    # spatial shape (not a multiple of the blocks), chunks, block shape, window size
    ((21, 45, 38), (8, 16, 16), (8, 16, 32), (16, 32, 32)),
    ((70, 53), (16, 16), (32, 16), (32, 32)),
]


@pytest.mark.parametrize(("shape", "chunks", "block", "roi"), CASES)
def test_blockwise_equals_whole_image_prediction(tmp_path, shape, chunks, block, roi):
    rng = np.random.default_rng(0)
    image = rng.random((2, *shape), dtype=np.float32)
    source = ImageSource(image, channel_axis=0)
    model = tiny_model(len(shape), 2, 3)
    whole = predict_grid(model, source, roi_size=roi, device="cpu")
    np.testing.assert_allclose(whole.sum(0), 1.0, atol=1e-5)

    result = predict_blockwise(
        model,
        source,
        tmp_path / "labels.zarr",
        class_values=(1, 2, 5),
        probabilities=tmp_path / "probabilities.zarr",
        chunks=chunks,
        block_shape=block,
        roi_size=roi,
        batch_size=3,  # batching differently from the whole-image run changes nothing
        device="cpu",
    )
    n_blocks = np.prod([-(-s // b) for s, b in zip(shape, block, strict=True)])
    assert result.blocks_total == result.blocks_computed == n_blocks > 4
    probabilities = zarr.open_array(str(tmp_path / "probabilities.zarr"))[...]
    labels = read_array(tmp_path / "labels.zarr").data
    np.testing.assert_allclose(probabilities, whole, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(labels, probabilities_to_labels(whole, (1, 2, 5)))
    assert labels.dtype == np.uint8

    # ... and, in float32, an independent brute-force implementation of the same definition
    # (the default above uses bf16 on CPUs that have it, which differs from float32 by ~1e-3).
    grid = WindowGrid.for_image(shape, roi_size=roi)
    whole32 = predict_grid(model, source, roi_size=roi, device="cpu", amp=False)
    np.testing.assert_allclose(whole32, reference_prediction(model, image, grid), atol=1e-4, rtol=0)


def test_grid_windows_touching_matches_brute_force():
    for shape, roi, overlap in [((37,), (16,), 0.25), ((5,), (16,), 0.5), ((100,), (32,), 0.0)]:
        grid = WindowGrid.for_image((*shape, 20), roi_size=(*roi, 32), overlap=overlap)
        size, r, s, o = shape[0], grid.roi_size[0], grid.stride[0], grid.origin[0]
        assert o <= 0 and o + (grid.counts[0] - 1) * s + r >= size  # the grid covers the image
        for a in range(size):
            for b in range(a + 1, size + 1):
                expected = [k for k in range(grid.counts[0]) if o + k * s < b and o + k * s + r > a]
                got = grid.windows_touching((slice(a, b), slice(0, 20)))[0]
                assert list(got) == expected


def test_tta_and_region(tmp_path):
    image = np.random.default_rng(1).random((30, 40), dtype=np.float32)
    source = ImageSource(image)
    model = tiny_model(2, 1, 2)
    whole = predict_grid(model, source, device="cpu", tta=True)
    part = predict_grid(model, source, (slice(3, 20), slice(5, 40)), device="cpu", tta=True)
    np.testing.assert_allclose(part, whole[:, 3:20, 5:40], atol=1e-6)
    np.testing.assert_allclose(whole.sum(0), 1.0, atol=1e-5)
    assert model.training is False


def test_interrupted_prediction_resumes_only_missing_blocks(tmp_path):
    image = np.random.default_rng(2).random((1, 20, 50, 40), dtype=np.float32)
    source = ImageSource(image, channel_axis=0)
    model = tiny_model(3, 1, 2)
    options = {"chunks": (8, 16, 16), "block_shape": (8, 16, 16), "roi_size": (16, 32, 32), "device": "cpu"}
    reference = predict_blockwise(model, source, tmp_path / "reference.zarr", **options)
    total = reference.blocks_total
    assert total == 3 * 4 * 3

    class Crash(Exception):
        pass

    def crash_after_5(update: BlockwiseProgress) -> None:
        if update.blocks_computed == 5:
            raise Crash

    out = tmp_path / "labels.zarr"
    with pytest.raises(Crash):
        predict_blockwise(
            model, source, out, probabilities=tmp_path / "p.zarr", progress=crash_after_5, **options
        )
    assert zarr.open_array(str(out)).attrs["scribbleseg"]["complete"] is False
    with pytest.raises(InputError, match="incomplete prediction"):
        read_array(out)

    seen: list[BlockwiseProgress] = []
    result = predict_blockwise(
        model, source, out, probabilities=tmp_path / "p.zarr", progress=seen.append, **options
    )
    assert (result.blocks_skipped, result.blocks_computed) == (5, total - 5)
    assert len(seen) == total - 5 and seen[-1].blocks_done == total and seen[-1].fraction == 1.0
    np.testing.assert_array_equal(read_array(out).data, read_array(tmp_path / "reference.zarr").data)
    assert zarr.open_array(str(tmp_path / "p.zarr")).attrs["scribbleseg"]["complete"] is True

    # A finished output is not recomputed; other settings start over.
    again = predict_blockwise(model, source, out, probabilities=tmp_path / "p.zarr", **options)
    assert again.blocks_computed == 0 and again.blocks_skipped == total
    other = predict_blockwise(model, source, out, **{**options, "block_shape": (16, 32, 32)})
    assert other.blocks_computed == other.blocks_total == 2 * 2 * 2


def test_refuses_to_overwrite_what_is_not_a_prediction(tmp_path):
    source = ImageSource(np.zeros((20, 20), dtype=np.float32))
    model = tiny_model(2, 1, 2)
    (tmp_path / "folder.zarr").mkdir()
    (tmp_path / "folder.zarr" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="folder of that name exists"):
        predict_blockwise(model, source, tmp_path / "folder.zarr", device="cpu")
    zarr.create_array(str(tmp_path / "other.zarr"), shape=(4, 4), dtype="u1")
    with pytest.raises(InputError, match="not a ScribbleSeg prediction"):
        predict_blockwise(model, source, tmp_path / "other.zarr", device="cpu")
    with pytest.raises(InputError, match="does not exist"):
        predict_blockwise(model, source, tmp_path / "missing" / "out.zarr", device="cpu")
    with pytest.raises(ConfigError, match="multiple of the output chunks"):
        predict_blockwise(
            model, source, tmp_path / "out.zarr", chunks=(8, 8), block_shape=(12, 8), device="cpu"
        )
    # An empty folder (what a run that failed while creating its output leaves) is not in the way.
    (tmp_path / "empty.zarr").mkdir()
    result = predict_blockwise(model, source, tmp_path / "empty.zarr", device="cpu")
    assert result.blocks_computed == result.blocks_total >= 1


def test_lazy_sources_give_the_same_prediction(tmp_path):
    import dask.array as da

    from scribbleseg.io.ome import write_ome_zarr

    image = np.random.default_rng(3).random((2, 10, 40, 33), dtype=np.float32)
    write_array(tmp_path / "v3.zarr", image, axes="CZYX", chunks=(1, 4, 16, 16))
    v2 = zarr.create_array(
        str(tmp_path / "v2.zarr"), shape=image.shape, chunks=(1, 4, 16, 16), dtype="f4", zarr_format=2
    )
    v2[...] = image
    write_ome_zarr(tmp_path / "ome.zarr", image, axes="CZYX", labels=False, chunks=(1, 4, 16, 16))
    write_array(tmp_path / "image.tif", image, axes="CZYX")  # ImageJ, zlib-compressed pages
    np.save(tmp_path / "image.npy", image)
    model = tiny_model(3, 2, 2)
    results = {}
    for name in ("v3.zarr", "v2.zarr", "ome.zarr", "image.tif", "image.npy"):
        data = read_array(tmp_path / name, lazy=True)
        assert isinstance(data.data, (da.Array, np.memmap)), name  # nothing loaded yet
        channel_axis = data.axes.index("C") if data.axes and "C" in data.axes else 0
        source = ImageSource(data.data, channel_axis=channel_axis)
        out = tmp_path / f"labels_{name}.zarr"
        predict_blockwise(model, source, out, chunks=(4, 16, 16), block_shape=(4, 16, 16), device="cpu")
        results[name] = read_array(out).data
    for name, labels in results.items():
        np.testing.assert_array_equal(labels, results["v3.zarr"], err_msg=name)
