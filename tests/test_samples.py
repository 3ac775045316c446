"""The shipped sample data, its loader and the napari sample-data contributions."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from scribbleseg.napari import _sample_data
from scribbleseg.samples import SAMPLE_NAMES, Sample, load_sample, sample_path

EXPECTED = {
    # name: (shape, image dtype, spacing, class values)
    "nuclei2d": ((512, 512), np.uint16, (1.0, 1.0), {1, 2}),
    "mri3d": ((48, 184, 152), np.uint8, (2.0, 1.0, 1.0), {1, 2, 3}),
}


@pytest.fixture(scope="module", params=SAMPLE_NAMES)
def sample(request) -> Sample:
    return load_sample(request.param)


def test_sample_names_are_the_documented_ones():
    assert SAMPLE_NAMES == ("nuclei2d", "mri3d")
    assert set(EXPECTED) == set(SAMPLE_NAMES)


def test_arrays_have_the_expected_shapes_and_dtypes(sample):
    shape, image_dtype, _, _ = EXPECTED[sample.name]
    assert sample.image.shape == shape
    assert sample.scribbles.shape == shape
    assert sample.ground_truth.shape == shape
    assert sample.image.dtype == image_dtype
    assert sample.scribbles.dtype == np.uint8
    assert sample.ground_truth.dtype == np.uint8
    assert sample.ndim == len(shape)


def test_spacing_and_classes(sample):
    _, _, spacing, classes = EXPECTED[sample.name]
    assert sample.spacing == spacing
    assert len(sample.spacing) == sample.image.ndim
    assert all(isinstance(s, float) and s > 0 for s in sample.spacing)
    assert set(sample.class_names) == classes
    assert sample.background_class == 1
    assert sample.class_names[sample.background_class] == "background"


def test_every_class_is_present_in_scribbles_and_ground_truth(sample):
    classes = set(sample.class_names)
    assert set(np.unique(sample.ground_truth).tolist()) == classes  # every pixel labelled
    assert set(np.unique(sample.scribbles).tolist()) == {0} | classes


def test_scribbles_are_sparse(sample):
    fraction = np.count_nonzero(sample.scribbles) / sample.scribbles.size
    assert 0.001 < fraction <= 0.03


def test_scribbles_agree_with_ground_truth(sample):
    labelled = sample.scribbles > 0
    np.testing.assert_array_equal(sample.scribbles[labelled], sample.ground_truth[labelled])


def test_mri_is_anisotropic_and_scribbled_on_a_few_axial_slices():
    mri = load_sample("mri3d")
    assert mri.unit == "mm"
    assert mri.spacing[0] > mri.spacing[1] == mri.spacing[2]
    scribbled_slices = np.flatnonzero(mri.scribbles.any(axis=(1, 2)))
    assert 3 <= len(scribbled_slices) <= 4


def test_mri_crop_holds_the_whole_axial_section_and_t1_contrast():
    mri = load_sample("mri3d")
    middle = mri.image[mri.image.shape[0] // 2] > 0
    rows, columns = np.flatnonzero(middle.any(axis=1)), np.flatnonzero(middle.any(axis=0))
    # the brain does not touch the edges of the crop: the cortex is whole on every side
    assert rows[0] > 0 and rows[-1] < middle.shape[0] - 1
    assert columns[0] > 0 and columns[-1] < middle.shape[1] - 1
    # T1 weighting: white matter brighter than grey matter, grey brighter than CSF/air
    mean = {k: mri.image[mri.ground_truth == k].mean() for k in (1, 2, 3)}
    assert mean[3] > mean[2] > mean[1]


def test_files_carry_the_spacing(sample):
    for kind in ("image", "scribbles", "ground_truth"):
        path = sample_path(sample.name, kind)
        assert path.is_file()
        with tifffile.TiffFile(path) as tif:
            assert tif.is_imagej
            page = tif.pages[0]
            assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
            x_resolution = page.tags["XResolution"].value
            y_resolution = page.tags["YResolution"].value
            assert x_resolution[1] / x_resolution[0] == pytest.approx(sample.spacing[-1])
            assert y_resolution[1] / y_resolution[0] == pytest.approx(sample.spacing[-2])
            metadata = tif.imagej_metadata
            assert metadata["unit"] == sample.unit
            if sample.image.ndim == 3:
                assert metadata["spacing"] == pytest.approx(sample.spacing[0])


def test_loading_returns_fresh_arrays():
    first = load_sample("nuclei2d")
    first.scribbles[:] = 0
    assert np.count_nonzero(load_sample("nuclei2d").scribbles) > 0


def test_unknown_sample_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"nuclei2d, mri3d"):
        load_sample("nuclei3d")
    with pytest.raises(ValueError, match=r"nuclei2d"):
        sample_path("nope", "image")
    with pytest.raises(ValueError, match=r"image, scribbles, ground_truth"):
        sample_path("nuclei2d", "labels")


def test_loader_imports_neither_torch_nor_qt_nor_napari():
    code = (
        "import sys, scribbleseg.samples, scribbleseg.napari, scribbleseg.napari._sample_data\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'monai', 'napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6')]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ})


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_napari_sample_functions_return_layer_tuples(name):
    sample = load_sample(name)
    layers = getattr(_sample_data, name)()
    assert [layer_type for _, _, layer_type in layers] == ["image", "labels"]
    (image, image_kwargs, _), (scribbles, labels_kwargs, _) = layers
    np.testing.assert_array_equal(image, sample.image)
    np.testing.assert_array_equal(scribbles, sample.scribbles)
    assert image_kwargs["name"] == name
    assert labels_kwargs["name"] == "scribbles"
    assert image_kwargs["scale"] == labels_kwargs["scale"] == sample.spacing
    assert image_kwargs["colormap"] == "gray"
    low, high = image_kwargs["contrast_limits"]
    assert image.min() <= low < high <= image.max()
    assert labels_kwargs["metadata"]["class_names"] == sample.class_names


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_napari_accepts_the_layer_tuples(name):
    layers_module = pytest.importorskip("napari.layers")
    layers = [layers_module.Layer.create(*layer) for layer in getattr(_sample_data, name)()]
    image, scribbles = layers
    assert isinstance(image, layers_module.Image)
    assert isinstance(scribbles, layers_module.Labels)
    np.testing.assert_allclose(scribbles.scale, load_sample(name).spacing)


def test_main_rejects_unknown_samples(capsys):
    from scribbleseg.napari.__main__ import build_parser

    assert build_parser().parse_args(["--sample", "mri3d"]).sample == "mri3d"
    assert build_parser().parse_args([]).sample is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--sample", "nope"])
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.gui
def test_sample_opens_in_a_viewer_on_a_scribbled_slice(make_napari_viewer):
    from scribbleseg.napari.__main__ import add_sample_layers

    viewer = make_napari_viewer()
    _image, scribbles = add_sample_layers(viewer, "mri3d")
    assert viewer.layers.selection.active is scribbles
    z = int(np.rint(viewer.dims.point[0] / scribbles.scale[0]))
    assert scribbles.data[z].any()
