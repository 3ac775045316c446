"""`scribbleseg predict` on zarr images, block by block: outputs, a local cluster, and bad input."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import zarr

from scribbleseg.cli import main
from scribbleseg.core.config import LossConfig, ModelConfig, TrainConfig
from scribbleseg.core.models import build_model
from scribbleseg.io.arrays import read_array, write_array
from scribbleseg.io.checkpoint import ModelMetadata, save_model


def run_cli(*args) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "scribbleseg.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def run_in_process(capsys, *args) -> subprocess.CompletedProcess[str]:
    """The same command through ``main()`` in this process (quicker than a new interpreter)."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


def assert_bad_input(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word.lower() in lines[0].lower(), lines[0]


def assert_not_complete(path) -> None:
    """Nothing at ``path`` claims to be a complete output."""
    if not path.exists():
        return
    attributes = zarr.open_array(str(path), mode="r").attrs.get("scribbleseg", {})
    assert attributes.get("complete") is False


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.manual_seed(0)
    config = ModelConfig(features=(4, 4, 8, 8, 16, 4))
    network = build_model(config, spatial_dims=3, in_channels=2, num_classes=2)
    metadata = ModelMetadata(
        model=config,
        spatial_dims=3,
        in_channels=2,
        class_values=(1, 3),
        class_names=("background", "cell"),
        normalisation={"low": [0.0, 0.0], "high": [1.0, 1.0]},
        spacing=(1.0, 1.0, 1.0),
        loss=LossConfig().to_dict(),
        train=TrainConfig().to_dict(),
    )
    return save_model(tmp_path_factory.mktemp("model") / "model", network, metadata)


@pytest.fixture
def image_zarr(tmp_path):
    image = np.random.default_rng(0).random((2, 12, 70, 50), dtype=np.float32)
    path = tmp_path / "image.zarr"
    write_array(path, image, axes="CZYX", spacing=(2.0, 1.0, 1.0), chunks=(1, 4, 32, 32))
    return path


def test_zarr_and_tiff_outputs_agree(tmp_path, model, image_zarr):
    result = run_cli(
        "predict", model, image_zarr, "-o", tmp_path / "out.zarr", "--probabilities", tmp_path / "p.zarr",
        "--device", "cpu",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    labels = read_array(tmp_path / "out.zarr")
    assert labels.data.shape == (12, 70, 50) and labels.spacing == pytest.approx((2.0, 1.0, 1.0))
    assert set(np.unique(labels.data)) <= {1, 3}
    assert zarr.open_array(str(tmp_path / "out.zarr")).attrs["scribbleseg"]["complete"] is True

    result = run_cli(
        "predict", model, image_zarr, "-o", tmp_path / "out.tif", "--probabilities", tmp_path / "p.npy",
        "--device", "cpu", "--probabilities-dtype", "float16",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    tiff = read_array(tmp_path / "out.tif")
    np.testing.assert_array_equal(tiff.data, labels.data)
    assert tiff.spacing == pytest.approx((2.0, 1.0, 1.0))
    probabilities = np.load(tmp_path / "p.npy")
    assert probabilities.dtype == np.float16 and probabilities.shape == (2, 12, 70, 50)
    np.testing.assert_allclose(probabilities, zarr.open_array(str(tmp_path / "p.zarr"))[...], atol=1e-3)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # partials removed


@pytest.mark.slow
def test_local_cluster_gives_the_same_labels(tmp_path, model, image_zarr):
    reference = run_cli("predict", model, image_zarr, "-o", tmp_path / "one.zarr", "--device", "cpu")
    assert reference.returncode == 0, reference.stderr
    result = run_cli(
        "predict", model, image_zarr, "-o", tmp_path / "two.zarr", "--device", "cpu", "--scheduler", "local:2"
    )
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(
        read_array(tmp_path / "two.zarr").data, read_array(tmp_path / "one.zarr").data
    )


def test_missing_image(tmp_path, model, capsys):
    result = run_in_process(capsys, "predict", model, tmp_path / "nothing.zarr", "-o", tmp_path / "out.zarr")
    assert_bad_input(result, "no such file", "nothing.zarr")
    assert not (tmp_path / "out.zarr").exists()


def test_corrupt_chunk(tmp_path, model, image_zarr, capsys):
    chunk = image_zarr / "c" / "1" / "2" / "1" / "1"
    assert chunk.is_file()
    chunk.write_bytes(b"\x00garbage" * 10)
    result = run_in_process(
        capsys, "predict", model, image_zarr, "-o", tmp_path / "out.zarr", "--device", "cpu"
    )
    assert_bad_input(result, "corrupt", "image.zarr")
    assert_not_complete(tmp_path / "out.zarr")


def test_output_folder_is_a_file(tmp_path, model, image_zarr, capsys):
    (tmp_path / "file").write_text("not a folder")
    out = tmp_path / "file" / "out.zarr"
    result = run_in_process(capsys, "predict", model, image_zarr, "-o", out, "--device", "cpu")
    assert_bad_input(result, "is a file")
    result = run_in_process(capsys, "predict", model, image_zarr, "-o", image_zarr, "--device", "cpu")
    assert_bad_input(result, "would overwrite")
    assert read_array(image_zarr).data.shape == (2, 12, 70, 50)


@pytest.fixture
def full_disk(tmp_path):
    """A 256 kB tmpfs (we run as root in CI and the dev containers); skipped where mount is refused."""
    folder = tmp_path / "small_disk"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)], capture_output=True, check=False
    )
    if shutil.which("mount") is None or mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr!r}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_disk_full(tmp_path, model, full_disk):
    image = np.random.default_rng(1).random((2, 8, 300, 300), dtype=np.float32)
    write_array(tmp_path / "image.zarr", image, axes="CZYX")
    out = full_disk / "out.zarr"
    result = run_cli(
        "predict", model, tmp_path / "image.zarr", "-o", out, "--probabilities", full_disk / "p.zarr",
        "--device", "cpu",
    )  # fmt: skip
    assert_bad_input(result, "disk is full", "rerun")
    assert_not_complete(out)
    assert_not_complete(full_disk / "p.zarr")
    result = run_cli("export", out, "-o", tmp_path / "out.tif")
    assert_bad_input(result, "incomplete prediction")
