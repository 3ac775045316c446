"""The command line: the happy path and every bad input ending in exit 2 with one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from scribbleseg.cli import main


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run the real command in a subprocess (as a user would)."""
    return subprocess.run(
        [sys.executable, "-m", "scribbleseg.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_bad_input(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word.lower() in lines[0].lower(), lines[0]


@pytest.fixture
def files2d(tmp_path, blobs2d):
    image, scribbles, truth = blobs2d
    paths = {
        "image": tmp_path / "image.tif",
        "labels": tmp_path / "labels.tif",
        "truth": tmp_path / "truth.tif",
    }
    tifffile.imwrite(paths["image"], image)
    tifffile.imwrite(paths["labels"], scribbles)
    tifffile.imwrite(paths["truth"], truth)
    return paths


def _train(files, out, *extra):
    return run_cli(
        "train", files["image"], files["labels"], "-o", out, "--steps", "3", "--device", "cpu", *extra
    )


def test_train_predict_evaluate_export(tmp_path, files2d):
    model = tmp_path / "model"
    result = _train(files2d, model)
    assert result.returncode == 0, result.stderr
    assert (model / "model.json").is_file() and (model / "model.safetensors").is_file()
    pred = tmp_path / "pred.tif"
    probs = tmp_path / "probs.npy"
    result = run_cli(
        "predict", model, files2d["image"], "-o", pred, "--probabilities", probs, "--device", "cpu"
    )
    assert result.returncode == 0, result.stderr
    labels = tifffile.imread(pred)
    assert labels.shape == (64, 80) and set(np.unique(labels)) <= {1, 2}
    assert np.load(probs).shape == (2, 64, 80)
    result = run_cli("evaluate", pred, files2d["truth"], "--background-class", "1")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report["classes"]) <= {"1", "2"}
    assert 0.0 <= report["mean_foreground_dice"] <= 1.0
    out = tmp_path / "export.tif"
    result = run_cli("export", pred, "-o", out, "--background-class", "1")
    assert result.returncode == 0, result.stderr
    exported = tifffile.imread(out)
    np.testing.assert_array_equal(exported, np.where(labels == 1, 0, labels))


def test_warm_start_and_points(tmp_path, files2d, blobs2d):
    _, _, truth = blobs2d
    model = tmp_path / "model"
    assert _train(files2d, model).returncode == 0
    points = tmp_path / "points.csv"
    ys, xs = np.nonzero(truth == 2)
    rows = ["index,axis-0,axis-1,class", f"0,{ys[0]},{xs[0]},2", "1,1,1,1"]
    points.write_text("\n".join(rows) + "\n")
    result = _train(files2d, tmp_path / "model2", "--init", model, "--points", points)
    assert result.returncode == 0, result.stderr


def test_missing_file(tmp_path, files2d):
    assert_bad_input(_train({**files2d, "image": tmp_path / "nope.tif"}, tmp_path / "m"), "nope.tif")


def test_labels_shape_differs(tmp_path, files2d):
    tifffile.imwrite(files2d["labels"], np.ones((10, 10), np.uint8))
    assert_bad_input(_train(files2d, tmp_path / "m"), "shape")


def test_no_labelled_voxel(tmp_path, files2d):
    tifffile.imwrite(files2d["labels"], np.zeros((64, 80), np.uint8))
    assert_bad_input(_train(files2d, tmp_path / "m"), "no labelled")


def test_only_one_class(tmp_path, files2d, blobs2d):
    scribbles = blobs2d[1].copy()
    scribbles[scribbles == 1] = 0
    tifffile.imwrite(files2d["labels"], scribbles)
    assert_bad_input(_train(files2d, tmp_path / "m"), "only class 2")


def test_non_integer_labels(tmp_path, files2d):
    tifffile.imwrite(files2d["labels"], np.full((64, 80), 0.5, np.float32))
    assert_bad_input(_train(files2d, tmp_path / "m"), "integer")


@pytest.mark.parametrize("content", [b"not a tiff at all", None])
def test_corrupt_tiff(tmp_path, files2d, content):
    bad = tmp_path / "bad.tif"
    if content is None:  # a real TIFF cut in half
        bad.write_bytes(files2d["image"].read_bytes()[:3000])
    else:
        bad.write_bytes(content)
    assert_bad_input(_train({**files2d, "image": bad}, tmp_path / "m"), "bad.tif")


def test_model_that_is_not_ours(tmp_path, files2d):
    fake = tmp_path / "fake_model"
    fake.mkdir()
    (fake / "model.json").write_text('{"hello": "world"}')
    assert_bad_input(run_cli("predict", fake, files2d["image"], "-o", tmp_path / "p.tif"), "model")
    other = tmp_path / "weights.pt"
    other.write_bytes(b"\x80\x04K\x01.")
    assert_bad_input(run_cli("predict", other, files2d["image"], "-o", tmp_path / "p.tif"), "model")


def test_usage_errors_are_one_line(tmp_path, files2d):
    assert_bad_input(run_cli("train", files2d["image"]), "required")
    assert_bad_input(_train(files2d, tmp_path / "m", "--crf-weight", "-1"), "crf-weight")
    assert_bad_input(_train(files2d, tmp_path / "m", "--forest-blend", "1.5"), "forest-blend", "[0, 1]")
    result = _train(files2d, tmp_path / "m", "--forest-blend-steps", "2")
    assert_bad_input(result, "forest_blend_steps", ">= 3")


def test_the_saved_forest_is_used_unless_network_only(tmp_path, files2d):
    model = tmp_path / "m"
    result = run_cli(
        "train", files2d["image"], files2d["labels"], "-o", model, "--time-budget", "6", "--device", "cpu"
    )
    assert result.returncode == 0, result.stderr
    document = json.loads((model / "model.json").read_text())
    assert document["forest_blend"]["weight"] > 0, "the forest did not come in within 6 s"
    assert (model / "forest.skops").is_file()
    probabilities = {}
    for name, extra in (("blend", ()), ("network", ("--network-only",))):
        out, probs = tmp_path / f"{name}.tif", tmp_path / f"{name}.npy"
        result = run_cli(
            "predict", model, files2d["image"], "-o", out, "--probabilities", probs, "--device", "cpu", *extra
        )
        assert result.returncode == 0, result.stderr
        probabilities[name] = np.load(probs)
    assert np.abs(probabilities["blend"] - probabilities["network"]).max() > 0.01


def test_forest_blend_option_reaches_the_model(tmp_path, files2d):
    result = _train(files2d, tmp_path / "m", "--forest-blend", "0", "--forest-blend-steps", "900")
    assert result.returncode == 0, result.stderr
    document = json.loads((tmp_path / "m" / "model.json").read_text())
    assert document["train"]["forest_blend"] == 0.0
    assert document["train"]["forest_blend_steps"] == 900
    assert document["forest_blend"] is None and not (tmp_path / "m" / "forest.skops").exists()


def test_teacher_refinement_options_reach_the_model(tmp_path, files2d):
    result = _train(files2d, tmp_path / "m", "--teacher-refinement", "0.5", "--teacher-self-training", "2")
    assert result.returncode == 0, result.stderr
    document = json.loads((tmp_path / "m" / "model.json").read_text())
    assert document["loss"]["teacher_refinement"] == 0.5
    assert document["loss"]["teacher_self_training"] == 2
    assert_bad_input(_train(files2d, tmp_path / "bad", "--teacher-refinement", "-1"), "--teacher-refinement")
    bad_rounds = _train(files2d, tmp_path / "bad", "--teacher-self-training", "1.5")
    assert_bad_input(bad_rounds, "--teacher-self-training")


def test_prevalence_correction_option_reaches_the_model(tmp_path, files2d):
    result = _train(files2d, tmp_path / "plain")
    assert result.returncode == 0, result.stderr
    document = json.loads((tmp_path / "plain" / "model.json").read_text())
    assert document["train"]["prevalence_correction"] is False and document["class_factors"] is None
    result = _train(files2d, tmp_path / "m", "--prevalence-correction")
    assert result.returncode == 0, result.stderr
    document = json.loads((tmp_path / "m" / "model.json").read_text())
    assert document["train"]["prevalence_correction"] is True
    assert len(document["class_factors"]) == 2 and all(f > 0 for f in document["class_factors"])
    out = tmp_path / "pred.tif"
    result = run_cli("predict", tmp_path / "m", files2d["image"], "-o", out, "--device", "cpu")
    assert result.returncode == 0, result.stderr


def test_crf_refinement_option_reaches_the_model_and_can_be_left_out(tmp_path, files2d):
    assert_bad_input(_train(files2d, tmp_path / "bad", "--crf-refinement", "-1"), "crf-refinement")
    result = _train(files2d, tmp_path / "m", "--crf-refinement", "2.5")
    assert result.returncode == 0, result.stderr
    document = json.loads((tmp_path / "m" / "model.json").read_text())
    assert document["train"]["crf_refinement"] == 2.5
    refinement = document["refinement"]
    assert refinement["weight"] == 2.5 and len(refinement["sigma_intensity"]) == 1
    probabilities = {}
    for name, extra in (("refined", ()), ("plain", ("--no-crf-refinement",))):
        out, probs = tmp_path / f"{name}.tif", tmp_path / f"{name}.npy"
        result = run_cli(
            "predict",
            tmp_path / "m",
            files2d["image"],
            "-o",
            out,
            "--probabilities",
            probs,
            "--device",
            "cpu",
            *extra,
        )
        assert result.returncode == 0, result.stderr
        probabilities[name] = np.load(probs)
    assert np.abs(probabilities["refined"] - probabilities["plain"]).max() > 0.01
    result = _train(files2d, tmp_path / "off", "--crf-refinement", "0")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "off" / "model.json").read_text())["refinement"] is None


def test_nan_image_trains_and_predicts_with_a_warning(tmp_path, files2d, blobs2d):
    image = blobs2d[0].copy()
    image[3:7, 3:7] = np.nan
    image[30, 30] = -np.inf
    tifffile.imwrite(files2d["image"], image)
    result = _train(files2d, tmp_path / "m")
    assert result.returncode == 0, result.stderr
    assert "warning" in result.stderr and "NaN" in result.stderr
    result = run_cli("predict", tmp_path / "m", files2d["image"], "-o", tmp_path / "p.tif", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "NaN" in result.stderr


def test_main_in_process_returns_status(tmp_path, files2d, capsys):
    assert main(["evaluate", str(files2d["truth"]), str(files2d["truth"])]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["mean_dice"] == 1.0
