"""Sample images with scribbles and ground truth, shipped inside the package.

Two samples are available (see ``sample_data/README.md`` for sources, licences and how the
scribbles were drawn):

``"nuclei2d"``
    A 512 × 512 fluorescence image of nuclei (2018 Data Science Bowl, via stardist); classes
    1 = background, 2 = nucleus.
``"mri3d"``
    A 48 × 184 × 152 T1-weighted brain MRI (MNI ICBM152 2009a template, via nilearn) with thick
    axial slices: spacing (z, y, x) = (2, 1, 1) mm; classes 1 = background (outside the brain and
    CSF), 2 = grey matter, 3 = white matter. Scribbles are on four axial slices only.

This module imports only numpy, tifffile and the standard library, so scripts, tests and the
command line can use it without torch, Qt or napari.

Examples
--------
>>> from scribbleseg.samples import load_sample
>>> sample = load_sample("mri3d")
>>> sample.image.shape, sample.spacing
((48, 184, 152), (2.0, 1.0, 1.0))
"""

from __future__ import annotations

import importlib.resources
import pathlib
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import tifffile

__all__ = ["SAMPLE_NAMES", "Sample", "load_sample", "sample_path"]

SAMPLE_NAMES = ("nuclei2d", "mri3d")

SampleFileKind = Literal["image", "scribbles", "ground_truth"]
_KINDS = ("image", "scribbles", "ground_truth")


@dataclass(frozen=True)
class _SampleInfo:
    spacing: tuple[float, ...]
    unit: str
    class_names: dict[int, str]
    background_class: int
    description: str


# What the TIFF files cannot say (class names) plus the spacing they record, kept here so that
# loading needs no metadata parsing; tests check that the files agree.
_SAMPLES: dict[str, _SampleInfo] = {
    "nuclei2d": _SampleInfo(
        spacing=(1.0, 1.0),
        unit="pixel",
        class_names={1: "background", 2: "nucleus"},
        background_class=1,
        description="Fluorescent nuclei, 2018 Data Science Bowl (BBBC038), via stardist 0.9.2",
    ),
    "mri3d": _SampleInfo(
        spacing=(2.0, 1.0, 1.0),
        unit="mm",
        class_names={1: "background", 2: "grey matter", 3: "white matter"},
        background_class=1,
        description="T1 brain MRI, MNI ICBM152 2009a symmetric template, via nilearn 0.14.1",
    ),
}


@dataclass(frozen=True)
class Sample:
    """A sample image with its scribbles and dense ground truth.

    Attributes
    ----------
    name : str
        One of `SAMPLE_NAMES`.
    image : ([Z,] Y, X) ndarray
        Single-channel intensity image, in the dtype it was stored with.
    scribbles : ([Z,] Y, X) ndarray of uint8
        Sparse labels: 0 = unlabelled, k >= 1 = class k.
    ground_truth : ([Z,] Y, X) ndarray of uint8
        Dense labels with the same class values; every pixel is labelled.
    spacing : tuple of float
        Physical size of a pixel along each axis, ``(z, y, x)`` or ``(y, x)``, in `unit`.
    class_names : dict of int to str
        Name of every class value, e.g. ``{1: "background", 2: "nucleus"}``.
    background_class : int
        The class value that means background.
    unit : str
        Unit of `spacing`: ``"mm"``, or ``"pixel"`` when the image has no physical calibration.
    """

    name: str
    image: np.ndarray = field(repr=False)
    scribbles: np.ndarray = field(repr=False)
    ground_truth: np.ndarray = field(repr=False)
    spacing: tuple[float, ...]
    class_names: dict[int, str]
    background_class: int
    unit: str

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions (2 or 3)."""
        return self.image.ndim


def _check_name(name: str) -> _SampleInfo:
    if name not in _SAMPLES:
        raise ValueError(f"unknown sample {name!r}; valid names are: {', '.join(SAMPLE_NAMES)}")
    return _SAMPLES[name]


def _sample_data_dir() -> pathlib.Path:
    """Return the folder that holds the sample files inside the installed package."""
    folder = importlib.resources.files("scribbleseg").joinpath("sample_data")
    if not isinstance(folder, pathlib.Path):
        raise FileNotFoundError(
            f"scribbleseg's sample data is not available as plain files ({folder}); "
            "install scribbleseg from a wheel or a source checkout, not from a zip archive"
        )
    return folder


def sample_path(name: str, kind: SampleFileKind) -> pathlib.Path:
    """Return the path of one file of a sample.

    Parameters
    ----------
    name : str
        One of `SAMPLE_NAMES`.
    kind : {"image", "scribbles", "ground_truth"}
        Which file.

    Returns
    -------
    pathlib.Path
        Path of the TIFF file, e.g. ``.../scribbleseg/sample_data/nuclei2d_image.tif``.

    Raises
    ------
    ValueError
        If `name` or `kind` is unknown.
    """
    _check_name(name)
    if kind not in _KINDS:
        raise ValueError(f"unknown sample file kind {kind!r}; valid kinds are: {', '.join(_KINDS)}")
    return _sample_data_dir() / f"{name}_{kind}.tif"


def load_sample(name: str) -> Sample:
    """Load a sample image with its scribbles and ground truth.

    Parameters
    ----------
    name : str
        One of `SAMPLE_NAMES`: ``"nuclei2d"`` or ``"mri3d"``.

    Returns
    -------
    Sample
        Fresh arrays (modifying them does not affect later loads) and their metadata.

    Raises
    ------
    ValueError
        If `name` is not a known sample.
    """
    info = _check_name(name)
    arrays = {kind: tifffile.imread(sample_path(name, kind)) for kind in _KINDS}
    return Sample(
        name=name,
        image=arrays["image"],
        scribbles=arrays["scribbles"],
        ground_truth=arrays["ground_truth"],
        spacing=info.spacing,
        class_names=dict(info.class_names),
        background_class=info.background_class,
        unit=info.unit,
    )
