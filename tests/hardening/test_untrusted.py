"""Untrusted model files: no code from a file ever runs, and bad files are refused clearly.

A model is data (``model.json`` + ``model.safetensors``), never a pickle. Here an attacker's
pickle — whose unpickling would create a marker file — is put everywhere the loader or the CLI
might look: as ``.pt`` / ``.pth`` / ``.ckpt`` / ``.bin`` / ``.pkl`` files, as a real ``torch.save``
checkpoint, in place of (or linked as) ``model.safetensors``, as ``model.json``, and named by a
``model.json`` field. Loading fails with :class:`~scribbleseg.errors.ModelFileError`, the CLI exits
with status 2 and one line, the marker is never created, and nothing even tries to unpickle
(``pickle`` and ``torch.load`` are booby-trapped during the calls). Then ``model.json`` files with
unexpected fields, wrong types and huge numbers, and weights of the wrong shape or type, are
refused with a message naming the problem — before a claimed huge network takes any memory.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pathlib
import pickle
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import numpy as np
import psutil
import pytest
import torch
from safetensors.torch import load_file, save_file

from scribbleseg.cli import main
from scribbleseg.core.config import LossConfig, ModelConfig, TrainConfig
from scribbleseg.core.models import build_model
from scribbleseg.errors import ModelFileError
from scribbleseg.io.checkpoint import ModelMetadata, load_model, save_model

TINY = ModelConfig(features=(4, 4, 8, 8, 8, 4), embedding_dim=2)


class Payload:
    """Unpickling this creates ``target``: proof that code from the file ran."""

    def __init__(self, target: pathlib.Path) -> None:
        self.target = str(target)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.target, "w"))


class TouchPayload(Payload):
    """The same through ``pathlib.Path.touch`` (another callable an attacker may choose)."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (pathlib.Path(self.target),))


def _tiny_model(folder: pathlib.Path) -> pathlib.Path:
    metadata = ModelMetadata(
        model=TINY,
        spatial_dims=2,
        in_channels=1,
        class_values=(1, 2),
        class_names=("background", "object"),
        background_class=1,
        normalisation={"low": [0.0], "high": [1.0]},
        spacing=(1.0, 1.0),
        loss=LossConfig().to_dict(),
        train=TrainConfig(steps=1).to_dict(),
    )
    torch.manual_seed(0)
    network = build_model(TINY, spatial_dims=2, in_channels=1, num_classes=2)
    return save_model(folder / "model", network, metadata)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A valid tiny 2D model folder (copy it before changing it)."""
    return _tiny_model(tmp_path_factory.mktemp("model"))


@pytest.fixture
def model(tmp_path: pathlib.Path, saved_model: pathlib.Path) -> pathlib.Path:
    """A fresh copy of the valid model, free to damage."""
    return pathlib.Path(shutil.copytree(saved_model, tmp_path / "model"))


@pytest.fixture
def image(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "image.npy"
    np.save(path, np.random.default_rng(0).random((16, 16)).astype(np.float32))
    return path


def _refuse(*_args: Any, **_kwargs: Any) -> Any:
    raise AssertionError("something tried to unpickle a file")


@contextlib.contextmanager
def no_unpickling() -> Iterator[None]:
    """Fail the test if anything calls pickle or torch.load (numpy's and torch's loaders use them)."""
    with (
        mock.patch("pickle.load", _refuse),
        mock.patch("pickle.loads", _refuse),
        mock.patch("pickle.Unpickler", _refuse),
        mock.patch("torch.load", _refuse),
    ):
        yield


def run_main(*args: str | pathlib.Path) -> tuple[int, list[str]]:
    """``scribbleseg.cli.main`` in this process: (exit status, stderr lines)."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        status = main([str(a) for a in args])
    return status, stderr.getvalue().strip().splitlines()


def test_the_payload_is_live(tmp_path):
    """Sanity check: unpickling the payloads does create the marker (so its absence means something)."""
    for kind in (Payload, TouchPayload):
        marker = tmp_path / f"marker-{kind.__name__}"
        pickle.loads(pickle.dumps({"state_dict": kind(marker)}))
        assert marker.exists()


# --------------------------------------------------------------------------------------------------
# (a) pickles wherever a model may be looked for


def _torch_checkpoint(path: pathlib.Path, marker: pathlib.Path) -> None:
    """A real torch.save (zip) checkpoint whose pickle runs the payload."""
    torch.save({"state_dict": {"w": torch.zeros(2)}, "hook": TouchPayload(marker)}, path)


def _pickle_file(path: pathlib.Path, marker: pathlib.Path) -> None:
    path.write_bytes(pickle.dumps({"state_dict": Payload(marker)}))


# Each placement returns the path handed to the loader; ``model`` is a valid model folder.
Placement = Callable[[pathlib.Path, pathlib.Path, pathlib.Path], pathlib.Path]


def _pickle_named(name: str) -> Placement:
    def place(folder: pathlib.Path, model: pathlib.Path, marker: pathlib.Path) -> pathlib.Path:
        _pickle_file(folder / name, marker)
        return folder / name

    return place


def _torch_save_named(folder: pathlib.Path, model: pathlib.Path, marker: pathlib.Path) -> pathlib.Path:
    _torch_checkpoint(folder / "checkpoint.pth", marker)
    return folder / "checkpoint.pth"


def _pickle_as_weights(folder: pathlib.Path, model: pathlib.Path, marker: pathlib.Path) -> pathlib.Path:
    _pickle_file(model / "model.safetensors", marker)
    return model


def _torch_save_as_weights(folder: pathlib.Path, model: pathlib.Path, marker: pathlib.Path) -> pathlib.Path:
    _torch_checkpoint(model / "model.safetensors", marker)
    return model / "model.json"


def _weights_linked_to_pickle(
    folder: pathlib.Path, model: pathlib.Path, marker: pathlib.Path
) -> pathlib.Path:
    _torch_checkpoint(folder / "evil.pt", marker)
    (model / "model.safetensors").unlink()
    (model / "model.safetensors").symlink_to(folder / "evil.pt")
    return model / "model.safetensors"


def _json_names_a_pickle(folder: pathlib.Path, model: pathlib.Path, marker: pathlib.Path) -> pathlib.Path:
    _torch_checkpoint(model / "evil.pt", marker)
    document = json.loads((model / "model.json").read_text())
    document["weights"] = "evil.pt"
    (model / "model.json").write_text(json.dumps(document))
    (model / "model.safetensors").unlink()
    return model


def _pickle_as_json(folder: pathlib.Path, model: pathlib.Path, marker: pathlib.Path) -> pathlib.Path:
    _pickle_file(model / "model.json", marker)
    return model


PLACEMENTS = {
    "model.pt": (_pickle_named("model.pt"), "PyTorch pickle"),
    "model.pth": (_pickle_named("model.pth"), "PyTorch pickle"),
    "model.ckpt": (_pickle_named("model.ckpt"), "PyTorch pickle"),
    "model.bin": (_pickle_named("model.bin"), "PyTorch pickle"),
    "model.pkl": (_pickle_named("model.pkl"), "PyTorch pickle"),
    "torch.save checkpoint": (_torch_save_named, "PyTorch pickle"),
    "pickle as model.safetensors": (_pickle_as_weights, "not a valid safetensors file"),
    "torch.save as model.safetensors": (_torch_save_as_weights, "not a valid safetensors file"),
    "model.safetensors linked to a pickle": (_weights_linked_to_pickle, "not a valid safetensors file"),
    "model.json naming a pickle": (_json_names_a_pickle, "unknown field(s) 'weights'"),
    "pickle as model.json": (_pickle_as_json, "not a ScribbleSeg model"),
}


@pytest.mark.parametrize("placement", sorted(PLACEMENTS))
def test_a_pickle_is_never_loaded(tmp_path, model, image, placement):
    place, message = PLACEMENTS[placement]
    marker = tmp_path / "code-ran"
    path = place(tmp_path, model, marker)
    with no_unpickling():
        with pytest.raises(ModelFileError) as info:
            load_model(path)
        assert message in str(info.value)
        status, lines = run_main("predict", path, image, "-o", tmp_path / "out.tif")
    assert not marker.exists()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("scribbleseg: error: "), lines
    assert message in lines[0]
    assert not (tmp_path / "out.tif").exists()


def test_train_refuses_a_pickle_as_the_starting_model(tmp_path, image):
    labels = np.zeros((16, 16), np.uint8)
    labels[2, 2:9], labels[12, 3:10] = 1, 2
    np.save(tmp_path / "labels.npy", labels)
    marker = tmp_path / "code-ran"
    _torch_checkpoint(tmp_path / "init.pt", marker)
    with no_unpickling():
        status, lines = run_main(
            "train", image, tmp_path / "labels.npy", "-o", tmp_path / "new", "--init", tmp_path / "init.pt"
        )
    assert status == 2 and len(lines) == 1 and "PyTorch pickle" in lines[0], lines
    assert not marker.exists() and not (tmp_path / "new").exists()


def test_the_real_command_refuses_a_pickle_in_a_fresh_process(tmp_path, model, image):
    marker = tmp_path / "code-ran"
    _torch_save_as_weights(tmp_path, model, marker)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "scribbleseg.cli",
            "predict",
            str(model),
            str(image),
            "-o",
            str(tmp_path / "o.tif"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a valid safetensors file" in lines[0] and "Traceback" not in result.stderr
    assert not marker.exists()


# --------------------------------------------------------------------------------------------------
# (b) model.json: unexpected fields, wrong types, huge numbers


def _edit(model: pathlib.Path, key: str, value: Any) -> None:
    document = json.loads((model / "model.json").read_text())
    target = document
    *parents, last = key.split(".")
    for parent in parents:
        target = target[parent]
    target[last] = value
    (model / "model.json").write_text(json.dumps(document))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        # unexpected fields
        ("weights", "evil.pt", "unknown field(s) 'weights'"),
        ("__reduce__", ["os.system", "touch /tmp/x"], "unknown field(s) '__reduce__'"),
        ("model.init_script", "import os", "no field(s) 'init_script'"),
        ("train.callback", "os.system", "no field(s) 'callback'"),
        # wrong types
        ("spatial_dims", "2", "spatial_dims must be 2 or 3"),
        ("in_channels", [1], "in_channels must be an integer"),
        ("class_values", "1,2", "class_values must be a list of integers"),
        ("class_names", {"1": "a"}, "class_names must be a list of strings"),
        ("normalisation", None, "normalisation must be"),
        ("spacing", [1.0, "1"], "spacing must hold 2 positive numbers"),
        ("model.embedding_dim", "x", "invalid literal for int()"),
        ("model.features", "wide", "features must be a sequence of integers"),
        ("training", {"nested": {"a": 1}}, "training['nested']"),
        ("version", 3, "version must be a string"),
        # huge numbers
        ("model.features", [10**6] * 6, "has shape (4, 1, 3, 3), expected (1000000, 1, 3, 3)"),
        ("model.embedding_dim", 10**9, "expected (1000000000, 4, 1, 1)"),
        ("model.embedding_dim", 10**400, "cannot be built"),
        ("model.features", [10**30] * 6, "cannot be built"),
        ("spatial_dims", 10**30, "spatial_dims must be 2 or 3"),
        ("in_channels", 10**12, "normalisation['low'] must hold 1000000000000 finite numbers"),
        ("class_values", [1, 10**30], "class values must be at most"),
        ("spacing", [1e308, 1e-320], None),  # odd but valid numbers: loads
    ],
)
def test_bad_metadata_is_refused_before_anything_is_built(model, key, value, message):
    _edit(model, key, value)
    rss_before = psutil.Process().memory_info().rss
    started = time.perf_counter()
    if message is None:
        load_model(model)
        return
    with pytest.raises(ModelFileError) as info:
        load_model(model)
    assert message in str(info.value) and "model" in str(info.value)
    assert "\n" not in str(info.value)
    # A claimed huge network is refused from its shapes: no memory taken, no time spent.
    assert time.perf_counter() - started < 5.0
    assert psutil.Process().memory_info().rss - rss_before < 200 * 2**20


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
        ('{"format": "scribbleseg-model", "format_version": Infinity}', "not valid JSON"),
        ('{"format": "scribbleseg-model", "format_version": 1e400}', "format version"),
        ('{"format": "scribbleseg-model", "format_version": 1}' + " " * (2 << 20), "too large"),
    ],
    ids=["deeply nested", "Infinity", "1e400", "over 1 MB"],
)
def test_json_that_is_not_metadata_is_refused(model, image, tmp_path, content, message):
    (model / "model.json").write_text(content)
    with pytest.raises(ModelFileError, match=message):
        load_model(model)
    status, lines = run_main("predict", model, image, "-o", tmp_path / "out.tif")
    assert status == 2 and len(lines) == 1 and message in lines[0], lines


# --------------------------------------------------------------------------------------------------
# (c) weights of the wrong shape or type


def _rewrite_weights(model: pathlib.Path, change: Callable[[dict[str, torch.Tensor]], None]) -> None:
    weights = load_file(str(model / "model.safetensors"))
    change(weights)
    save_file(weights, str(model / "model.safetensors"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda w: w.update({"segmentation_head.weight": torch.zeros(3, 4, 1, 1)}),
            "'segmentation_head.weight' has shape (3, 4, 1, 1), expected (2, 4, 1, 1)",
        ),
        (
            lambda w: w.update({"backbone.conv_0.conv_0.conv.weight": torch.zeros(4, 1, 3, 3, 3)}),
            "'backbone.conv_0.conv_0.conv.weight' has shape (4, 1, 3, 3, 3), expected (4, 1, 3, 3)",
        ),
        (lambda w: w.update({"segmentation_head.bias": torch.zeros(())}), "has shape (), expected (2,)"),
        (
            lambda w: w.update({"segmentation_head.bias": torch.zeros(2, dtype=torch.int64)}),
            "'segmentation_head.bias' has dtype torch.int64",
        ),
        (lambda w: w.pop("segmentation_head.bias"), "'segmentation_head.bias' is missing"),
    ],
    ids=["more classes", "3D kernel in a 2D model", "scalar", "integers", "missing"],
)
def test_weights_that_do_not_fit_are_refused(model, image, tmp_path, change, message):
    _rewrite_weights(model, change)
    with pytest.raises(ModelFileError) as info:
        load_model(model)
    assert message in str(info.value) and "model.safetensors" in str(info.value)
    status, lines = run_main("predict", model, image, "-o", tmp_path / "out.tif")
    assert status == 2 and len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "out.tif").exists()
