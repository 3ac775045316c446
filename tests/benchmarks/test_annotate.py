"""The accuracy benchmark's simulated annotator draws what a person would, and only true labels."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from _annotate import DENSITIES, simulate_points, simulate_scribbles
from scribbleseg.samples import load_sample


@pytest.fixture(scope="module")
def nuclei():
    return load_sample("nuclei2d")


@pytest.fixture(scope="module")
def mri():
    return load_sample("mri3d")


@pytest.mark.parametrize("density", list(DENSITIES))
def test_scribbles_are_true_sparse_and_seeded(nuclei, density: str) -> None:
    classes = sorted(nuclei.class_names)
    scribbles = simulate_scribbles(nuclei.ground_truth, classes, DENSITIES[density], seed=3)
    labelled = scribbles > 0
    assert np.array_equal(scribbles[labelled], nuclei.ground_truth[labelled])
    assert set(np.unique(scribbles)) == {0, *classes}
    assert 0.002 < labelled.mean() < 0.05
    again = simulate_scribbles(nuclei.ground_truth, classes, DENSITIES[density], seed=3)
    assert np.array_equal(scribbles, again)
    other = simulate_scribbles(nuclei.ground_truth, classes, DENSITIES[density], seed=4)
    assert not np.array_equal(scribbles, other)


def test_denser_annotation_labels_more(nuclei) -> None:
    classes = sorted(nuclei.class_names)
    sparse = simulate_scribbles(nuclei.ground_truth, classes, DENSITIES["sparse"], seed=0)
    dense = simulate_scribbles(nuclei.ground_truth, classes, DENSITIES["dense"], seed=0)
    assert (dense > 0).sum() > 1.5 * (sparse > 0).sum()


def test_3d_scribbles_lie_on_every_nth_slice_only(mri) -> None:
    density = DENSITIES["sparse"]
    scribbles = simulate_scribbles(mri.ground_truth, sorted(mri.class_names), density, seed=0)
    slices = np.flatnonzero((scribbles > 0).any(axis=(1, 2)))
    assert len(slices) >= 3
    assert np.all(np.diff(slices) % density.slice_step == 0)
    labelled = scribbles > 0
    assert np.array_equal(scribbles[labelled], mri.ground_truth[labelled])


@pytest.mark.parametrize("density", list(DENSITIES))
def test_points_are_a_few_true_balls_per_class(mri, density: str) -> None:
    points = simulate_points(
        mri.ground_truth, sorted(mri.class_names), DENSITIES[density], seed=0, spacing=mri.spacing
    )
    labelled = points > 0
    # Balls of radius 2 around clicks where they fit inside the class: (almost) all voxels are true.
    assert np.mean(points[labelled] == mri.ground_truth[labelled]) > 0.995
    for value in mri.class_names:
        from scipy import ndimage

        _, balls = ndimage.label(points == value)
        assert 1 <= balls <= DENSITIES[density].points_per_class
