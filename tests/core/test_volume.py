from __future__ import annotations

import itertools
import math
import warnings

import dask.array as da
import numpy as np
import pytest
import zarr

from scribbleseg.core.volume import (
    ImageSource,
    Normalisation,
    array_chunks,
    block_regions,
    grow_block_shape,
    region_bounds,
)
from scribbleseg.errors import ConfigError, InputError


class RecordingArray:
    """A real array wrapper that records every region read from it."""

    def __init__(self, data) -> None:
        self.data = data
        self.shape = tuple(data.shape)
        self.dtype = data.dtype
        self.ndim = len(self.shape)
        self.chunks = array_chunks(data)
        self.keys: list[tuple[slice, ...]] = []

    def __getitem__(self, key):
        self.keys.append(key)
        return self.data[key]

    def chunks_touched(self) -> set[tuple[int, ...]]:
        touched = set()
        for key in self.keys:
            ranges = []
            for piece, size, chunk in zip(key, self.shape, self.chunks, strict=True):
                start, stop, _ = piece.indices(size)
                ranges.append(range(start // chunk, (stop - 1) // chunk + 1))
            touched.update(itertools.product(*ranges))
        return touched

    def voxels_read(self) -> int:
        return sum(
            math.prod(len(range(*p.indices(s))) for p, s in zip(key, self.shape, strict=True))
            for key in self.keys
        )


def smooth_image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(0, 3, s) for s in shape], indexing="ij")
    return (np.sin(sum(grids)) * 100 + rng.normal(0, 5, shape)).astype(np.float32)


# -- layouts ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "channel_axis", "expected_shape"),
    [
        ((11, 13), None, (1, 11, 13)),
        ((5, 11, 13), None, (1, 5, 11, 13)),
        ((3, 11, 13), 0, (3, 11, 13)),
        ((11, 13, 3), -1, (3, 11, 13)),
        ((11, 13, 3), 2, (3, 11, 13)),
        ((5, 2, 11, 13), 1, (2, 5, 11, 13)),
        ((2, 5, 11, 13), 0, (2, 5, 11, 13)),
        ((5, 11, 13, 4), -1, (4, 5, 11, 13)),
        ((5, 11, 1, 13), -2, (1, 5, 11, 13)),
    ],
)
def test_channel_axis_layouts(shape, channel_axis, expected_shape) -> None:
    data = np.arange(math.prod(shape), dtype=np.uint16).reshape(shape)
    source = ImageSource(data, channel_axis=channel_axis)
    assert source.shape == expected_shape
    assert source.n_channels == expected_shape[0]
    assert source.spatial_shape == expected_shape[1:]
    assert source.spatial_dims == len(expected_shape) - 1
    assert source.spacing == (1.0,) * source.spatial_dims
    assert source.dtype == np.uint16 and source.array is data
    view = data[np.newaxis] if channel_axis is None else np.moveaxis(data, channel_axis, 0)
    np.testing.assert_array_equal(source.read_raw(), view)
    region = tuple(slice(1, s - 1) for s in source.spatial_shape)
    raw = source.read_raw(region)
    np.testing.assert_array_equal(raw, view[(slice(None), *region)])
    assert raw.dtype == np.uint16 and raw.flags.c_contiguous
    raw[...] = 0
    assert data.any()  # read_raw never returns a view of the backing array


def test_zarr_and_dask_backings_read_only_the_region(tmp_path) -> None:
    data = np.arange(4 * 9 * 10 * 11, dtype=np.int32).reshape(9, 10, 11, 4)
    on_disk = zarr.create_array(tmp_path / "img.zarr", shape=data.shape, chunks=(3, 5, 5, 4), dtype="i4")
    on_disk[...] = data
    region = (slice(2, 5), slice(0, 4), slice(6, 11))
    expected = np.moveaxis(data, -1, 0)[(slice(None), *region)]
    for backing in (on_disk, da.from_array(data, chunks=(3, 5, 5, 4))):
        recording = RecordingArray(backing)
        source = ImageSource(recording, channel_axis=-1, spacing=(2, 0.5, 0.5))
        assert source.spacing == (2.0, 0.5, 0.5)
        np.testing.assert_array_equal(source.read_raw(region), expected)
        assert recording.keys == [(slice(2, 5), slice(0, 4), slice(6, 11), slice(None))]


@pytest.mark.parametrize(
    ("data", "kwargs", "message"),
    [
        (
            np.zeros((2, 3, 4, 5)),
            {},
            r"shape \(2, 3, 4, 5\) has 4 spatial dimensions; expected 2 \(Y, X\) or 3",
        ),
        (np.zeros((7,)), {}, r"shape \(7,\) has 1 spatial"),
        (np.zeros((3, 7)), {"channel_axis": 0}, r"1 spatial dimensions after removing channel axis 0"),
        (np.zeros((100, 20, 30)), {"channel_axis": 0}, r"100 channels .* is channel_axis the right axis"),
        (np.zeros((4, 5, 6)), {"channel_axis": 3}, r"channel_axis 3 is out of range .* \(4, 5, 6\)"),
        (np.zeros((4, 5, 6)), {"channel_axis": -4}, r"channel_axis -4 is out of range"),
        (np.zeros((4, 5), complex), {}, "dtype complex128 is not supported"),
        (np.zeros((4, 5), object), {}, "dtype object is not supported"),
        (np.zeros((4, 5), "U3"), {}, "is not supported"),
        (np.zeros((0, 5)), {}, "is empty"),
        (np.zeros((4, 5)), {"spacing": (1.0,)}, r"spacing \(1\.0,\) has 1 entries but the image has 2"),
        (np.zeros((4, 5)), {"spacing": (1.0, 0.0)}, "finite numbers > 0"),
        (np.zeros((4, 5)), {"spacing": (1.0, np.nan)}, "finite numbers > 0"),
        (np.zeros((4, 5)), {"spacing": "ab"}, "spacing"),
        (np.zeros((2, 4, 5)), {"channel_axis": 0, "normalisation": Normalisation((0,), (1,))}, "1 channel"),
    ],
)
def test_bad_images_raise_input_error(data, kwargs, message) -> None:
    with pytest.raises(InputError, match=message):
        ImageSource(data, **kwargs)


def test_bool_and_list_images() -> None:
    source = ImageSource(np.eye(5, 6, dtype=bool))
    assert source.read().dtype == np.float32 and source.read().max() == 1.0
    assert ImageSource([[1, 2], [3, 4]]).shape == (1, 2, 2)


def test_read_raw_rejects_regions_outside_the_image() -> None:
    source = ImageSource(np.zeros((6, 7)))
    with pytest.raises(ValueError, match="outside"):
        source.read_raw((slice(-1, 3), slice(0, 2)))
    with pytest.raises(ValueError, match="2 dimensions"):
        source.read_raw((slice(0, 3),))


# -- reading with padding -----------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "region"),
    [
        ((9, 11), ((-3, 5), (8, 15))),
        ((9, 11), ((-20, 30), (-1, 12))),  # much wider than the image: reflection repeats
        ((5, 7, 9), ((-2, 3), (4, 9), (-4, 13))),
        ((3, 1, 10), ((-5, 8), (-2, 3), (0, 10))),  # an axis of size 1 is repeated
        ((2, 3), ((-16, 16), (-16, 16))),  # image smaller than the patch
        ((6, 8), ((1, 5), (2, 6))),  # inside
        ((6, 8), ((8, 12), (-9, -4))),  # entirely outside
    ],
)
def test_read_pads_by_reflection(shape, region) -> None:
    data = (
        smooth_image(shape)
        if len(shape) == 2
        else np.arange(math.prod(shape), dtype=np.float32).reshape(shape)
    )
    source = ImageSource(
        np.stack([data, 2 * data]), channel_axis=0, normalisation=Normalisation((0, 0), (1, 1))
    )
    out = source.read(tuple(slice(a, b) for a, b in region))
    assert out.shape == (2, *(b - a for a, b in region)) and out.dtype == np.float32
    widths = [(max(0, -a), max(0, b - s)) for (a, b), s in zip(region, shape, strict=True)]
    padded = data
    for axis, (width, size) in enumerate(zip(widths, shape, strict=True)):  # an axis of size 1 cannot reflect
        axis_widths = [(0, 0)] * len(shape)
        axis_widths[axis] = width
        padded = np.pad(padded, axis_widths, mode="edge" if size == 1 else "reflect")
    crop = tuple(slice(a + w[0], b + w[0]) for (a, b), w in zip(region, widths, strict=True))
    np.testing.assert_array_equal(out[0], padded[crop])
    np.testing.assert_array_equal(out[1], 2 * padded[crop])


def test_read_pad_to_extends_past_the_stop() -> None:
    data = smooth_image((10, 12))
    source = ImageSource(data, normalisation=Normalisation((0,), (1,)))
    out = source.read(pad_to=(16, 16))
    assert out.shape == (1, 16, 16)
    np.testing.assert_array_equal(out[0, :10, :12], data)
    np.testing.assert_array_equal(out[0], np.pad(data, ((0, 6), (0, 4)), mode="reflect"))
    assert source.read((slice(0, 20), slice(0, 4)), pad_to=(16, 16)).shape == (1, 20, 16)


def test_read_normalises_with_the_source_normalisation() -> None:
    data = np.arange(2 * 30 * 40, dtype=np.uint16).reshape(2, 30, 40)
    source = ImageSource(data, channel_axis=0)
    low, high = np.percentile(data.reshape(2, -1), [1.0, 99.8], axis=1)
    assert source.normalisation.low == pytest.approx(tuple(low))
    assert source.normalisation.high == pytest.approx(tuple(high))
    out = source.read((slice(3, 8), slice(-2, 5)))
    expected = np.pad(data, ((0, 0), (0, 0), (2, 0)), mode="reflect")[:, 3:8, 0:7] - low[:, None, None]
    np.testing.assert_allclose(out, expected / (high - low)[:, None, None], rtol=1e-5)


# -- normalisation -------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint32, np.int64, np.float32, np.float64, bool])
def test_normalisation_apply(dtype) -> None:
    block = (np.arange(2 * 3 * 5).reshape(2, 3, 5) % 7).astype(dtype)
    before = block.copy()
    normalisation = Normalisation(low=(1.0, 0.0), high=(5.0, 2.0))
    out = normalisation.apply(block)
    assert out.dtype == np.float32 and out.shape == block.shape
    as_float = block.astype(np.float64)
    expected = np.stack([(as_float[0] - 1) / 4, as_float[1] / 2])
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    np.testing.assert_array_equal(block, before)


def test_normalisation_keeps_precision_of_wide_integers() -> None:
    block = np.array([[4_000_000_000, 4_000_000_010]], dtype=np.uint32)
    out = Normalisation((4_000_000_000.0,), (4_000_000_010.0,)).apply(block)
    np.testing.assert_allclose(out, [[0.0, 1.0]])


def test_normalisation_guards_empty_range_and_non_finite() -> None:
    block = np.array([[3.0, 3.0, np.nan, np.inf, -np.inf]])
    out = Normalisation((3.0,), (3.0,)).apply(block)
    np.testing.assert_array_equal(out, [[0.0, 0.0, 0.0, 0.0, 0.0]])
    assert np.isnan(block[0, 2])


def test_normalisation_round_trips_and_validates() -> None:
    normalisation = Normalisation((0, 1.5), (2, 3))
    assert Normalisation.from_dict(normalisation.to_dict()) == normalisation
    assert normalisation.to_dict() == {"low": [0.0, 1.5], "high": [2.0, 3.0]}
    with pytest.raises(ConfigError):
        Normalisation.from_dict({"low": [0], "high": [1], "mean": [0]})
    with pytest.raises(ConfigError, match="one low and one high"):
        Normalisation((0, 1), (1,))
    with pytest.raises(ConfigError, match="finite"):
        Normalisation((np.nan,), (1,))
    with pytest.raises(ConfigError, match="high must be >= low"):
        Normalisation((2,), (1,))
    with pytest.raises(InputError, match="channel"):
        normalisation.apply(np.zeros((3, 4, 4)))


def test_normalisation_from_a_sample_reads_a_bounded_number_of_chunks(tmp_path) -> None:
    shape, chunks = (256, 256, 256), (64, 64, 64)
    on_disk = zarr.create_array(
        tmp_path / "big.zarr", shape=shape, chunks=chunks, dtype="u2", compressors=None
    )
    rng = np.random.default_rng(0)
    for z in range(0, shape[0], chunks[0]):
        on_disk[z : z + chunks[0]] = rng.integers(100, 1101, size=(chunks[0], *shape[1:]), dtype=np.uint16)
    recording = RecordingArray(on_disk)
    source = ImageSource(recording, spacing=(2.0, 1.0, 1.0))
    assert recording.keys == []  # nothing is read before the normalisation is needed
    normalisation = source.normalisation
    touched = recording.chunks_touched()
    assert len(touched) <= 8  # of 64 chunks: 2_000_000 voxels / 64³ per chunk
    assert recording.voxels_read() <= 2_100_000
    assert all(len(key) == 3 for key in recording.keys)
    # uniform integers in [100, 1100]: the 1% and 99.8% points
    assert normalisation.low[0] == pytest.approx(110, abs=2)
    assert normalisation.high[0] == pytest.approx(1098, abs=2)
    assert source.normalisation is normalisation  # cached
    recording.keys.clear()
    source.read((slice(-3, 10), slice(250, 262), slice(0, 5)))
    assert len(recording.chunks_touched()) <= 2


@pytest.mark.parametrize(
    ("shape", "chunks", "max_voxels", "most_reads"),
    [
        ((40, 50, 60), (40, 50, 60), 10_000, 8),  # one chunk holding everything: sub-blocks of it
        ((40, 50, 60), (4, 5, 6), 10_000, 64),  # tiny chunks are grouped into bigger blocks
        ((300, 400), None, 5_000, 64),  # numpy: no chunks
    ],
)
def test_sample_size_is_bounded(shape, chunks, max_voxels, most_reads) -> None:
    data = np.random.default_rng(1).random(shape)
    backing = data if chunks is None else da.from_array(data, chunks=chunks)
    recording = RecordingArray(backing)
    source = ImageSource(recording)
    Normalisation.from_source(source, max_voxels=max_voxels)
    assert max_voxels // 2 <= recording.voxels_read() <= 2 * max_voxels
    assert len(recording.keys) <= most_reads
    other_seed = Normalisation.from_source(source, max_voxels=max_voxels, seed=1)
    assert other_seed.low[0] == pytest.approx(0.01, abs=0.02)


def test_from_source_validates_options() -> None:
    source = ImageSource(np.zeros((4, 4)))
    with pytest.raises(ConfigError, match="percentiles"):
        Normalisation.from_source(source, percentiles=(50, 10))
    with pytest.raises(ConfigError, match="max_voxels"):
        Normalisation.from_source(source, max_voxels=0)


def test_constant_and_sparse_images() -> None:
    constant = ImageSource(np.full((8, 9), 7, np.uint8))
    np.testing.assert_array_equal(constant.read(), 0.0)
    sparse = np.zeros((50, 60), np.uint16)
    sparse[3, 4] = 1000  # the 99.8 percentile is 0: fall back to min / max
    normalisation = ImageSource(sparse).normalisation
    assert (normalisation.low, normalisation.high) == ((0.0,), (1000.0,))


def test_non_finite_values_warn_once_and_become_zero() -> None:
    data = smooth_image((2, 20, 30))
    data[0, 1, 2] = np.nan
    data[1, 5, 5] = np.inf
    data[1, 6, 6] = -np.inf
    source = ImageSource(data)
    with pytest.warns(RuntimeWarning, match="NaN or infinite") as record:
        normalisation = source.normalisation
        first = source.read()
        source.read((slice(0, 2), slice(0, 3), slice(0, 3)))
    assert len(record) == 1
    assert source.has_non_finite
    assert all(math.isfinite(v) for v in normalisation.low + normalisation.high)
    finite = data[np.isfinite(data)]
    assert normalisation.low[0] == pytest.approx(np.percentile(finite, 1.0))
    assert first[0, 0, 1, 2] == 0.0 and first[0, 1, 5, 5] == 0.0 and first[0, 1, 6, 6] == 0.0
    assert np.isfinite(first).all()
    assert np.isnan(data[0, 1, 2])  # input untouched


def test_non_finite_missed_by_the_sample_warn_on_read() -> None:
    data = np.ones((100, 100), np.float32)
    data[::2] = 0.0
    data[99, 99] = np.nan
    source = ImageSource(data, normalisation=Normalisation((0,), (1,)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        source.read((slice(0, 10), slice(0, 10)))
    with pytest.warns(RuntimeWarning, match="treated as 0"):
        source.read((slice(90, 100), slice(90, 100)))
    assert source.has_non_finite


def test_all_non_finite_image() -> None:
    source = ImageSource(np.full((6, 7), np.nan))
    with pytest.warns(RuntimeWarning):
        assert source.normalisation == Normalisation((0.0,), (1.0,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # already warned
        np.testing.assert_array_equal(source.read(), 0.0)


def test_integer_images_never_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        source = ImageSource(np.arange(30, dtype=np.int8).reshape(5, 6))
        source.read((slice(-2, 7), slice(0, 6)))
        assert not source.has_non_finite


# -- block helpers --------------------------------------------------------------


def test_block_helpers() -> None:
    assert array_chunks(np.zeros((4, 4))) is None
    assert array_chunks(da.zeros((10, 9), chunks=(4, 5))) == (4, 5)
    assert grow_block_shape((100, 50, 30), None, target_voxels=3000) == (2, 50, 30)
    assert grow_block_shape((100, 50, 30), None, target_voxels=10) == (1, 1, 10)
    assert grow_block_shape((100, 50, 30), (10, 10, 10), target_voxels=8000) == (20, 20, 20)
    assert grow_block_shape((5, 5), (10, 10), target_voxels=10**6) == (5, 5)
    regions = list(block_regions((5, 7), (2, 3)))
    assert len(regions) == 9 and regions[-1] == (slice(4, 5), slice(6, 7))
    covered = np.zeros((5, 7), int)
    for region in regions:
        covered[region] += 1
    assert (covered == 1).all()
    assert region_bounds((slice(None), slice(-2, 9)), (4, 5), allow_outside=True) == ((0, 4), (-2, 9))
    with pytest.raises(ValueError, match="step 1"):
        region_bounds((slice(0, 4, 2), slice(None)), (4, 5))
