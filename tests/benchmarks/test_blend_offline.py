"""``benchmarks/blend_offline.py``: the ceiling of the network/forest mix, on a real sample."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import blend_offline
from scribbleseg.samples import load_sample


def test_matched_network_takes_the_reference_prevalence():
    rng = np.random.default_rng(0)
    network = rng.dirichlet([1.0, 2.0, 3.0], size=(24, 20)).transpose(2, 0, 1)
    reference = rng.dirichlet([3.0, 2.0, 1.0], size=(24, 20)).transpose(2, 0, 1)
    matched = blend_offline._matched(network, reference)
    np.testing.assert_allclose(matched.sum(0), 1.0, atol=1e-6)
    # Fitted on every second pixel per axis: there its mean is the reference's mean.
    fitted = matched[:, ::2, ::2].reshape(3, -1).mean(1)
    np.testing.assert_allclose(fitted, reference.reshape(3, -1).mean(1), atol=1e-4)
    # Re-weighting keeps each pixel's ranking between two classes consistent across pixels.
    ratio = matched[0] / matched[1] / (network[0] / network[1])
    np.testing.assert_allclose(ratio, ratio.flat[0], rtol=1e-5)


def _cache_sparse_scribbles(folder, *, shift: int, weight: float) -> None:
    """A cache of ``sets`` for nuclei2d/scribbles/sparse/0: the forest is the softened ground truth,
    the network the same shifted right by ``shift`` pixels, mixed at ``weight``."""
    sample = load_sample("nuclei2d")
    truth = np.stack([sample.ground_truth == value for value in (1, 2)]).astype(np.float32)
    forest = 0.9 * truth + 0.05
    np.savez_compressed(
        folder / "nuclei2d_scribbles_sparse_0.npz",
        net=np.roll(forest, shift, axis=2),
        forest=forest,
        w=np.float32(weight),
        sigma=np.array([0.1]),
        steps=12,
    )


def test_ceiling_prints_every_mix_beside_the_forest_of_accuracy_py(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(blend_offline, "CACHE", tmp_path)
    _cache_sparse_scribbles(tmp_path, shift=3, weight=0.3)  # the network worse than the forest
    blend_offline.ceiling(["nuclei2d/scribbles/sparse/0"], [0.8])
    out = capsys.readouterr().out
    rows = dict(re.findall(r"^  (.+?): ([01]\.\d+)", out, flags=re.M))
    assert set(rows) >= {"ilastik-equivalent RF", "network alone", "a = 1.00", "a = 0.80, matched, refined"}
    assert float(rows["a = 1.00"]) == 1.0  # the forest here is the ground truth
    # Below a half the shifted network decides wherever the two disagree.
    assert float(rows["network alone"]) == float(rows["a = the default's"]) < 0.99
    assert 0.8 < float(rows["ilastik-equivalent RF"]) < 1.0


def test_ceiling_can_mix_the_network_with_the_rf_itself(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(blend_offline, "CACHE", tmp_path)
    _cache_sparse_scribbles(tmp_path, shift=3, weight=0.3)
    blend_offline.ceiling(["nuclei2d/scribbles/sparse/0"], [0.8], "rf")
    out = capsys.readouterr().out
    rows = dict(re.findall(r"^  (.+?): ([01]\.\d+)", out, flags=re.M))
    # The forest in the mix is now the RF: alone it is the RF's own prediction, not the cached truth.
    assert float(rows["a = 1.00"]) == float(rows["ilastik-equivalent RF"])
    assert 0.8 < float(rows["ilastik-equivalent RF"]) < 1.0


def test_classifiers_prints_each_beside_the_rf(capsys):
    blend_offline.classifiers(["nuclei2d/points/dense/0"], threads=1)
    out = capsys.readouterr().out
    rows = dict(re.findall(r"^  (.+?): ([01]\.\d+)", out, flags=re.M))
    assert set(rows) == set(blend_offline._classifiers(0, 1))
    with pytest.raises(SystemExit, match="one data set"):
        blend_offline.classifiers(["nuclei2d/points/dense/0", "mri3d/points/dense/0"])


def test_prevalence_prints_each_correction_of_the_mix(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(blend_offline, "CACHE", tmp_path)
    _cache_sparse_scribbles(tmp_path, shift=0, weight=0.5)
    blend_offline.prevalence(["nuclei2d/scribbles/sparse/0"])
    out = capsys.readouterr().out
    rows = dict(re.findall(r"^  (.+?): ([01]\.\d+)", out, flags=re.M))
    assert set(rows) == {
        "the defaults' mix",
        "each corrected, then mixed",
        "the mix corrected",
        "the mix half corrected",
    }
    dice = {key: float(value) for key, value in rows.items()}
    # Network and forest are the same map: correcting each, then mixing, is correcting the mix.
    assert dice["each corrected, then mixed"] == dice["the mix corrected"]
    # The softened truth is refined as prediction refines it; the half correction lies between.
    assert 0.9 < dice["the defaults' mix"] <= 1.0
    low, high = sorted((dice["the defaults' mix"], dice["the mix corrected"]))
    assert low <= dice["the mix half corrected"] <= high
    shares = re.search(r"estimated shares ([\d.]+), ([\d.]+)", out)
    assert float(shares[1]) + float(shares[2]) == pytest.approx(1.0, abs=0.002)


def test_recalibration_reports_each_draw(capsys):
    blend_offline.recalibration("nuclei2d/scribbles/sparse/0", draws=2, batches=1, budget=3.0)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("nuclei2d/scribbles/sparse/0: ")
    assert len(lines) == 1 + 1 + 2 * 2  # the run, as trained, two draws of each sampler
    assert all(re.search(r"network [01]\.\d{4}, refined mix [01]\.\d{4}$", line) for line in lines[1:])
    assert "even patches, no augmentation, draw 2" in lines[-1]
