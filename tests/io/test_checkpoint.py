"""Model folders: model.json + model.safetensors, never pickle."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import skops.io
import torch
from safetensors.torch import load_file, save_file
from sklearn.preprocessing import FunctionTransformer

from scribbleseg import __version__
from scribbleseg.core.annotations import labels_to_target
from scribbleseg.core.config import LossConfig, ModelConfig, TrainConfig
from scribbleseg.core.models import ScribbleNet, build_model
from scribbleseg.core.pixel_classifier import ForestBlend, ForestTeacher
from scribbleseg.core.refine import MeanField
from scribbleseg.core.volume import ImageSource
from scribbleseg.errors import ConfigError, ModelFileError
from scribbleseg.io.checkpoint import (
    FOREST_FILE,
    FORMAT_NAME,
    FORMAT_VERSION,
    ModelMetadata,
    load_model,
    read_metadata,
    save_model,
)

TINY = ModelConfig(features=(4, 4, 8, 8, 8, 4), embedding_dim=2)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # These networks are tiny: extra threads only add contention on a busy CI machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _metadata(spatial_dims=3, in_channels=2, class_values=(1, 2, 5), **changes):
    values = {
        "model": TINY,
        "spatial_dims": spatial_dims,
        "in_channels": in_channels,
        "class_values": class_values,
        "class_names": tuple(f"class {v}" for v in class_values),
        "background_class": class_values[0],
        "normalisation": {"low": [0.0] * in_channels, "high": [255.0] * in_channels},
        "spacing": (2.0, 0.5, 0.5)[-spatial_dims:],
        "loss": LossConfig(crf_weight=0.5).to_dict(),
        "train": TrainConfig(steps=10, patch_size=(16,) * spatial_dims).to_dict(),
        "training": {"steps": 10, "seconds": 1.5, "labelled_voxels": 1234, "device": "cpu"},
    }
    values.update(changes)
    return ModelMetadata(**values)


def _trained_network(metadata, seed=0):
    """A network whose batch-norm statistics have moved away from their initial values."""
    torch.manual_seed(seed)
    network = build_model(
        metadata.model,
        spatial_dims=metadata.spatial_dims,
        in_channels=metadata.in_channels,
        num_classes=metadata.num_classes,
    )
    network.train()
    with torch.no_grad():
        network(torch.randn(2, metadata.in_channels, *(16,) * metadata.spatial_dims) * 3 + 1)
    return network.eval()


def _saved(tmp_path, **changes):
    metadata = _metadata(**changes)
    network = _trained_network(metadata)
    return save_model(tmp_path / "model", network, metadata), network, metadata


def _edit_json(folder, edit):
    document = json.loads((folder / "model.json").read_text())
    edit(document)
    (folder / "model.json").write_text(json.dumps(document))


# --------------------------------------------------------------------------------------------------
# round trip


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_round_trip_gives_identical_outputs(tmp_path, spatial_dims):
    folder, network, metadata = _saved(tmp_path, spatial_dims=spatial_dims)
    assert sorted(os.listdir(folder)) == ["model.json", "model.safetensors"]
    assert sorted(os.listdir(tmp_path)) == ["model"]  # no temporary folder left
    loaded, loaded_metadata = load_model(folder)
    assert isinstance(loaded, ScribbleNet)
    assert not loaded.training
    assert loaded_metadata == metadata
    # batch-norm buffers travel with the weights
    running_means = [k for k in network.state_dict() if k.endswith("running_mean")]
    assert running_means
    for key, value in network.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    image = torch.randn(1, 2, *(16,) * spatial_dims, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = network(image, with_embedding=True)
        actual = loaded(image, with_embedding=True)
    assert torch.equal(actual.logits, expected.logits)
    assert torch.equal(actual.embedding, expected.embedding)


def test_json_content(tmp_path):
    folder, _, metadata = _saved(tmp_path)
    document = json.loads((folder / "model.json").read_text())
    assert document["format"] == FORMAT_NAME == "scribbleseg-model"
    assert document["format_version"] == FORMAT_VERSION == 4
    assert document["forest_blend"] is None
    assert document["class_factors"] is None
    assert document["refinement"] is None
    assert document["class_values"] == [1, 2, 5]
    assert document["model"] == TINY.to_dict()
    assert document["version"] == __version__
    assert document["loss"]["crf_weight"] == 0.5
    assert read_metadata(folder) == metadata


def _saved_with_forest(tmp_path, blobs2d, weight=0.4):
    image, scribbles, _ = blobs2d
    source = ImageSource(image)
    teacher = ForestTeacher(
        source, labels_to_target(scribbles), trees=5, threads=1, prevalence_correction=True
    )
    assert teacher.fit()
    metadata = _metadata(spatial_dims=2, in_channels=1, class_values=(1, 2))
    network = _trained_network(metadata)
    network.forest_blend = ForestBlend(teacher.forest, teacher.spec, weight, 2, factors=teacher.factors)
    network.class_factors = (1.25, 0.75)
    network.refinement = MeanField((0.05,), weight=1.5)
    return save_model(tmp_path / "model", network, metadata), network, source


def test_round_trip_keeps_the_forest_blend(tmp_path, blobs2d):
    folder, network, source = _saved_with_forest(tmp_path, blobs2d)
    assert sorted(os.listdir(folder)) == sorted(["model.json", "model.safetensors", FOREST_FILE])
    document = json.loads((folder / "model.json").read_text())
    spec = network.forest_blend.spec
    assert document["forest_blend"] == {
        "weight": 0.4,
        "sigmas": list(spec.sigmas),
        "smoothing_only_below": spec.smoothing_only_below,
        "file": FOREST_FILE,
        "class_factors": list(network.forest_blend.factors),
    }
    assert document["class_factors"] == [1.25, 0.75]
    assert document["refinement"] == {
        "sigma_intensity": [0.05],
        "weight": 1.5,
        "sigma_spatial": 3.0,
        "window_radius": 3,
        "iterations": 5,
    }
    loaded, _ = load_model(folder)
    assert loaded.refinement == network.refinement
    assert loaded.forest_blend.weight == 0.4 and loaded.forest_blend.spec == spec
    assert loaded.forest_blend.factors == network.forest_blend.factors
    assert loaded.class_factors == (1.25, 0.75)
    region = (slice(0, 64), slice(0, 80))
    np.testing.assert_array_equal(
        loaded.forest_blend.probabilities(source, region), network.forest_blend.probabilities(source, region)
    )
    # Saving again over it, without a forest, leaves no stale forest file behind.
    network.forest_blend = None
    save_model(folder, network, read_metadata(folder))
    assert FOREST_FILE not in os.listdir(folder)
    assert load_model(folder)[0].forest_blend is None


def test_version_1_folders_still_load(tmp_path):
    folder, _, metadata = _saved(tmp_path)

    def as_version_1(document):
        document["format_version"] = 1
        del document["forest_blend"], document["class_factors"], document["refinement"]

    _edit_json(folder, as_version_1)
    loaded, loaded_metadata = load_model(folder)
    assert loaded.forest_blend is None and loaded_metadata == metadata


def test_version_2_folders_still_load(tmp_path, blobs2d):
    folder, network, _ = _saved_with_forest(tmp_path, blobs2d)

    def as_version_2(document):
        document["format_version"] = 2
        del document["class_factors"], document["refinement"]
        del document["forest_blend"]["class_factors"]

    _edit_json(folder, as_version_2)
    loaded, _ = load_model(folder)
    assert loaded.class_factors is None and loaded.forest_blend.factors is None
    assert loaded.forest_blend.weight == network.forest_blend.weight


def test_version_3_folders_still_load(tmp_path, blobs2d):
    folder, _, _ = _saved_with_forest(tmp_path, blobs2d)

    def as_version_3(document):
        document["format_version"] = 3
        del document["refinement"], document["train"]["crf_refinement"]

    _edit_json(folder, as_version_3)
    loaded, metadata = load_model(folder)
    assert loaded.refinement is None and loaded.class_factors == (1.25, 0.75)
    # Its settings say it was trained without the refinement (a widget then predicts without it).
    assert metadata.train["crf_refinement"] == 0.0
    # A version 3 folder with a refinement entry is not ours.
    _edit_json(folder, lambda d: d.update(refinement=None))
    with pytest.raises(ModelFileError, match="refinement"):
        load_model(folder)


def test_a_forest_file_with_other_types_is_never_loaded(tmp_path, blobs2d):
    folder, _, _ = _saved_with_forest(tmp_path, blobs2d)
    skops.io.dump(FunctionTransformer(func=os.system), folder / FOREST_FILE)
    with pytest.raises(ModelFileError, match=r"never loaded: \['posix.system'\]"):
        load_model(folder)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda folder: (folder / FOREST_FILE).write_bytes(b"not a zip"), "not a valid skops file"),
        (lambda folder: (folder / FOREST_FILE).unlink(), "has no forest.skops"),
        (lambda folder: _edit_json(folder, lambda d: d["forest_blend"].update(file="../x")), "file must be"),
        (
            lambda folder: _edit_json(folder, lambda d: d["forest_blend"].update(weight=2)),
            "weight must be in",
        ),
        (
            lambda folder: _edit_json(folder, lambda d: d["forest_blend"].update(sigmas=[1.0])),
            "the forest takes",
        ),
        (lambda folder: _edit_json(folder, lambda d: d["forest_blend"].pop("sigmas")), "must hold exactly"),
        (
            lambda folder: _edit_json(folder, lambda d: d["forest_blend"].update(class_factors=[1, -1])),
            "class_factors: prevalence factors must be 2 finite numbers >= 0",
        ),
        (
            lambda folder: _edit_json(folder, lambda d: d.update(class_factors=[1.0, 1.0, 1.0])),
            "class_factors: prevalence factors must be 2",
        ),
        (
            lambda folder: _edit_json(folder, lambda d: d.update(class_factors="x")),
            "class_factors must be a list of numbers",
        ),
        (
            lambda folder: _edit_json(folder, lambda d: d["forest_blend"].update(sigmas=[-1])),
            "sigmas must be positive",
        ),
        (
            lambda folder: _edit_json(folder, lambda d: d["refinement"].update(sigma_intensity=[0.1, 0.1])),
            "sigma_intensity has 2 value",
        ),
        (
            lambda folder: _edit_json(folder, lambda d: d["refinement"].update(sigma_intensity=[0])),
            "sigma_intensity must be a finite number > 0",
        ),
        (
            lambda folder: _edit_json(folder, lambda d: d["refinement"].update(iterations=1.5)),
            "iterations must be an integer",
        ),
        (lambda folder: _edit_json(folder, lambda d: d["refinement"].pop("weight")), "exactly the keys"),
        (lambda folder: _edit_json(folder, lambda d: d.update(refinement=[1])), "must be an object"),
    ],
)
def test_a_damaged_forest_is_refused(tmp_path, blobs2d, damage, message):
    folder, _, _ = _saved_with_forest(tmp_path, blobs2d)
    damage(folder)
    with pytest.raises(ModelFileError, match=message):
        load_model(folder)


def test_json_or_weights_file_names_the_model(tmp_path):
    folder, _, metadata = _saved(tmp_path)
    for path in (folder / "model.json", folder / "model.safetensors", str(folder)):
        assert load_model(path)[1] == metadata


def test_saving_replaces_a_previous_model(tmp_path):
    folder, _, _ = _saved(tmp_path)
    metadata = _metadata(class_values=(1, 2), in_channels=1)
    save_model(folder, _trained_network(metadata, seed=3), metadata)
    assert load_model(folder)[1].class_values == (1, 2)
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_saving_refuses_to_overwrite_other_things(tmp_path):
    metadata = _metadata()
    network = _trained_network(metadata)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "notes.txt").write_text("keep")
    with pytest.raises(ModelFileError, match="not a ScribbleSeg model"):
        save_model(tmp_path / "results", network, metadata)
    assert (tmp_path / "results" / "notes.txt").read_text() == "keep"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ModelFileError, match="file of that name"):
        save_model(tmp_path / "afile", network, metadata)
    with pytest.raises(ModelFileError, match="does not exist"):
        save_model(tmp_path / "missing" / "model", network, metadata)
    for name in ("model.pt", "model.json", "model.safetensors"):
        with pytest.raises(ModelFileError, match="is a folder"):
            save_model(tmp_path / name, network, metadata)


def test_saving_checks_the_weights_fit_the_metadata(tmp_path):
    metadata = _metadata(in_channels=2)
    network = _trained_network(_metadata(in_channels=1))
    with pytest.raises(ModelFileError, match=r"backbone\.conv_0.*shape"):
        save_model(tmp_path / "model", network, metadata)
    assert os.listdir(tmp_path) == []


def test_metadata_is_validated():
    with pytest.raises(ConfigError, match="class_names"):
        _metadata(class_names=("only one",))
    with pytest.raises(ConfigError, match="sorted"):
        _metadata(class_values=(2, 1), background_class=None)
    with pytest.raises(ConfigError, match="0 means unlabelled"):
        _metadata(class_values=(0, 1))
    with pytest.raises(ConfigError, match="at least 2 classes"):
        _metadata(class_values=(1,))
    with pytest.raises(ConfigError, match="background_class"):
        _metadata(background_class=7)
    with pytest.raises(ConfigError, match="normalisation"):
        _metadata(normalisation={"low": [0.0], "high": [1.0]})
    with pytest.raises(ConfigError, match="spacing"):
        _metadata(spacing=(1.0, 1.0))
    with pytest.raises(ConfigError, match="no field"):
        _metadata(loss={"nonsense": 1})
    with pytest.raises(ConfigError, match="training"):
        _metadata(training={"steps": float("nan")})


# --------------------------------------------------------------------------------------------------
# strict JSON


def test_unknown_json_field_is_refused(tmp_path):
    folder, _, _ = _saved(tmp_path)
    _edit_json(folder, lambda d: d.update(exec="import os"))
    with pytest.raises(ModelFileError, match=r"unknown field.*'exec'"):
        load_model(folder)


def test_unknown_nested_field_is_refused(tmp_path):
    folder, _, _ = _saved(tmp_path)
    _edit_json(folder, lambda d: d["model"].update(activation="gelu"))
    with pytest.raises(ModelFileError, match="activation"):
        load_model(folder)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("spatial_dims", "3", "spatial_dims"),
        ("spatial_dims", 4, "spatial_dims"),
        ("in_channels", 2.0, "in_channels"),
        ("in_channels", True, "in_channels"),
        ("class_values", [1, "2", 5], "class_values"),
        ("class_names", "abc", "class_names"),
        ("normalisation", [0, 1], "normalisation"),
        ("spacing", "1,1,1", "spacing"),
        ("loss", {"crf_weight": -1}, "crf_weight"),
        ("train", [], "train"),
        ("training", {"nested": {"a": 1}}, "training"),
        ("version", 1, "version"),
        ("model", {"size": "huge"}, "size"),
        (
            "model",
            {"size": "small", "features": None, "embedding_dim": "2", "dropout": 0.0},
            "cannot be built|do not match",
        ),
    ],
)
def test_wrong_types_are_refused(tmp_path, key, value, message):
    folder, _, _ = _saved(tmp_path)
    _edit_json(folder, lambda d: d.update({key: value}))
    with pytest.raises(ModelFileError, match=message) as info:
        load_model(folder)
    assert "model.json" in str(info.value)


def test_missing_json_field_is_refused(tmp_path):
    folder, _, _ = _saved(tmp_path)
    _edit_json(folder, lambda d: d.pop("class_names"))
    with pytest.raises(ModelFileError, match=r"missing field.*class_names"):
        load_model(folder)


def test_format_and_version_are_checked(tmp_path):
    folder, _, _ = _saved(tmp_path)
    _edit_json(folder, lambda d: d.update(format_version=5))
    with pytest.raises(ModelFileError, match="format version 5"):
        load_model(folder)
    _edit_json(folder, lambda d: d.update(format_version=2, format="something-else"))
    with pytest.raises(ModelFileError, match="not a ScribbleSeg model"):
        load_model(folder)
    (folder / "model.json").write_text("[1, 2, 3]")
    with pytest.raises(ModelFileError, match="not a ScribbleSeg model"):
        load_model(folder)
    (folder / "model.json").write_text('{"format": NaN')
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load_model(folder)
    (folder / "model.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ModelFileError, match="not text"):
        load_model(folder)


# --------------------------------------------------------------------------------------------------
# weights that do not fit


def test_wrong_shape_weights_are_refused(tmp_path):
    folder, _, _ = _saved(tmp_path, in_channels=1, normalisation={"low": [0.0], "high": [1.0]})
    # The JSON now claims two input channels; the weights were trained with one.
    _edit_json(folder, lambda d: d.update(in_channels=2, normalisation={"low": [0, 0], "high": [1, 1]}))
    with pytest.raises(
        ModelFileError,
        match=r"'backbone\.conv_0\.conv_0\.conv\.weight' has shape \(4, 1, 3, 3, 3\), "
        r"expected \(4, 2, 3, 3, 3\)",
    ):
        load_model(folder)


def test_missing_and_unexpected_weights_are_refused(tmp_path):
    folder, _, _ = _saved(tmp_path)
    weights = load_file(str(folder / "model.safetensors"))
    removed = dict(weights)
    del removed["segmentation_head.bias"]
    save_file(removed, str(folder / "model.safetensors"))
    with pytest.raises(ModelFileError, match=r"'segmentation_head\.bias' is missing"):
        load_model(folder)
    extra = dict(weights, **{"hook.payload": torch.zeros(3)})
    save_file(extra, str(folder / "model.safetensors"))
    with pytest.raises(ModelFileError, match=r"unexpected weight 'hook\.payload'"):
        load_model(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelFileError, match=r"no model\.safetensors"):
        load_model(folder)


def test_truncated_weights_are_refused(tmp_path):
    folder, _, _ = _saved(tmp_path)
    content = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(content[: len(content) // 2])
    with pytest.raises(ModelFileError, match="not a valid safetensors"):
        load_model(folder)


# --------------------------------------------------------------------------------------------------
# files that are not ours, and pickles


def test_missing_model(tmp_path):
    with pytest.raises(ModelFileError, match="no such model"):
        load_model(tmp_path / "nothing")


def test_files_that_are_not_models(tmp_path):
    (tmp_path / "random.bin.dat").write_bytes(os.urandom(200))
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(100))
    (tmp_path / "empty_folder").mkdir()
    (tmp_path / "notes.json").write_text('{"format": "something else"}')
    for name in ("random.bin.dat", "image.png", "empty_folder", "notes.json"):
        with pytest.raises(ModelFileError, match="is not a ScribbleSeg model") as info:
            load_model(tmp_path / name)
        assert "expected a folder with model.json and model.safetensors" in str(info.value)


class _Payload:
    """Unpickling this creates a file: proof that code from the file ran."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_pickles_are_never_unpickled(tmp_path):
    pwned = tmp_path / "pwned"
    payload = pickle.dumps({"state_dict": _Payload(str(pwned))})
    # as a PyTorch checkpoint
    for name in ("model.pt", "model.pth", "model.ckpt"):
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(ModelFileError, match="only ScribbleSeg model folders"):
            load_model(tmp_path / name)
    # disguised as the weights of a folder with a valid model.json
    folder, _, _ = _saved(tmp_path)
    (folder / "model.safetensors").write_bytes(payload)
    for path in (folder, folder / "model.safetensors", folder / "model.json"):
        with pytest.raises(ModelFileError, match="not a valid safetensors"):
            load_model(path)
    # a pickle where the JSON should be
    (folder / "model.json").write_bytes(payload)
    with pytest.raises(ModelFileError, match="not a ScribbleSeg model"):
        load_model(folder)
    assert not pwned.exists()


def test_load_onto_device(tmp_path):
    folder, _, _ = _saved(tmp_path)
    network, _ = load_model(folder, device=torch.device("cpu"))
    assert next(network.parameters()).device.type == "cpu"
