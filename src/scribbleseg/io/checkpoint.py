"""Saving and loading trained models without pickle.

A model is a folder holding two or three files::

    MODEL/
      model.json         {"format": "scribbleseg-model", "format_version": 4, ...ModelMetadata,
                          "forest_blend": {"weight", "sigmas", "smoothing_only_below", "file",
                                           "class_factors"} or null,
                          "class_factors": [one number per class] or null,
                          "refinement": {"sigma_intensity", "weight", "sigma_spatial",
                                         "window_radius", "iterations"} or null}
      model.safetensors  the network's state dict (weights and batch-norm buffers)
      forest.skops       the forest mixed into predictions (only when forest_blend is not null)

Loading never runs code from the files: the JSON is parsed strictly (exactly
the known keys, checked types), the network is rebuilt from it with
:func:`~scribbleseg.core.models.build_model`, and the weights are read with
safetensors, which holds raw tensors only. Every tensor's name and shape is
checked before it is copied in. ``torch.load`` is never called, so ``.pt`` /
``.pth`` pickles are refused. The forest
(:class:`~scribbleseg.core.pixel_classifier.ForestBlend`) is stored with ``skops``, whose
format rebuilds only the types it is told to trust: a random forest of decision trees, and
nothing else. ``class_factors`` are the prevalence factors of the network's and of the forest's
probabilities (:mod:`scribbleseg.core.prevalence`); ``refinement`` is the CRF refinement of the
final probabilities (:mod:`scribbleseg.core.refine`). Version 1 folders (no forest), version 2
folders (no prevalence factors) and version 3 folders (no refinement) still load.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import os
import pathlib
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from scribbleseg import __version__
from scribbleseg.core.config import LossConfig, ModelConfig, TrainConfig
from scribbleseg.core.features import FeatureSpec
from scribbleseg.core.models import ScribbleNet, build_model
from scribbleseg.core.pixel_classifier import ForestBlend
from scribbleseg.core.prevalence import check_factors
from scribbleseg.core.refine import MeanField
from scribbleseg.errors import ConfigError, ModelFileError

__all__ = [
    "FOREST_FILE",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "METADATA_FILE",
    "WEIGHTS_FILE",
    "ModelMetadata",
    "load_model",
    "model_folder",
    "read_metadata",
    "save_model",
]

FORMAT_NAME = "scribbleseg-model"
FORMAT_VERSION = 4
#: Versions of the layout :func:`load_model` reads (1: no forest blend; 2: no class factors;
#: 3: no refinement).
SUPPORTED_FORMAT_VERSIONS = (1, 2, 3, 4)
METADATA_FILE = "model.json"
WEIGHTS_FILE = "model.safetensors"
FOREST_FILE = "forest.skops"
#: The only types a forest file may hold beyond skops' default trusted ones (numpy, sklearn
#: estimators such as RandomForestClassifier and DecisionTreeClassifier).
_FOREST_TYPES = ["sklearn.tree._tree.Tree"]
_FOREST_KEYS = {"weight", "sigmas", "smoothing_only_below", "file"}  # version 3 adds class_factors
#: model.json's own keys beside ModelMetadata's, by format version.
_OWN_KEYS = {
    1: ("format", "format_version"),
    2: ("format", "format_version", "forest_blend"),
    3: ("format", "format_version", "forest_blend", "class_factors"),
    4: ("format", "format_version", "forest_blend", "class_factors", "refinement"),
}
#: A forest file larger than this is refused (100 trees on 80 000 voxels take a few MB).
_MAX_FOREST_BYTES = 1 << 30
#: A model.json larger than this is not ours (protects against reading a huge file).
_MAX_METADATA_BYTES = 1 << 20
#: Largest class value (class values are handled as int64).
_MAX_CLASS_VALUE = 2**63 - 1
#: File types that are (or usually are) pickles: never opened.
_PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin", ".joblib")


def _current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


#: Read once at import (setting the umask to read it is not thread-safe).
_UMASK = _current_umask()
_NOT_OURS = "is not a ScribbleSeg model (expected a folder with model.json and model.safetensors)"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass(frozen=True, kw_only=True)
class ModelMetadata:
    """Everything needed to rebuild and use a trained network, stored in ``model.json``.

    Attributes
    ----------
    model : ModelConfig
        The network configuration.
    spatial_dims : {2, 3}
    in_channels : int
        Image channels the network takes.
    class_values : tuple of int
        The user's label values, sorted and distinct, e.g. ``(1, 2, 5)``; the
        network's output ``k`` is class ``class_values[k]``.
    class_names : tuple of str
        A name per class value.
    background_class : int or None
        The class value written as 0 on export, if any.
    normalisation : dict
        ``{"low": [...], "high": [...]}``, one value per channel: intensities
        are mapped with ``(x - low) / (high - low)``.
    spacing : tuple of float
        Physical spacing ``([Z,] Y, X)`` of the training image.
    loss : dict
        :class:`~scribbleseg.core.config.LossConfig` as ``to_dict()``.
    train : dict
        :class:`~scribbleseg.core.config.TrainConfig` as ``to_dict()``.
    training : dict
        Free-form facts about the run (``steps``, ``seconds``,
        ``labelled_voxels`` …): strings, numbers, booleans or null.
    version : str
        ScribbleSeg version that trained the model.
    """

    model: ModelConfig
    spatial_dims: int
    in_channels: int
    class_values: tuple[int, ...]
    class_names: tuple[str, ...]
    background_class: int | None = None
    normalisation: dict[str, list[float]]
    spacing: tuple[float, ...]
    loss: dict[str, Any]
    train: dict[str, Any]
    training: dict[str, Any] = field(default_factory=dict)
    version: str = __version__

    def __post_init__(self) -> None:
        _check(isinstance(self.model, ModelConfig), "model must be a ModelConfig")
        _check(
            isinstance(self.spatial_dims, int) and self.spatial_dims in (2, 3),
            f"spatial_dims must be 2 or 3, got {self.spatial_dims!r}",
        )
        _check(
            isinstance(self.in_channels, int)
            and not isinstance(self.in_channels, bool)
            and self.in_channels >= 1,
            f"in_channels must be an integer >= 1, got {self.in_channels!r}",
        )
        values = tuple(self.class_values) if isinstance(self.class_values, (list, tuple)) else None
        _check(
            values is not None and all(isinstance(v, int) and not isinstance(v, bool) for v in values),
            f"class_values must be a list of integers, got {self.class_values!r}",
        )
        assert values is not None
        _check(len(values) >= 2, f"a model needs at least 2 classes, got class_values {values}")
        _check(values[0] >= 1, f"class values must be >= 1 (0 means unlabelled), got {values}")
        _check(
            values[-1] <= _MAX_CLASS_VALUE, f"class values must be at most {_MAX_CLASS_VALUE}, got {values}"
        )
        _check(
            all(a < b for a, b in itertools.pairwise(values)),
            f"class_values must be sorted and distinct: {values}",
        )
        names = tuple(self.class_names) if isinstance(self.class_names, (list, tuple)) else None
        _check(
            names is not None and all(isinstance(n, str) for n in names),
            f"class_names must be a list of strings, got {self.class_names!r}",
        )
        assert names is not None
        _check(len(names) == len(values), f"{len(names)} class_names for {len(values)} class_values")
        background = self.background_class
        _check(
            background is None
            or (isinstance(background, int) and not isinstance(background, bool) and background in values),
            f"background_class must be one of the class values {values} or None, got {background!r}",
        )
        _check(
            isinstance(self.normalisation, Mapping) and set(self.normalisation) == {"low", "high"},
            'normalisation must be {"low": [...], "high": [...]}',
        )
        normalisation: dict[str, list[float]] = {}
        for key in ("low", "high"):
            channel_values = self.normalisation[key]
            _check(
                isinstance(channel_values, (list, tuple))
                and len(channel_values) == self.in_channels
                and all(_is_number(v) for v in channel_values),
                f"normalisation[{key!r}] must hold {self.in_channels} finite numbers, got {channel_values!r}",
            )
            normalisation[key] = [float(v) for v in channel_values]
        spacing = tuple(self.spacing) if isinstance(self.spacing, (list, tuple)) else ()
        _check(
            len(spacing) == self.spatial_dims and all(_is_number(s) and s > 0 for s in spacing),
            f"spacing must hold {self.spatial_dims} positive numbers, got {self.spacing!r}",
        )
        # Validate the stored configurations, and keep their normalised dict form.
        _check(isinstance(self.loss, Mapping), "loss must be a dict (LossConfig.to_dict())")
        _check(isinstance(self.train, Mapping), "train must be a dict (TrainConfig.to_dict())")
        loss = LossConfig.from_dict(self.loss).to_dict()
        train = TrainConfig.from_dict(self.train).to_dict()
        _check(isinstance(self.training, Mapping), "training must be a dict")
        for key, value in self.training.items():
            _check(
                isinstance(key, str)
                and (value is None or isinstance(value, (str, bool)) or _is_number(value)),
                f"training[{key!r}] must be a string, number, boolean or null, got {value!r}",
            )
        _check(isinstance(self.version, str), f"version must be a string, got {self.version!r}")
        object.__setattr__(self, "class_values", values)
        object.__setattr__(self, "class_names", names)
        object.__setattr__(self, "normalisation", normalisation)
        object.__setattr__(self, "spacing", tuple(float(s) for s in spacing))
        object.__setattr__(self, "loss", loss)
        object.__setattr__(self, "train", train)
        object.__setattr__(self, "training", dict(self.training))

    @property
    def num_classes(self) -> int:
        """Number of classes the network predicts."""
        return len(self.class_values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of every field (``model`` as ``ModelConfig.to_dict()``)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, ModelConfig):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelMetadata:
        """Build metadata from :meth:`to_dict` output; unknown or missing keys raise ConfigError."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"model metadata must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown field(s) {', '.join(map(repr, unknown))}")
        missing = sorted(names - set(data))
        if missing:
            raise ConfigError(f"missing field(s) {', '.join(map(repr, missing))}")
        values = dict(data)
        values["model"] = ModelConfig.from_dict(values["model"])
        return cls(**values)


# --------------------------------------------------------------------------------------------------
# locating a model


def model_folder(path: str | os.PathLike[str]) -> pathlib.Path:
    """Return the model folder ``path`` names: the folder itself, or the folder of its JSON / weights.

    Raises
    ------
    ModelFileError
        If ``path`` does not exist, is a pickle (``.pt`` / ``.pth`` …), or is
        not a ScribbleSeg model folder.
    """
    path = pathlib.Path(path)
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        raise ModelFileError(
            f"{path} looks like a PyTorch pickle, which is never loaded because it can run code — "
            "only ScribbleSeg model folders (model.json + model.safetensors) are accepted"
        )
    if not path.exists():
        raise ModelFileError(f"no such model: {path} — check the path")
    if path.is_file() and path.suffix.lower() in (".json", ".safetensors"):
        folder = path.parent
    elif path.is_dir():
        folder = path
    else:
        raise ModelFileError(f"{path} {_NOT_OURS}")
    if not (folder / METADATA_FILE).is_file():
        raise ModelFileError(f"{path} {_NOT_OURS}")
    return folder


def _read_json(path: pathlib.Path) -> Any:
    def refuse_constant(name: str) -> Any:
        raise ValueError(f"{name} is not allowed")

    try:
        if path.stat().st_size > _MAX_METADATA_BYTES:
            raise ModelFileError(f"{path} is too large for model metadata: the folder {_NOT_OURS}")
        text = path.read_bytes().decode("utf-8")
        return json.loads(text, parse_constant=refuse_constant)
    except UnicodeDecodeError:
        raise ModelFileError(f"{path.parent} {_NOT_OURS}: {path.name} is not text") from None
    except (ValueError, RecursionError) as exc:  # json.JSONDecodeError is a ValueError; deep nesting
        raise ModelFileError(f"{path.parent} {_NOT_OURS}: {path.name} is not valid JSON ({exc})") from None
    except OSError as exc:
        raise ModelFileError(f"cannot read {path}: {exc.strerror or exc}") from exc


def read_metadata(path: str | os.PathLike[str]) -> ModelMetadata:
    """Read and check a model's ``model.json`` without loading the weights.

    Raises
    ------
    ModelFileError
        If the folder is not a ScribbleSeg model, its format version is not
        supported, or a field is unknown, missing or of the wrong type.
    """
    return _metadata(*_read_document(path))


def _read_document(path: str | os.PathLike[str]) -> tuple[pathlib.Path, dict[str, Any]]:
    """Return the model folder and its parsed ``model.json``, of a supported format version."""
    folder = model_folder(path)
    data = _read_json(folder / METADATA_FILE)
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise ModelFileError(f"{folder} {_NOT_OURS}: {METADATA_FILE} does not say format {FORMAT_NAME!r}")
    version = data.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version not in SUPPORTED_FORMAT_VERSIONS:
        raise ModelFileError(
            f"{folder} has model format version {version!r}, but this ScribbleSeg ({__version__}) reads "
            f"version(s) {', '.join(map(str, SUPPORTED_FORMAT_VERSIONS))} — update ScribbleSeg"
        )
    return folder, data


def _metadata(folder: pathlib.Path, data: Mapping[str, Any]) -> ModelMetadata:
    fields = {k: v for k, v in data.items() if k not in _OWN_KEYS[data["format_version"]]}
    train = fields.get("train")
    if data["format_version"] < 4 and isinstance(train, Mapping) and "crf_refinement" not in train:
        # Trained before the CRF refinement existed: say so, so that a widget showing these
        # settings predicts as the model does (without it), not with today's default.
        fields["train"] = {**train, "crf_refinement": 0.0}
    try:
        return ModelMetadata.from_dict(fields)
    except (ConfigError, TypeError, ValueError, OverflowError) as exc:  # e.g. int("x") in a config
        raise ModelFileError(f"{folder / METADATA_FILE} is invalid: {exc}") from None


def _forest_document(blend: ForestBlend | None) -> dict[str, Any] | None:
    if blend is None:
        return None
    return {
        "weight": blend.weight,
        "sigmas": list(blend.spec.sigmas),
        "smoothing_only_below": blend.spec.smoothing_only_below,
        "file": FOREST_FILE,
        "class_factors": _factors_document(blend.factors),
    }


def _factors_document(factors: Any) -> list[float] | None:
    return None if factors is None else [float(f) for f in factors]


def _class_factors(where: str, value: Any, num_classes: int) -> tuple[float, ...] | None:
    """Check a model.json ``class_factors`` entry and return it as a tuple (None stays None)."""
    if value is None:
        return None
    _check_file(
        isinstance(value, list) and all(_is_number(v) for v in value), f"{where} must be a list of numbers"
    )
    try:
        return check_factors(value, num_classes)
    except ValueError as exc:
        raise ModelFileError(f"{where}: {exc}") from None


def _refinement_document(refinement: MeanField | None) -> dict[str, Any] | None:
    return None if refinement is None else refinement.to_dict()


def _refinement(folder: pathlib.Path, value: Any, metadata: ModelMetadata) -> MeanField | None:
    """Check a model.json ``refinement`` entry and build it (None stays None)."""
    if value is None:
        return None
    where = f"{folder / METADATA_FILE}: refinement"
    _check_file(isinstance(value, Mapping), f"{where} must be an object or null")
    sigmas = value.get("sigma_intensity")
    _check_file(
        isinstance(sigmas, list) and all(_is_number(v) for v in sigmas),
        f"{where}: sigma_intensity must be a list of numbers",
    )
    _check_file(
        len(sigmas) == metadata.in_channels,
        f"{where}: sigma_intensity has {len(sigmas)} value(s) for {metadata.in_channels} channel(s)",
    )
    try:
        return MeanField.from_dict(value)
    except ConfigError as exc:
        raise ModelFileError(f"{where}: {exc}") from None


def _load_forest(
    folder: pathlib.Path, description: Any, metadata: ModelMetadata, version: int
) -> ForestBlend:
    """Read and check the forest a model folder's ``forest_blend`` entry describes."""
    import skops.io

    where = f"{folder / METADATA_FILE}: forest_blend"
    keys = _FOREST_KEYS | ({"class_factors"} if version >= 3 else set())
    _check_file(
        isinstance(description, Mapping) and set(description) == keys,
        f"{where} must hold exactly {sorted(keys)}",
    )
    factors = _class_factors(
        f"{where}: class_factors", description.get("class_factors"), metadata.num_classes
    )
    _check_file(description["file"] == FOREST_FILE, f"{where}: file must be {FOREST_FILE!r}")
    weight, sigmas = description["weight"], description["sigmas"]
    _check_file(_is_number(weight) and 0 <= weight <= 1, f"{where}: weight must be in [0, 1], got {weight!r}")
    _check_file(
        isinstance(sigmas, list)
        and all(_is_number(v) for v in sigmas)
        and _is_number(description["smoothing_only_below"]),
        f"{where}: sigmas must be a list of numbers",
    )
    try:
        spec = FeatureSpec(tuple(sigmas), float(description["smoothing_only_below"]))
    except ValueError as exc:
        raise ModelFileError(f"{where}: {exc}") from None
    path = folder / FOREST_FILE
    if not path.is_file():
        raise ModelFileError(f"{folder} has no {FOREST_FILE}: the model is incomplete — save it again")
    size = path.stat().st_size
    if size > _MAX_FOREST_BYTES:
        raise ModelFileError(f"{path} is too large for a forest ({size} bytes): not ours")
    data = path.read_bytes()
    try:
        # The types are checked first: nothing is built from a file that holds any other.
        untrusted = set(skops.io.get_untrusted_types(data=data)) - set(_FOREST_TYPES)
        forest = None if untrusted else skops.io.loads(data, trusted=_FOREST_TYPES)
    except Exception as exc:  # a corrupt or foreign file: zip or schema errors
        raise ModelFileError(
            f"{path} is not a valid skops file (corrupt, truncated or not ours): {exc}"
        ) from None
    if untrusted:
        raise ModelFileError(
            f"{path} holds types that are not part of a forest and are never loaded: {sorted(untrusted)}"
        )
    from sklearn.ensemble import RandomForestClassifier

    _check_file(isinstance(forest, RandomForestClassifier), f"{path} does not hold a random forest")
    features = spec.num_features(metadata.spatial_dims) * metadata.in_channels
    _check_file(
        getattr(forest, "n_features_in_", None) == features,
        f"{path}: the forest takes {getattr(forest, 'n_features_in_', None)} features, "
        f"the model's filters give {features}",
    )
    try:
        return ForestBlend(forest, spec, float(weight), metadata.num_classes, factors=factors)
    except ValueError as exc:
        raise ModelFileError(f"{path}: {exc}") from None


def _check_file(condition: bool, message: str) -> None:
    if not condition:
        raise ModelFileError(message)


# --------------------------------------------------------------------------------------------------
# saving


def _state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    module = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    return {name: tensor.detach().to("cpu").contiguous() for name, tensor in module.state_dict().items()}


def _compare_weights(
    weights: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], where: str
) -> None:
    """Raise ModelFileError naming the first missing, unexpected or wrongly shaped tensor."""
    for name, reference in expected.items():
        if name not in weights:
            raise ModelFileError(f"{where}: weight {name!r} is missing (the weights do not match model.json)")
        if tuple(weights[name].shape) != tuple(reference.shape):
            raise ModelFileError(
                f"{where}: weight {name!r} has shape {tuple(weights[name].shape)}, expected "
                f"{tuple(reference.shape)} (the weights do not match model.json)"
            )
        if weights[name].is_floating_point() != reference.is_floating_point():
            raise ModelFileError(
                f"{where}: weight {name!r} has dtype {weights[name].dtype}, expected {reference.dtype}"
            )
    unexpected = [name for name in weights if name not in expected]
    if unexpected:
        raise ModelFileError(
            f"{where}: unexpected weight {unexpected[0]!r} (the weights do not match model.json)"
        )


def _build(metadata: ModelMetadata) -> ScribbleNet:
    return build_model(
        metadata.model,
        spatial_dims=metadata.spatial_dims,
        in_channels=metadata.in_channels,
        num_classes=metadata.num_classes,
    )


def save_model(path: str | os.PathLike[str], model: torch.nn.Module, metadata: ModelMetadata) -> pathlib.Path:
    """Save ``model`` and ``metadata`` as a model folder, atomically.

    The folder is written under a temporary name beside ``path`` and renamed
    at the end, so an interrupted save leaves either the old model or none.

    Parameters
    ----------
    path : path-like
        The model folder. An existing model folder (or an empty folder) there
        is replaced; any other existing file or folder is refused.
    model : torch.nn.Module
        The trained network; its state dict must fit ``metadata`` (checked).
    metadata : ModelMetadata

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ModelFileError
        If the path is unusable, the weights do not fit the metadata, or
        writing fails.
    """
    path = pathlib.Path(path)
    if path.suffix.lower() in (*_PICKLE_SUFFIXES, ".json", ".safetensors"):
        raise ModelFileError(
            f"a ScribbleSeg model is a folder: give a folder name such as {path.with_suffix('')}, "
            f"not {path.name}"
        )
    if not path.parent.is_dir():
        raise ModelFileError(f"cannot save the model: folder {path.parent} does not exist — create it first")
    if path.exists():
        if not path.is_dir():
            raise ModelFileError(f"cannot save the model to {path}: a file of that name exists")
        if not set(os.listdir(path)) <= {METADATA_FILE, WEIGHTS_FILE, FOREST_FILE}:
            raise ModelFileError(
                f"cannot save the model to {path}: the folder exists and is not a ScribbleSeg model "
                "(it would be overwritten) — choose another name"
            )
    weights = _state_dict(model)
    with torch.device("meta"):  # shapes only: nothing is allocated
        expected = _build(metadata).state_dict()
    _compare_weights(weights, expected, f"cannot save the model to {path}")
    blend = getattr(getattr(model, "_orig_mod", model), "forest_blend", None)
    document = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        **metadata.to_dict(),
        "forest_blend": _forest_document(blend),
        "class_factors": _factors_document(
            getattr(getattr(model, "_orig_mod", model), "class_factors", None)
        ),
        "refinement": _refinement_document(getattr(getattr(model, "_orig_mod", model), "refinement", None)),
    }

    temporary: pathlib.Path | None = None
    try:
        temporary = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        save_file(weights, str(temporary / WEIGHTS_FILE), metadata={"format": "pt"})
        if blend is not None:
            import skops.io

            skops.io.dump(blend.forest, temporary / FOREST_FILE)
        (temporary / METADATA_FILE).write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
        os.chmod(temporary, 0o777 & ~_UMASK)  # mkdtemp makes owner-only folders
        if path.exists():
            old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(path, old)
            try:
                os.rename(temporary, path)
            except OSError:
                os.rename(old, path)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(temporary, path)
        temporary = None
    except OSError as exc:
        raise ModelFileError(f"cannot save the model to {path}: {exc.strerror or exc}") from exc
    finally:
        if temporary is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(temporary)
    return path


# --------------------------------------------------------------------------------------------------
# loading


def load_model(
    path: str | os.PathLike[str], *, device: str | torch.device = "cpu"
) -> tuple[ScribbleNet, ModelMetadata]:
    """Load a model folder saved by :func:`save_model`.

    Parameters
    ----------
    path : path-like
        The model folder, or its ``model.json`` / ``model.safetensors``.
    device : str or torch.device
        Where to put the network.

    Returns
    -------
    network : ScribbleNet
        In eval mode, on ``device``.
    metadata : ModelMetadata

    Raises
    ------
    ModelFileError
        If the path is missing, a pickle, not a ScribbleSeg model, of an
        unsupported format version, or its JSON or weights are invalid.
    """
    folder, document = _read_document(path)
    metadata = _metadata(folder, document)
    weights_path = folder / WEIGHTS_FILE
    if not weights_path.is_file():
        raise ModelFileError(f"{folder} has no {WEIGHTS_FILE}: the model is incomplete — save it again")
    try:
        # Shapes only, nothing allocated: a model.json claiming a huge network is refused below
        # (its weights do not fit) before any memory is taken.
        with torch.device("meta"):
            expected = _build(metadata).state_dict()
    except (ConfigError, TypeError, ValueError, OverflowError, RuntimeError) as exc:  # "16" for 16 …
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]  # torch adds C++ frames
        raise ModelFileError(
            f"{folder / METADATA_FILE} describes a network that cannot be built: {detail}"
        ) from None
    try:
        # safetensors reads a JSON header and raw tensor bytes: no code is ever run.
        weights = load_file(str(weights_path), device="cpu")
    except Exception as exc:  # SafetensorError, OSError … for a corrupt or foreign file
        raise ModelFileError(
            f"{weights_path} is not a valid safetensors file (corrupt, truncated or not ours): {exc}"
        ) from None
    _compare_weights(weights, expected, str(weights_path))
    network = _build(metadata)
    network.load_state_dict(weights, strict=True)
    version = document["format_version"]
    if document.get("forest_blend") is not None:
        network.forest_blend = _load_forest(folder, document["forest_blend"], metadata, version)
    if version >= 3:
        where = f"{folder / METADATA_FILE}: class_factors"
        network.class_factors = _class_factors(where, document.get("class_factors"), metadata.num_classes)
    if version >= 4:
        network.refinement = _refinement(folder, document.get("refinement"), metadata)
    network.eval()
    return network.to(device), metadata
