"""Packaging: a cheap import, a valid napari manifest, config round-trips."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from scribbleseg.core.config import (
    LossConfig,
    ModelConfig,
    TrainConfig,
    crf_window_radius,
    default_patch_size,
)
from scribbleseg.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_import_does_not_load_torch_napari_or_qt():
    code = (
        "import sys, scribbleseg; "
        "heavy = [m for m in ('torch', 'monai', 'napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6') "
        "if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_training_and_prediction_in_memory_need_neither_dask_nor_zarr():
    """The core (train, predict an array) runs where only torch, MONAI and scikit-learn are installed.

    A GPU machine with PyTorch but without dask or zarr once failed every prediction: the blockwise
    module imported the zarr reader at import time.
    """
    code = """
import sys
for name in ("dask", "zarr", "numcodecs", "napari", "qtpy"):
    sys.modules[name] = None  # import fails as if not installed
import numpy as np
from scribbleseg.core.annotations import labels_to_target
from scribbleseg.core.config import TrainConfig
from scribbleseg.core.engine import Trainer
from scribbleseg.core.inference import predict_probabilities, probabilities_to_labels
from scribbleseg.core.volume import ImageSource
image = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
image[16:48, 16:48] += 3
labels = np.zeros((64, 64), np.uint8)
labels[30:34, 20:44] = 2
labels[2:4, 2:60] = 1
source, target = ImageSource(image), labels_to_target(labels)
config = TrainConfig(steps=2, device="cpu", num_threads=1, patch_size=(32, 32))
trainer = Trainer(source, target, train_config=config)
for _ in trainer.run():
    pass
probabilities = predict_probabilities(trainer.model, source, device="cpu")
print(probabilities_to_labels(probabilities, target.class_map.values).shape)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(64, 64)"


def test_public_api_is_lazy_but_complete():
    import scribbleseg

    for name in scribbleseg.__all__:
        assert getattr(scribbleseg, name) is not None


def test_cli_help_runs_without_qt():
    out = subprocess.run([sys.executable, "-m", "scribbleseg.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "train" in out.stdout


def test_npe2_validate():
    npe2 = pytest.importorskip("npe2")
    del npe2
    out = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", "scribbleseg"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_top_level_manifest_is_the_package_manifest():
    assert (ROOT / "napari.yaml").read_text() == (ROOT / "src/scribbleseg/napari.yaml").read_text()


@pytest.mark.parametrize("cls", [ModelConfig, LossConfig, TrainConfig])
def test_config_round_trip(cls):
    config = cls()
    assert cls.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("cls", "kwargs", "word"),
    [
        (LossConfig, {"crf_weight": -1}, "crf_weight"),
        (LossConfig, {"temperature": 0}, "temperature"),
        (TrainConfig, {"patch_size": (100, 100)}, "multiples of 16"),
        (TrainConfig, {"device": "tpu"}, "device"),
        (ModelConfig, {"size": "huge"}, "size"),
    ],
)
def test_config_rejects_bad_values(cls, kwargs, word):
    with pytest.raises(ConfigError, match=word):
        cls(**kwargs)


def test_config_rejects_unknown_fields():
    with pytest.raises(ConfigError, match="evil"):
        LossConfig.from_dict({"evil": 1})


def test_patch_and_window_follow_spacing():
    assert default_patch_size((512, 512), (1.0, 1.0)) == (128, 128)
    assert default_patch_size((60, 512, 512), (2.0, 1.0, 1.0)) == (32, 64, 64)
    assert default_patch_size((20, 40), (1.0, 1.0)) == (32, 48)
    assert crf_window_radius(3, (2.0, 1.0, 1.0)) == (2, 3, 3)
