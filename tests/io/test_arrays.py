"""Reading and writing image / label arrays: TIFF, OME-TIFF, .npy, zarr and OME-Zarr."""

from __future__ import annotations

import errno
import json
import os
import pickle
import xml.etree.ElementTree as ElementTree

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr

from scribbleseg.errors import InputError
from scribbleseg.io import tiff as tiff_io
from scribbleseg.io import zarr as zarr_io
from scribbleseg.io.arrays import ArrayFile, file_format, read_array, write_array

FORMATS = [".tif", ".ome.tif", ".npy", ".zarr"]


def _random(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return rng.random(shape).astype(dtype)
    if dtype == np.int64:  # labels
        return rng.integers(0, 6, shape).astype(dtype)
    high = min(np.iinfo(dtype).max, 1000) if dtype.kind in "iu" else 2
    return rng.integers(0, high, shape).astype(dtype)


# (shape, dtype, axes, spacing)
CASES = [
    pytest.param((23, 37), np.uint8, "YX", (0.5, 0.25), id="2d-uint8"),
    pytest.param((5, 23, 37), np.uint16, "ZYX", (2.0, 0.5, 0.25), id="3d-uint16"),
    pytest.param((3, 23, 37), np.float32, "CYX", (0.5, 0.25), id="channels-float32"),
    pytest.param((4, 23, 37), np.int64, "ZYX", (3.0, 1.0, 1.0), id="3d-int64-labels"),
]


def _no_leftovers(folder):
    """No temporary files or folders (they start with a dot) are left behind."""
    return [name for name in os.listdir(folder) if name.startswith(".")] == []


# --------------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize(("shape", "dtype", "axes", "spacing"), CASES)
def test_round_trip(tmp_path, suffix, shape, dtype, axes, spacing):
    array = _random(shape, dtype)
    path = write_array(tmp_path / f"image{suffix}", array, spacing=spacing)
    assert path == tmp_path / f"image{suffix}"
    result = read_array(path)
    assert isinstance(result, ArrayFile)
    assert result.path == path
    assert isinstance(result.data, np.ndarray)
    np.testing.assert_array_equal(result.data, array)
    if suffix == ".npy":
        assert result.spacing is None and result.axes is None
        assert result.data.dtype == array.dtype
        return
    assert result.axes == axes
    assert result.spacing == pytest.approx(spacing, rel=1e-6)
    if np.dtype(dtype) == np.int64 and suffix != ".zarr":
        assert result.data.dtype == np.uint8  # smallest type holding the labels
    else:
        assert result.data.dtype == array.dtype
    assert _no_leftovers(tmp_path)


@pytest.mark.parametrize("suffix", FORMATS)
def test_dask_input_is_written_blockwise(tmp_path, suffix):
    array = _random((6, 2, 40, 33), np.uint16, seed=1)
    lazy = da.from_array(array, chunks=(4, 1, 16, 16))
    path = write_array(tmp_path / f"image{suffix}", lazy, spacing=(2.0, 0.5, 0.5), axes="ZCYX")
    result = read_array(path)
    np.testing.assert_array_equal(result.data, array)
    if suffix != ".npy":
        assert result.axes == "ZCYX"
        assert result.spacing == pytest.approx((2.0, 0.5, 0.5))


def test_imagej_stores_channels_after_z(tmp_path):
    # ImageJ hyperstacks are TZCYX; a (C, Z, Y, X) array comes back as (Z, C, Y, X) with its axes.
    array = _random((2, 3, 16, 20), np.uint8)
    result = read_array(write_array(tmp_path / "image.tif", array, axes="CZYX"))
    assert result.axes == "ZCYX"
    np.testing.assert_array_equal(result.data, array.transpose(1, 0, 2, 3))
    # OME-TIFF and zarr keep the order.
    for name in ("image.ome.tif", "image.zarr"):
        result = read_array(write_array(tmp_path / name, array, axes="CZYX"))
        assert result.axes == "CZYX"
        np.testing.assert_array_equal(result.data, array)


def test_lazy_reading(tmp_path):
    array = _random((4, 30, 40), np.uint16)
    for name, kind in [
        ("image.zarr", da.Array),
        ("image.tif", da.Array),  # zlib-compressed: dask over tifffile's zarr store
        ("image.ome.tif", da.Array),
        ("image.npy", np.memmap),
    ]:
        result = read_array(write_array(tmp_path / name, array), lazy=True)
        assert isinstance(result.data, kind), name
        assert result.is_lazy
        np.testing.assert_array_equal(np.asarray(result.data), array)
    tiff_io.write_tiff(tmp_path / "raw.tif", array, compression=None)
    result = read_array(tmp_path / "raw.tif", lazy=True)
    assert isinstance(result.data, np.memmap)
    np.testing.assert_array_equal(result.data, array)


def test_zarr_and_torch_inputs(tmp_path):
    import torch

    source = zarr.create_array(
        str(tmp_path / "source.zarr"), shape=(6, 20, 20), chunks=(2, 10, 10), dtype="u2"
    )
    source[...] = _random((6, 20, 20), np.uint16)
    for name in ("copy.tif", "copy.zarr", "copy.npy"):
        np.testing.assert_array_equal(read_array(write_array(tmp_path / name, source)).data, source[...])
    tensor = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    np.testing.assert_array_equal(read_array(write_array(tmp_path / "t.tif", tensor)).data, tensor.numpy())


def test_zarr_chunks_and_dtype(tmp_path):
    array = _random((5, 40, 50), np.uint16)
    path = zarr_io.write_zarr(tmp_path / "out.zarr", array, chunks=(2, 16, 16), dtype=np.float32)
    stored = zarr.open_array(str(path), mode="r")
    assert stored.chunks == (2, 16, 16)
    assert stored.dtype == np.float32
    assert stored.metadata.dimension_names == ("z", "y", "x")
    np.testing.assert_array_equal(stored[...], array.astype(np.float32))
    assert zarr_io.default_chunks((3, 200, 700, 900), "CZYX") == (1, 64, 256, 256)
    assert zarr_io.default_chunks((3000, 20), "YX") == (1024, 20)


def test_overwriting_replaces_the_old_file(tmp_path):
    for name in ("image.tif", "image.zarr", "image.npy"):
        write_array(tmp_path / name, np.ones((8, 8), np.uint8))
        write_array(tmp_path / name, np.full((4, 5), 7, np.uint8))
        np.testing.assert_array_equal(read_array(tmp_path / name).data, np.full((4, 5), 7, np.uint8))
    assert _no_leftovers(tmp_path)


def test_zarr_array_inside_a_group_by_path(tmp_path):
    group = zarr.open_group(str(tmp_path / "many.zarr"), mode="w")
    group.create_array("a", shape=(4, 5), dtype="u1")[...] = 1
    group.create_array("b", shape=(6, 7), dtype="u1")[...] = 2
    result = read_array(tmp_path / "many.zarr" / "b")
    np.testing.assert_array_equal(result.data, np.full((6, 7), 2, np.uint8))
    with pytest.raises(InputError, match="2 arrays"):
        read_array(tmp_path / "many.zarr")


def test_zarr_group_with_one_array(tmp_path):
    group = zarr.open_group(str(tmp_path / "one.zarr"), mode="w", zarr_format=2)
    group.create_array("data", shape=(4, 5), dtype="f4")[...] = 3.0
    assert read_array(tmp_path / "one.zarr").data.sum() == 60.0


# --------------------------------------------------------------------------------------------------
# TIFF metadata as other programs read it


def test_imagej_resolution_and_spacing(tmp_path):
    path = write_array(
        tmp_path / "image.tif", _random((3, 2, 16, 20), np.uint16), spacing=(2.5, 0.4, 0.2), axes="ZCYX"
    )
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej and not tif.is_bigtiff
        assert tif.series[0].axes == "ZCYX"
        assert tif.imagej_metadata["spacing"] == pytest.approx(2.5)
        assert tif.imagej_metadata["unit"] == "micron"
        tags = tif.pages.first.tags
        x_numerator, x_denominator = tags["XResolution"].value
        y_numerator, y_denominator = tags["YResolution"].value
        assert x_numerator / x_denominator == pytest.approx(1 / 0.2)
        assert y_numerator / y_denominator == pytest.approx(1 / 0.4)


def test_ome_physical_size(tmp_path):
    path = write_array(tmp_path / "image.ome.tif", _random((3, 16, 20), np.uint16), spacing=(2.5, 0.4, 0.2))
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        root = ElementTree.fromstring(tif.ome_metadata)
    pixels = next(e for e in root.iter() if e.tag.endswith("Pixels"))
    assert float(pixels.get("PhysicalSizeX")) == pytest.approx(0.2)
    assert float(pixels.get("PhysicalSizeY")) == pytest.approx(0.4)
    assert float(pixels.get("PhysicalSizeZ")) == pytest.approx(2.5)
    assert pixels.get("PhysicalSizeXUnit") == "\u00b5m"


def test_ome_tiff_in_nanometres_is_read_in_micrometres(tmp_path):
    path = tmp_path / "nm.ome.tif"
    metadata = {"axes": "ZYX", "PhysicalSizeX": 100.0, "PhysicalSizeXUnit": "nm", "PhysicalSizeY": 100.0}
    metadata |= {"PhysicalSizeYUnit": "nm", "PhysicalSizeZ": 0.5, "PhysicalSizeZUnit": "\u00b5m"}
    tifffile.imwrite(
        path, np.zeros((2, 8, 8), np.uint8), ome=True, photometric="minisblack", metadata=metadata
    )
    assert read_array(path).spacing == pytest.approx((0.5, 0.1, 0.1))


def test_bigtiff_when_over_the_threshold(tmp_path, monkeypatch):
    monkeypatch.setattr(tiff_io, "BIGTIFF_THRESHOLD", 1000)
    array = _random((3, 20, 30), np.uint16)  # 3600 bytes
    path = write_array(tmp_path / "big.tif", array, spacing=(2.0, 0.5, 0.25))
    with tifffile.TiffFile(path) as tif:
        assert tif.is_bigtiff
        assert not tif.is_imagej  # ImageJ files cannot be BigTIFF
        tags = tif.pages.first.tags
        assert tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
        numerator, denominator = tags["XResolution"].value
        assert numerator / denominator == pytest.approx(1e4 / 0.25)  # pixels per centimetre
    result = read_array(path)
    np.testing.assert_array_equal(result.data, array)
    assert result.axes == "ZYX"
    assert result.spacing == pytest.approx((2.0, 0.5, 0.25))
    small = write_array(tmp_path / "small.tif", array[:, :2, :2])
    with tifffile.TiffFile(small) as tif:
        assert not tif.is_bigtiff and tif.is_imagej
    with tifffile.TiffFile(write_array(tmp_path / "big.ome.tif", array)) as tif:
        assert tif.is_bigtiff and tif.is_ome


@pytest.mark.parametrize(
    ("values", "stored"),
    [
        ([0, 1, 255], np.uint8),
        ([0, 1, 256], np.uint16),
        ([0, 70_000], np.uint32),
        ([-1, 5], np.int32),
        ([-(2**40), 5], np.int64),
        ([True, False], np.uint8),
    ],
)
def test_tiff_dtype_of_labels(tmp_path, values, stored):
    array = np.zeros((4, 6), dtype=np.bool_ if isinstance(values[0], bool) else np.int64)
    array.flat[: len(values)] = values
    result = read_array(write_array(tmp_path / "labels.tif", array))
    assert result.data.dtype == stored
    np.testing.assert_array_equal(result.data, array.astype(stored))


def test_dtypes_imagej_cannot_hold_are_kept(tmp_path):
    for dtype in (np.int16, np.uint32, np.float64, np.int8):
        array = _random((2, 6, 7), dtype)
        path = write_array(tmp_path / f"{np.dtype(dtype).name}.tif", array, spacing=(1.0, 0.5, 0.5))
        result = read_array(path)
        assert result.data.dtype == dtype
        assert result.spacing == pytest.approx((1.0, 0.5, 0.5))
        np.testing.assert_array_equal(result.data, array)


def test_big_endian_npy_is_read_in_native_order(tmp_path):
    np.save(tmp_path / "big.npy", np.arange(12, dtype=">u2").reshape(3, 4))
    for lazy in (False, True):
        data = read_array(tmp_path / "big.npy", lazy=lazy).data
        assert data.dtype.isnative
        np.testing.assert_array_equal(np.asarray(data), np.arange(12).reshape(3, 4))


# --------------------------------------------------------------------------------------------------
# OME-Zarr, written by hand


def _ome_zarr_v04(path, level0):
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.create_array("0", shape=level0.shape, chunks=(1, 16, 16), dtype=level0.dtype)[...] = level0
    group.create_array("1", shape=(2, 8, 10), chunks=(1, 16, 16), dtype=level0.dtype)[...] = level0[
        :, ::2, ::2
    ]
    axes = [
        {"name": "c", "type": "channel"},
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]
    datasets = [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 0.5, 0.25]}]},
        {"path": "1", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0, 0.5]}]},
    ]
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": datasets}]


def test_ome_zarr_v04_level_zero(tmp_path):
    level0 = _random((2, 16, 20), np.uint16)
    path = tmp_path / "image.zarr"
    _ome_zarr_v04(path, level0)
    assert (path / ".zattrs").exists()
    assert zarr_io.is_ome_zarr(path)
    for lazy in (False, True):
        result = read_array(path, lazy=lazy)
        assert isinstance(result.data, da.Array if lazy else np.ndarray)
        assert result.data.shape == (2, 16, 20)
        np.testing.assert_array_equal(np.asarray(result.data), level0)
        assert result.axes == "CYX"
        assert result.spacing == pytest.approx((0.5, 0.25))
    assert zarr_io.open_zarr_array(path).shape == (2, 16, 20)


def test_ome_zarr_v05_level_zero(tmp_path):
    level0 = _random((6, 16, 20), np.uint8)
    path = tmp_path / "image.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.create_array("s0", shape=level0.shape, chunks=(2, 8, 8), dtype=level0.dtype)[...] = level0
    axes = [{"name": name, "type": "space", "unit": "nanometer"} for name in "zyx"]
    transforms = [{"type": "scale", "scale": [400.0, 100.0, 100.0]}]
    multiscales = [{"axes": axes, "datasets": [{"path": "s0", "coordinateTransformations": transforms}]}]
    group.attrs["ome"] = {"version": "0.5", "multiscales": multiscales}
    assert json.loads((path / "zarr.json").read_text())["attributes"]["ome"]["version"] == "0.5"
    assert zarr_io.is_ome_zarr(path)
    result = read_array(path, lazy=True)
    assert isinstance(result.data, da.Array)
    np.testing.assert_array_equal(result.data.compute(), level0)
    assert result.axes == "ZYX"
    assert result.spacing == pytest.approx((0.4, 0.1, 0.1))


def test_plain_zarr_is_not_ome(tmp_path):
    write_array(tmp_path / "plain.zarr", np.zeros((4, 4), np.uint8))
    assert not zarr_io.is_ome_zarr(tmp_path / "plain.zarr")
    assert not zarr_io.is_ome_zarr(tmp_path / "missing.zarr")


# --------------------------------------------------------------------------------------------------
# bad input: always InputError naming the path


def test_missing_file(tmp_path):
    for name in ("nothing.tif", "nothing.npy", "nothing.zarr", "nothing.png"):
        with pytest.raises(InputError, match="no such file") as info:
            read_array(tmp_path / name)
        assert str(tmp_path / name) in str(info.value)


def test_unsupported_extension(tmp_path):
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(InputError, match=r"unsupported file type.*\.tif.*\.zarr"):
        read_array(tmp_path / "image.png")
    with pytest.raises(InputError, match="unsupported file type"):
        write_array(tmp_path / "out.png", np.zeros((4, 4)))
    with pytest.raises(InputError, match="unsupported"):
        file_format("image.jpg")


@pytest.mark.parametrize("compression", ["zlib", None])
@pytest.mark.parametrize("fraction", [0.97, 0.6, 0.1])
@pytest.mark.parametrize("lazy", [False, True])
def test_truncated_tiff(tmp_path, compression, fraction, lazy):
    array = _random((6, 64, 64), np.uint16)
    source = tiff_io.write_tiff(tmp_path / "full.tif", array, compression=compression)
    content = source.read_bytes()
    path = tmp_path / "truncated.tif"
    path.write_bytes(content[: int(len(content) * fraction)])
    with pytest.raises(InputError, match="truncated") as info:
        read_array(path, lazy=lazy)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("content", [b"", b"II*\x00", os.urandom(3000), b"MM\x00*" + os.urandom(300)])
def test_not_a_tiff(tmp_path, content):
    path = tmp_path / "noise.tif"
    path.write_bytes(content)
    for lazy in (False, True):
        with pytest.raises(InputError, match="not a valid TIFF") as info:
            read_array(path, lazy=lazy)
        assert str(path) in str(info.value)


def test_npy_with_objects_is_refused_without_unpickling(tmp_path):
    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    np.save(tmp_path / "objects.npy", np.array([Payload(), 1], dtype=object), allow_pickle=True)
    for lazy in (False, True):
        with pytest.raises(InputError, match="objects") as info:
            read_array(tmp_path / "objects.npy", lazy=lazy)
        assert "objects.npy" in str(info.value)
    assert not (tmp_path / "pwned").exists()
    # A bare pickle named .npy
    (tmp_path / "pickle.npy").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(InputError, match=r"pickle\.npy"):
        read_array(tmp_path / "pickle.npy")
    assert not (tmp_path / "pwned").exists()


def test_corrupt_npy(tmp_path):
    np.save(tmp_path / "full.npy", np.zeros((30, 30)))
    content = (tmp_path / "full.npy").read_bytes()
    (tmp_path / "truncated.npy").write_bytes(content[:500])
    (tmp_path / "noise.npy").write_bytes(os.urandom(500))
    for name in ("truncated.npy", "noise.npy"):
        for lazy in (False, True):
            with pytest.raises(InputError, match=name):
                read_array(tmp_path / name, lazy=lazy)


def test_non_numeric_npy(tmp_path):
    np.save(tmp_path / "text.npy", np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(InputError, match="must be numbers"):
        read_array(tmp_path / "text.npy")


@pytest.mark.filterwarnings("ignore:.*zero-size array:UserWarning")
@pytest.mark.parametrize("shape", [(0, 5), (3, 0, 4), (5,), ()])
@pytest.mark.parametrize("suffix", [".npy", ".zarr", ".tif"])
def test_empty_or_not_an_image(tmp_path, shape, suffix):
    path = tmp_path / f"empty{suffix}"
    if suffix == ".npy":
        np.save(path, np.zeros(shape, np.uint8))
    elif suffix == ".zarr":
        zarr.create_array(str(path), shape=shape, dtype="u1")
    else:
        tifffile.imwrite(path, np.zeros(shape, np.uint8))
    with pytest.raises(InputError) as info:
        read_array(path)
    assert str(path) in str(info.value)
    with pytest.raises(InputError, match=r"empty|dimensional"):
        write_array(tmp_path / f"out{suffix}", np.zeros(shape, np.uint8))


def test_zarr_paths_that_are_not_images(tmp_path):
    (tmp_path / "folder.zarr").mkdir()
    (tmp_path / "folder.zarr" / "notes.txt").write_text("hello")
    (tmp_path / "file.zarr").write_text("not a folder")
    (tmp_path / "broken.zarr").mkdir()
    (tmp_path / "broken.zarr" / "zarr.json").write_text("{not json")
    zarr.open_group(str(tmp_path / "group.zarr"), mode="w")
    bad_ome = zarr.open_group(str(tmp_path / "badome.zarr"), mode="w")
    bad_ome.attrs["multiscales"] = [{"datasets": [{"path": "missing"}]}]
    empty_ome = zarr.open_group(str(tmp_path / "emptyome.zarr"), mode="w")
    empty_ome.attrs["multiscales"] = []
    for name, message in [
        ("folder.zarr", "not a zarr"),
        ("file.zarr", "not a zarr folder"),
        ("broken.zarr", "corrupt"),
        ("group.zarr", "holds no image"),
        ("badome.zarr", "no such array"),
        ("emptyome.zarr", "datasets"),
    ]:
        for lazy in (False, True):
            with pytest.raises(InputError, match=message) as info:
                read_array(tmp_path / name, lazy=lazy)
            assert name in str(info.value)


def test_corrupt_zarr_chunk(tmp_path):
    path = write_array(tmp_path / "image.zarr", _random((32, 32), np.uint16), chunks=(16, 16))
    chunk = next(p for p in path.rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(b"garbage")
    with pytest.raises(InputError, match="corrupt"):
        read_array(path)


def test_axes_and_spacing_must_fit(tmp_path):
    with pytest.raises(InputError, match="spatial axes"):
        write_array(tmp_path / "a.tif", np.zeros((3, 4, 4), np.uint8), spacing=(1.0,))
    with pytest.raises(InputError, match="axes"):
        write_array(tmp_path / "a.zarr", np.zeros((3, 4, 4), np.uint8), axes="XYZC")
    with pytest.raises(InputError, match="positive"):
        write_array(tmp_path / "a.ome.tif", np.zeros((4, 4), np.uint8), spacing=(0.0, 1.0))
    assert _no_leftovers(tmp_path) and os.listdir(tmp_path) == []


# --------------------------------------------------------------------------------------------------
# failed writes leave nothing that looks complete


def test_output_folder_missing_or_a_file(tmp_path):
    for suffix in FORMATS:
        with pytest.raises(InputError, match="does not exist") as info:
            write_array(tmp_path / "missing" / f"out{suffix}", np.zeros((4, 4), np.uint8))
        assert str(tmp_path / "missing") in str(info.value)
    (tmp_path / "afile").write_text("x")
    for suffix in FORMATS:
        with pytest.raises(InputError, match="is a file"):
            write_array(tmp_path / "afile" / f"out{suffix}", np.zeros((4, 4), np.uint8))


def test_existing_folder_that_is_not_a_zarr_store_is_not_replaced(tmp_path):
    (tmp_path / "results.zarr").mkdir()
    (tmp_path / "results.zarr" / "precious.txt").write_text("keep me")
    with pytest.raises(InputError, match="folder of that name exists"):
        write_array(tmp_path / "results.zarr", np.zeros((4, 4), np.uint8))
    assert (tmp_path / "results.zarr" / "precious.txt").read_text() == "keep me"
    (tmp_path / "results.tif").mkdir()
    with pytest.raises(InputError, match="folder of that name exists"):
        write_array(tmp_path / "results.tif", np.zeros((4, 4), np.uint8))


def _failing_dask_array(shape, fail_at_block):
    """A dask array whose ``fail_at_block``-th block (along axis 0) fails like a full disk."""

    def block(block_info=None):
        location = block_info[None]["chunk-location"][0]
        if location == fail_at_block:
            raise OSError(errno.ENOSPC, "No space left on device")
        return np.full(block_info[None]["chunk-shape"], location + 1, np.uint16)

    return da.map_blocks(block, chunks=((1,) * shape[0], (shape[1],), (shape[2],)), dtype=np.uint16)


@pytest.mark.parametrize("suffix", FORMATS)
def test_disk_full_midway_leaves_no_file(tmp_path, suffix):
    path = tmp_path / f"out{suffix}"
    with pytest.raises(InputError, match="disk is full") as info:
        write_array(path, _failing_dask_array((6, 20, 20), fail_at_block=4))
    assert str(path) in str(info.value)
    assert not path.exists()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("suffix", FORMATS)
def test_failed_write_keeps_the_previous_file(tmp_path, suffix):
    path = write_array(tmp_path / f"out{suffix}", np.full((6, 20, 20), 9, np.uint16))
    with pytest.raises(InputError, match="disk is full"):
        write_array(path, _failing_dask_array((6, 20, 20), fail_at_block=3))
    np.testing.assert_array_equal(read_array(path).data, np.full((6, 20, 20), 9, np.uint16))
    assert _no_leftovers(tmp_path)


def test_tiff_writer_fault_injection(tmp_path, monkeypatch):
    # tifffile itself fails after writing part of the file.
    original_write = tifffile.TiffWriter.write

    def write_then_fail(self, *args, **kwargs):
        self._fh.write(b"\0" * 10_000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tifffile.TiffWriter, "write", write_then_fail)
    with pytest.raises(InputError, match="disk is full"):
        write_array(tmp_path / "out.tif", np.zeros((8, 8), np.uint8))
    assert os.listdir(tmp_path) == []
    monkeypatch.setattr(tifffile.TiffWriter, "write", original_write)
    write_array(tmp_path / "out.tif", np.zeros((8, 8), np.uint8))
    assert os.listdir(tmp_path) == ["out.tif"]


def test_written_files_get_normal_permissions(tmp_path):
    path = write_array(tmp_path / "image.tif", np.zeros((4, 4), np.uint8))
    assert os.stat(path).st_mode & 0o044 == 0o044 & ~tiff_io_umask()
    folder = write_array(tmp_path / "image.zarr", np.zeros((4, 4), np.uint8))
    assert os.stat(folder).st_mode & 0o055 == 0o055 & ~tiff_io_umask()


def tiff_io_umask():
    umask = os.umask(0)
    os.umask(umask)
    return umask
