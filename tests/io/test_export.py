"""`scribbleseg export`: TIFF / BigTIFF / OME-TIFF / OME-Zarr round trips, written block by block."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import tifffile
import zarr

import scribbleseg.io.tiff as tiff_io
from scribbleseg.cli import main
from scribbleseg.io.arrays import read_array, write_array
from scribbleseg.io.ome import downsample_factors, mode_downsample


@pytest.fixture
def labels_zarr(tmp_path):
    """A (9, 70, 60) labels zarr with values 1, 2, 5 and spacing (2, 0.5, 0.5)."""
    rng = np.random.default_rng(0)
    labels = rng.choice(np.array([1, 2, 5], dtype=np.uint8), size=(9, 70, 60), p=[0.6, 0.3, 0.1])
    path = tmp_path / "labels.zarr"
    write_array(path, labels, spacing=(2.0, 0.5, 0.5), chunks=(4, 32, 32))
    return path, labels


def export(*args) -> int:
    return main(["export", *map(str, args)])


def test_tiff_is_imagej_with_spacing_and_background(tmp_path, labels_zarr, capsys):
    path, labels = labels_zarr
    out = tmp_path / "out.tif"
    assert export(path, "-o", out, "--background-class", "1") == 0
    with tifffile.TiffFile(out) as tif:
        assert tif.is_imagej and not tif.is_bigtiff
        data = tif.asarray()
        assert tif.pages.first.compression != 1  # compressed
        assert tif.imagej_metadata["spacing"] == pytest.approx(2.0)
        x_resolution = tif.pages.first.tags["XResolution"].value
        assert x_resolution[1] / x_resolution[0] == pytest.approx(0.5)
    assert data.shape == (9, 70, 60) and data.dtype == np.uint8
    np.testing.assert_array_equal(data, np.where(labels == 1, 0, labels))
    assert read_array(out).spacing == pytest.approx((2.0, 0.5, 0.5))


def test_bigtiff_above_the_threshold_and_page_by_page(tmp_path, labels_zarr, monkeypatch):
    path, labels = labels_zarr
    monkeypatch.setattr(tiff_io, "BIGTIFF_THRESHOLD", 1000)  # 9*70*60 bytes is above it
    monkeypatch.setattr(tiff_io, "SLAB_BYTES", 1)  # one page computed at a time
    out = tmp_path / "big.tif"
    assert export(path, "-o", out) == 0
    with tifffile.TiffFile(out) as tif:
        assert tif.is_bigtiff and not tif.is_imagej
        np.testing.assert_array_equal(tif.asarray(), labels)
    assert read_array(out).spacing == pytest.approx((2.0, 0.5, 0.5))


def test_ome_tiff(tmp_path, labels_zarr):
    path, labels = labels_zarr
    out = tmp_path / "out.ome.tif"
    assert export(path, "-o", out) == 0
    with tifffile.TiffFile(out) as tif:
        assert tif.is_ome
        np.testing.assert_array_equal(tif.asarray(), labels)
        assert 'PhysicalSizeZ="2.0"' in tif.ome_metadata
    assert read_array(out).spacing == pytest.approx((2.0, 0.5, 0.5))


def test_numpy_labels_to_tiff(tmp_path):
    labels = np.arange(4 * 20 * 30, dtype=np.int64).reshape(4, 20, 30) % 3
    np.save(tmp_path / "labels.npy", labels)
    assert export(tmp_path / "labels.npy", "-o", tmp_path / "out.tif", "--spacing", "3,1,1") == 0
    data = tifffile.imread(tmp_path / "out.tif")
    assert data.dtype == np.uint8  # int64 stored in the smallest type that holds the values
    np.testing.assert_array_equal(data, labels)
    assert read_array(tmp_path / "out.tif").spacing == pytest.approx((3.0, 1.0, 1.0))


def test_ome_zarr_multiscale_labels(tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    labels = np.random.default_rng(1).choice(np.array([1, 2, 7], dtype=np.uint16), size=(5, 600, 530))
    write_array(tmp_path / "labels.zarr", labels, spacing=(2.0, 0.5, 0.5), chunks=(5, 256, 256))
    out = tmp_path / "out.zarr"
    assert export(tmp_path / "labels.zarr", "-o", out, "--background-class", "2") == 0
    expected = np.where(labels == 2, 0, labels)

    nodes = list(Reader(parse_url(str(out)))())
    assert nodes, "ome-zarr found no image"
    pyramid = nodes[0].data
    assert [tuple(level.shape) for level in pyramid] == [(5, 600, 530), (5, 300, 265), (5, 150, 133)]
    np.testing.assert_array_equal(np.asarray(pyramid[0]), expected)
    assert {type(spec).__name__ for spec in nodes[0].specs} >= {"Multiscales", "Label"}
    for level in pyramid[1:]:  # mode downsampling never invents a label value
        assert set(np.unique(np.asarray(level))) <= {0, 1, 7}
    transforms = nodes[0].metadata["coordinateTransformations"]
    assert transforms[0][0]["scale"] == [2.0, 0.5, 0.5] and transforms[1][0]["scale"] == [2.0, 1.0, 1.0]
    again = read_array(out)  # our reader takes level 0 with its spacing
    np.testing.assert_array_equal(again.data, expected)
    assert again.spacing == pytest.approx((2.0, 0.5, 0.5))


def test_mode_downsampling():
    import dask.array as da

    cells = np.array([[1, 1, 2, 3, 4], [2, 1, 3, 2, 4], [5, 6, 0, 0, 9]], dtype=np.uint8)
    down = mode_downsample(da.from_array(cells, chunks=2), (2, 2)).compute()
    # cells: [[1,1],[2,1]] -> 1; [[2,3],[3,2]] -> tie, first: 2; [[4],[4]] padded -> 4;
    # [[5,6],[5,6]] (edge-padded row) -> 5; [[0,0],[0,0]] -> 0; [[9],[9]] -> 9
    np.testing.assert_array_equal(down, [[1, 2, 4], [5, 0, 9]])
    assert downsample_factors((10, 64, 64), "ZYX", (2.0, 0.5, 0.5)) == (1, 2, 2)
    assert downsample_factors((10, 64, 64), "ZYX", (1.0, 1.0, 1.0)) == (2, 2, 2)
    assert downsample_factors((3, 64, 64), "CYX", (1.0, 1.0)) == (1, 2, 2)


def test_incomplete_prediction_is_refused(tmp_path, labels_zarr, capsys):
    path, _ = labels_zarr
    array = zarr.open_array(str(path), mode="r+")
    array.attrs["scribbleseg"] = {**array.attrs["scribbleseg"], "complete": False}
    assert export(path, "-o", tmp_path / "out.tif") == 2
    assert "incomplete prediction" in capsys.readouterr().err
    assert not (tmp_path / "out.tif").exists()


@pytest.mark.gui
def test_napari_opens_the_ome_zarr(tmp_path, labels_zarr):
    napari = pytest.importorskip("napari")
    path, labels = labels_zarr
    out = tmp_path / "out.zarr"
    assert export(path, "-o", out) == 0
    plugin = "napari-ome-zarr" if importlib.util.find_spec("napari_ome_zarr") else "napari"
    viewer = napari.Viewer(show=False)
    try:
        layers = viewer.open(str(out), plugin=plugin)
        assert len(layers) == 1
        data = layers[0].data
        level0 = data[0] if layers[0].multiscale else data
        assert tuple(level0.shape) == labels.shape
        np.testing.assert_array_equal(np.asarray(level0), labels)
    finally:
        viewer.close()
