"""Frozen, validated configuration for the network, the losses and training.

Every parameter the widget, the CLI or the Python API can set lives here; a
bad value raises :class:`~scribbleseg.errors.ConfigError` naming the field.
``to_dict`` / ``from_dict`` round-trip through JSON-safe dicts and refuse
unknown fields, so a model file cannot smuggle in options we do not know.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from scribbleseg.errors import ConfigError

__all__ = [
    "NETWORK_FEATURES",
    "REGULARIZED_WEIGHTS",
    "LossConfig",
    "ModelConfig",
    "TrainConfig",
    "crf_grid",
    "crf_window_radius",
    "default_patch_size",
]

NetworkSize = Literal["small", "large"]
DeviceName = Literal["auto", "cpu", "cuda"]

#: BasicUNet feature widths ``(f0, f1, f2, f3, f4, f_out)`` of the named sizes.
#: "small" trains fast on two CPU cores; "large" is MONAI's default width, for GPUs.
NETWORK_FEATURES: dict[str, tuple[int, int, int, int, int, int]] = {
    "small": (16, 16, 32, 64, 128, 16),
    "large": (32, 32, 64, 128, 256, 32),
}

_Config = TypeVar("_Config", "ModelConfig", "LossConfig", "TrainConfig")
_Value = TypeVar("_Value")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _tuple_or_none(value: Any, name: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a sequence of integers, got {value!r}") from None


class _DictMixin:
    """``to_dict`` / ``from_dict`` shared by the config classes."""

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict of every field (tuples become lists)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls: type[_Config], data: Mapping[str, Any]) -> _Config:
        """Build a config from ``data``; unknown keys raise :class:`ConfigError`."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{cls.__name__} must be given a mapping, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{cls.__name__} has no field(s) {', '.join(map(repr, unknown))}")
        try:
            return cls(**dict(data))
        except TypeError as exc:  # e.g. a list where a number is expected
            raise ConfigError(f"{cls.__name__}: {exc}") from None


@dataclass(frozen=True)
class ModelConfig(_DictMixin):
    """The network chosen by the user.

    Parameters
    ----------
    size : {"small", "large"}
        Width preset of the MONAI ``BasicUNet``; ignored when ``features`` is given.
    features : tuple of 6 int, optional
        Explicit BasicUNet widths ``(f0, f1, f2, f3, f4, f_out)``.
    embedding_dim : int
        Output width of the projection head used by the contrastive loss.
    dropout : float
        Dropout probability inside the U-Net.
    """

    size: NetworkSize = "small"
    features: tuple[int, ...] | None = None
    embedding_dim: int = 16
    dropout: float = 0.0

    def __post_init__(self) -> None:
        _check(
            self.size in NETWORK_FEATURES,
            f"size must be one of {sorted(NETWORK_FEATURES)}, got {self.size!r}",
        )
        features = _tuple_or_none(self.features, "features")
        object.__setattr__(self, "features", features)
        if features is not None:
            _check(
                len(features) == 6 and all(f > 0 for f in features), "features must be 6 positive integers"
            )
        object.__setattr__(self, "embedding_dim", int(self.embedding_dim))
        object.__setattr__(self, "dropout", float(self.dropout))
        _check(self.embedding_dim >= 2, "embedding_dim must be at least 2")
        _check(0.0 <= float(self.dropout) < 1.0, "dropout must be in [0, 1)")

    @property
    def resolved_features(self) -> tuple[int, ...]:
        """The BasicUNet widths actually used."""
        return self.features if self.features is not None else NETWORK_FEATURES[self.size]


@dataclass(frozen=True)
class LossConfig(_DictMixin):
    """Weights and kernels of the training loss.

    ``loss = pCE + dice_weight * partial Dice + contrastive_weight * contrastive
    + crf_weight * CRF + dynamic_crf_weight * dynamic CRF + teacher weight * teacher CE``. A weight
    of 0 switches the term off (and skips its computation). By default all terms except the
    partial Dice are on: the regularizers at the weights of ``REGULARIZED_WEIGHTS``, the teacher
    fading out over ``teacher_steps`` (``benchmarks/accuracy.py``, ``docs/benchmarks.md``).

    Parameters
    ----------
    dice_weight : float
        Weight of the partial Dice loss on labelled voxels.
    contrastive_weight : float
        Weight of the supervised local contrastive loss on decoder embeddings.
    crf_weight : float
        Weight of the dense-CRF / Potts loss with intensity + spatial kernel. The CRF terms are
        divided by the sum of the spatial kernel over the window, so each is the kernel-weighted
        fraction of a voxel's neighbours that disagree with it (0..1): a weight means the same in
        2D and 3D, for any window and spacing.
    dynamic_crf_weight : float
        Weight of the CRF loss whose kernel also uses the detached deep features.
    temperature : float
        Temperature of the contrastive loss.
    contrastive_samples : int
        Labelled voxels sampled (class-balanced) per patch for the contrastive loss.
    crf_sigma_spatial : float
        Spatial kernel width in units of the finest voxel spacing (physical units
        divided by ``min(spacing)``), so anisotropic axes get narrower kernels in voxels.
    crf_sigma_intensity : float
        Intensity kernel width on normalised intensities (all channels).
    crf_sigma_features : float
        Feature kernel width on L2-normalised decoder features (dynamic CRF).
    crf_window_radius : int
        Window radius along the finest axis; other axes scale with the spacing.
    crf_downsample : int
        The CRF terms are computed on a grid coarser by this factor (average-pooled
        probabilities, image, features), along every axis whose spacing then stays no coarser
        than the coarsest axis (in-plane only for thick slices); the window radius keeps its
        physical extent. 1 = full resolution. Like the 0.5 scale of the rloss DenseCRF loss, it
        makes the regularizers several times cheaper (``benchmarks/speed.py``).
    teacher_weight : float
        Weight of the cross-entropy towards the soft labels of a random forest on filter features
        (:class:`~scribbleseg.core.pixel_classifier.ForestTeacher`, fitted on all labels when a run
        starts) on unlabelled voxels, weighted by the forest's confidence. It starts the network
        where the forest is and fades out (``teacher_steps``) so the network can then correct it.
        Images larger than ``ForestTeacher.max_voxels`` get no teacher.
    teacher_steps : int
        The teacher's weight falls linearly from ``teacher_weight`` to 0 over these steps.
    teacher_refinement : float, optional
        ``λ`` of a mean-field CRF refinement of the teacher's soft labels (the refinement of
        ``TrainConfig.crf_refinement``, with its noise-scaled intensity width), tempered to be
        no more confident than the forest; 0 = the forest's probabilities as they are. Default
        :func:`default_teacher_refinement`: 1 in 2D, 0 in 3D.
    teacher_self_training : int, optional
        Rounds of the teacher's self-training: the forest is fitted again on confident voxels of
        its refined map (300 per class) and the user's labels, and refined again, each round
        (``ForestTeacher.self_training``). 0 = none. Default
        :func:`default_teacher_self_training`: 8 in 2D, 0 in 3D.
    teacher_pseudo_boundary : float
        Where the self-training draws its pseudo-labels: mostly within about this many voxels of
        the refined map's class boundaries (relative intensity ``exp(-d / w)`` at distance ``d``;
        ``ForestTeacher.pseudo_boundary``), so each round's forest learns where the boundary
        lies. 0 = evenly over the confident voxels. On the nuclei sample 4 lifted the
        self-trained teacher's mean Dice from 0.857 to 0.886 from five clicks per class and from
        0.871 to 0.917 from twenty; 2 to 5 did about as well, 2 and 3 with a larger spread over
        annotations (``benchmarks/teacher_offline.py``, ``docs/benchmarks.md``).
    warmup_steps : int
        Regularizers are off before this step and ramp in linearly over the
        next ``warmup_steps`` steps.
    dynamic_start_step : int
        First step at which the dynamic CRF is computed (the features need
        some training before they mean anything).
    """

    dice_weight: float = 0.0
    # All three regularizers are on by default (the weights of REGULARIZED_WEIGHTS below): on
    # simulated scribbles they lift the nucleus Dice from 0.805 (pCE only) to 0.876 at 180 s CPU
    # (benchmarks/accuracy.py, docs/benchmarks.md).
    contrastive_weight: float = 0.01
    crf_weight: float = 0.3
    dynamic_crf_weight: float = 0.3
    temperature: float = 0.1
    contrastive_samples: int = 1024
    crf_sigma_spatial: float = 5.0
    # 0.05, not 0.15: with 0.15 the CRF couples grey and white matter in MRI (normalised contrast
    # about 0.2) and erodes the thin cortex (mri3d Dice at 180 s 0.827 -> 0.862; nuclei unchanged).
    crf_sigma_intensity: float = 0.05
    crf_sigma_features: float = 0.5
    crf_window_radius: int = 3
    crf_downsample: int = 2
    # The teacher lifts the Dice at 60 s CPU on both samples (nuclei 0.816 -> 0.870, mri3d -> 0.900);
    # fading it out within 500 steps lost that by 180 s, so it fades slowly (benchmarks/accuracy.py).
    teacher_weight: float = 1.0
    teacher_steps: int = 5000
    teacher_refinement: float | None = None
    teacher_self_training: int | None = None
    teacher_pseudo_boundary: float = 4.0
    warmup_steps: int = 20
    dynamic_start_step: int = 60

    def __post_init__(self) -> None:
        weights = ("dice_weight", "contrastive_weight", "crf_weight", "dynamic_crf_weight", "teacher_weight")
        for name in weights:
            value = float(getattr(self, name))
            _check(math.isfinite(value) and value >= 0, f"{name} must be a finite number >= 0, got {value}")
        for name in ("temperature", "crf_sigma_spatial", "crf_sigma_intensity", "crf_sigma_features"):
            value = float(getattr(self, name))
            _check(math.isfinite(value) and value > 0, f"{name} must be a finite number > 0, got {value}")
        _check(int(self.contrastive_samples) >= 2, "contrastive_samples must be at least 2")
        _check(1 <= int(self.crf_window_radius) <= 15, "crf_window_radius must be in [1, 15]")
        _check(1 <= int(self.crf_downsample) <= 4, "crf_downsample must be in [1, 4]")
        _check(int(self.teacher_steps) >= 1, "teacher_steps must be >= 1")
        if self.teacher_refinement is not None:
            value = float(self.teacher_refinement)
            _check(
                math.isfinite(value) and value >= 0,
                f"teacher_refinement must be a finite number >= 0, got {self.teacher_refinement}",
            )
            object.__setattr__(self, "teacher_refinement", value)
        if self.teacher_self_training is not None:
            rounds = self.teacher_self_training
            try:
                whole = None if isinstance(rounds, bool) else operator.index(rounds)
            except TypeError:
                whole = None
            _check(
                whole is not None and 0 <= whole <= 100,
                f"teacher_self_training must be a whole number of rounds in [0, 100], got {rounds!r}",
            )
            object.__setattr__(self, "teacher_self_training", whole)
        boundary = float(self.teacher_pseudo_boundary)
        _check(
            math.isfinite(boundary) and boundary >= 0,
            f"teacher_pseudo_boundary must be a finite number >= 0, got {self.teacher_pseudo_boundary}",
        )
        object.__setattr__(self, "teacher_pseudo_boundary", boundary)
        _check(int(self.warmup_steps) >= 0, "warmup_steps must be >= 0")
        _check(int(self.dynamic_start_step) >= 0, "dynamic_start_step must be >= 0")


@dataclass(frozen=True)
class TrainConfig(_DictMixin):
    """How training runs.

    Parameters
    ----------
    steps : int, optional
        Number of optimiser steps. With neither ``steps`` nor ``time_budget``
        training runs until stopped.
    time_budget : float, optional
        Wall-clock seconds after which training stops (checked between steps).
    patch_size : tuple of int, optional
        Spatial patch size ``([Z,] Y, X)``; default from :func:`default_patch_size`.
    batch_size : int, optional
        Patches per step; default 4 in 2D, 2 in 3D.
    learning_rate : float
        AdamW learning rate.
    weight_decay : float
        AdamW weight decay.
    label_sampling_probability : float
        Chance that a patch is centred on a labelled voxel (else anywhere).
    intensity_augmentation : float
        Spread of the random intensity scale and shift applied to each training patch, as a
        multiple of the default (scale sd 0.1, shift sd 0.05 of the normalised intensity range);
        0 = none. Flips and rotations are not affected. Turning it off did not help on either
        sample (7 of 8 paired runs of the defaults lower or level; ``docs/benchmarks.md``), so the
        default stays 1.
    point_radius : float
        Radius of the ball drawn for each point annotation, in units of the
        finest voxel spacing.
    seed : int
        Seed for torch, numpy and the patch sampler.
    device : {"auto", "cpu", "cuda"}
        ``auto`` takes CUDA when available.
    amp : bool
        Mixed-precision training on CUDA (bf16 where supported, else fp16). On CPU, training
        stays float32; previews use bf16 on CPUs with native bf16.
    num_threads : int, optional
        CPU threads for torch (process-wide); default: torch's own (all cores). The napari widget
        passes ``cores - 1`` so the viewer keeps a core.
    preview_interval : float
        Seconds between previews when the trainer is asked for them.
    feature_preview_steps : int
        Until the network has trained this many steps, previews come from a random forest on
        filter features fitted on the labels in view (:mod:`scribbleseg.core.pixel_classifier`):
        right within about a second, while the network is still untrained. 0 = network previews
        only.
    weight_average : float
        Decay of the exponential moving average of the weights (0 = off). Previews, and the model
        after a run (prediction, saving), use the averaged weights; training goes on from the
        raw ones. The decay ramps up as ``min(weight_average, (1 + n) / (10 + n))`` with ``n`` the
        steps since the start or since labels last changed, so early steps and new strokes are not
        held back. Averaging evens out the step-to-step swings of training on sparse labels
        (``docs/benchmarks.md``).
    forest_blend : float
        Weight of the forest teacher's probabilities mixed into previews and predictions,
        ``(1 - w) * network + w * forest``, at the start; it falls with the teacher's weight
        (linearly to 0 over ``LossConfig.teacher_steps``), so a network trained that long stands
        alone. On a CPU a 3D network gets a few hundred steps in minutes and the mix is better than
        either alone (``docs/benchmarks.md``). 0 = the network only. The trainer fits the forest
        whenever this or ``LossConfig.teacher_weight`` is above 0; the model carries the forest
        (:class:`~scribbleseg.core.pixel_classifier.ForestBlend`) into prediction and saving.
    forest_blend_steps : int, optional
        Steps (counted from when the forest came in) after which the network stands alone: the
        blend's weight is multiplied by a factor that is 1 until two thirds of these steps and
        falls linearly to 0 at them. Default :func:`default_forest_blend_steps`: 900 in 2D, none
        in 3D (the blend then fades with the teacher only). Measured on this project's samples
        at 180 s on a CPU (``docs/benchmarks.md``): a 2D network after about 1700 steps was
        better alone than mixed on every nuclei annotation (points 0.860 → 0.887, 0.843 → 0.851,
        0.897 → 0.904 after the refinement; scribbles unchanged), and after 900–1230 steps on 7
        of 8 (+0.002 to +0.011, one −0.001), while the 3D network on the MRI sample was still
        far below the forest after 1000 steps (0.886 against 0.963; the mix 0.966).
    prevalence_correction : bool
        Re-weight the forest's and the network's probabilities to the class prevalence they imply
        over the image (:mod:`scribbleseg.core.prevalence`). Off by default: it moves the
        undecided band along boundaries to the majority class, which narrows objects that came
        out too wide (the nuclei sample: strokes away from boundaries, nuclei painted more than
        they cover) but shrinks objects whose strokes cover only their core
        (``docs/benchmarks.md``). The factors are estimated after the forest is fitted and every
        250 steps from the network's probabilities; the model carries them into prediction and
        saving.
    crf_refinement : float
        Weight ``λ`` of the CRF refinement of previews and predictions: five mean-field iterations
        of a Potts dense CRF whose intensity width is twice the image's noise
        (:mod:`scribbleseg.core.refine`). It settles the band along boundaries that strokes never
        reach by the image's edges (nuclei sample, sparse scribbles: 0.86 → 0.91,
        ``docs/benchmarks.md``). 0 = off. The noise is estimated once from the training image; the
        model carries the refinement into prediction and saving.
    """

    steps: int | None = None
    time_budget: float | None = None
    patch_size: tuple[int, ...] | None = None
    batch_size: int | None = None
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    label_sampling_probability: float = 0.8
    intensity_augmentation: float = 1.0
    point_radius: float = 2.0
    seed: int = 0
    device: DeviceName = "auto"
    amp: bool = True
    num_threads: int | None = None
    preview_interval: float = 2.0
    feature_preview_steps: int = 300
    weight_average: float = 0.99
    forest_blend: float = 0.7
    forest_blend_steps: int | None = None
    prevalence_correction: bool = False
    crf_refinement: float = 1.0

    def __post_init__(self) -> None:
        if self.steps is not None:
            _check(int(self.steps) >= 1, f"steps must be >= 1, got {self.steps}")
        if self.time_budget is not None:
            value = float(self.time_budget)
            _check(
                math.isfinite(value) and value > 0, f"time_budget must be > 0 seconds, got {self.time_budget}"
            )
        patch = _tuple_or_none(self.patch_size, "patch_size")
        object.__setattr__(self, "patch_size", patch)
        if patch is not None:
            _check(len(patch) in (2, 3), "patch_size must have 2 or 3 entries ([Z,] Y, X)")
            _check(all(p >= 16 and p % 16 == 0 for p in patch), "patch_size entries must be multiples of 16")
        if self.batch_size is not None:
            _check(1 <= int(self.batch_size) <= 256, f"batch_size must be in [1, 256], got {self.batch_size}")
        average = float(self.weight_average)
        _check(0.0 <= average < 1.0, f"weight_average must be in [0, 1), got {self.weight_average}")
        object.__setattr__(self, "weight_average", average)
        blend = float(self.forest_blend)
        _check(0.0 <= blend <= 1.0, f"forest_blend must be in [0, 1], got {self.forest_blend}")
        object.__setattr__(self, "forest_blend", blend)
        if self.forest_blend_steps is not None:
            _check(
                int(self.forest_blend_steps) >= 3,
                f"forest_blend_steps must be >= 3, got {self.forest_blend_steps}",
            )
            object.__setattr__(self, "forest_blend_steps", int(self.forest_blend_steps))
        _check(
            isinstance(self.prevalence_correction, bool),
            f"prevalence_correction must be True or False, got {self.prevalence_correction!r}",
        )
        refinement = float(self.crf_refinement)
        _check(
            math.isfinite(refinement) and 0.0 <= refinement <= 100.0,
            f"crf_refinement must be in [0, 100] (0 = off), got {self.crf_refinement}",
        )
        object.__setattr__(self, "crf_refinement", refinement)
        rate, decay = float(self.learning_rate), float(self.weight_decay)
        _check(math.isfinite(rate) and rate > 0, f"learning_rate must be a finite number > 0, got {rate}")
        _check(math.isfinite(decay) and decay >= 0, f"weight_decay must be a finite number >= 0, got {decay}")
        _check(0 <= int(self.seed) < 2**31, f"seed must be in [0, 2^31), got {self.seed}")
        _check(
            0.0 <= float(self.label_sampling_probability) <= 1.0,
            "label_sampling_probability must be in [0, 1]",
        )
        jitter = float(self.intensity_augmentation)
        _check(
            math.isfinite(jitter) and jitter >= 0,
            "intensity_augmentation must be a finite number >= 0 (0 = none), "
            f"got {self.intensity_augmentation}",
        )
        object.__setattr__(self, "intensity_augmentation", jitter)
        _check(float(self.point_radius) > 0, "point_radius must be > 0")
        _check(
            self.device in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, got {self.device!r}"
        )
        if self.num_threads is not None:
            _check(int(self.num_threads) >= 1, "num_threads must be >= 1")
        _check(float(self.preview_interval) > 0, "preview_interval must be > 0")
        _check(int(self.feature_preview_steps) >= 0, "feature_preview_steps must be >= 0")


#: Loss weights that switch every regularizer on at a moderate strength (used by the ablation).
REGULARIZED_WEIGHTS: dict[str, float] = {
    "contrastive_weight": 0.01,
    "crf_weight": 0.3,
    "dynamic_crf_weight": 0.3,
}


#: Default ``TrainConfig.forest_blend_steps`` per number of spatial dimensions (None: no hand-over).
FOREST_BLEND_STEPS: dict[int, int | None] = {2: 900, 3: None}


def default_forest_blend_steps(spatial_dims: int) -> int | None:
    """Return the steps after which the forest blend hands over to the network: 900 in 2D, never in 3D.

    Parameters
    ----------
    spatial_dims : int
        2 or 3.

    Returns
    -------
    int or None
        None: the blend fades with the forest teacher only (``LossConfig.teacher_steps``).
    """
    return _for_dims(FOREST_BLEND_STEPS, spatial_dims)


#: Default ``LossConfig.teacher_refinement`` per number of spatial dimensions.
TEACHER_REFINEMENT: dict[int, float] = {2: 1.0, 3: 0.0}


def default_teacher_refinement(spatial_dims: int) -> float:
    """Return the weight of the teacher's CRF refinement: 1 in 2D, 0 (none) in 3D.

    In 3D it costs about 24 s per fit of the 1.3 million-voxel MRI sample on 2 CPU threads and
    did not change the forest's Dice there (``docs/benchmarks.md``).

    Parameters
    ----------
    spatial_dims : int
        2 or 3.

    Returns
    -------
    float
    """
    return _for_dims(TEACHER_REFINEMENT, spatial_dims)


#: Default ``LossConfig.teacher_self_training`` per number of spatial dimensions.
TEACHER_SELF_TRAINING: dict[int, int] = {2: 8, 3: 0}


def default_teacher_self_training(spatial_dims: int) -> int:
    """Return the rounds of the teacher's self-training: 8 in 2D, 0 (none) in 3D.

    In 2D eight rounds take about 4 s on the 512² nuclei sample (2 CPU threads) and lift the
    refined teacher's Dice from five clicks per class by about 0.05, 0.81 to 0.86 over three
    annotations (``benchmarks/teacher_offline.py``, ``docs/benchmarks.md``). In 3D each round
    costs a whole-volume forest prediction (two rounds added about 6 s and 22 s to an 11–16 s fit
    of the MRI sample) and two rounds moved the forest's Dice by at most 0.001 there (0.963 →
    0.964 on sparse scribbles, 0.971 → 0.971 on dense; ``docs/benchmarks.md``), so none.

    Parameters
    ----------
    spatial_dims : int
        2 or 3.

    Returns
    -------
    int
    """
    return _for_dims(TEACHER_SELF_TRAINING, spatial_dims)


def _for_dims(table: Mapping[int, _Value], spatial_dims: int) -> _Value:
    """``table[spatial_dims]``; a :class:`ConfigError` unless ``spatial_dims`` is 2 or 3."""
    _check(spatial_dims in table, f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    return table[spatial_dims]


def default_patch_size(spatial_shape: tuple[int, ...], spacing: tuple[float, ...]) -> tuple[int, ...]:
    """Choose a patch size for the image: 128² in 2D, about 64³ physical in 3D.

    Anisotropic axes get fewer voxels so the patch is roughly cubic in physical
    space. Entries are multiples of 16 (the U-Net's total down-sampling) and
    no larger than needed to cover the image.

    Parameters
    ----------
    spatial_shape : tuple of int
        ``([Z,] Y, X)`` shape of the image.
    spacing : tuple of float
        Physical voxel spacing, same length.

    Returns
    -------
    tuple of int
    """
    target = 128 if len(spatial_shape) == 2 else 64
    finest = min(spacing)
    patch = []
    for size, step in zip(spatial_shape, spacing, strict=True):
        voxels = target * finest / step
        voxels = max(16, round(voxels / 16) * 16)
        covering = max(16, math.ceil(size / 16) * 16)
        patch.append(min(voxels, covering))
    return tuple(patch)


def crf_grid(
    radius: int, spacing: tuple[float, ...], downsample: int
) -> tuple[tuple[int, ...], tuple[float, ...], tuple[int, ...]]:
    """Pooling factors, spacing and window radius of the (coarser) grid the CRF terms use.

    An axis is pooled by ``downsample`` when its pooled spacing stays no coarser than the
    coarsest axis (or than the pooled finest axis): isotropic data is pooled along every axis,
    thick slices only in-plane. The window keeps the physical extent of ``radius`` voxels along
    the original finest axis.

    Returns
    -------
    factors : tuple of int
        Pooling factor per axis.
    spacing : tuple of float
        Spacing of the pooled grid.
    radius : tuple of int
        Window radius per axis on the pooled grid.
    """
    finest, coarsest = min(spacing), max(spacing)
    limit = max(coarsest, finest * downsample) + 1e-9
    factors = tuple(downsample if s * downsample <= limit else 1 for s in spacing)
    pooled = tuple(s * f for s, f in zip(spacing, factors, strict=True))
    extent = radius * finest
    pooled_radius = max(1, math.ceil(extent / min(pooled) - 1e-9))
    return factors, pooled, crf_window_radius(pooled_radius, pooled)


def crf_window_radius(radius: int, spacing: tuple[float, ...]) -> tuple[int, ...]:
    """Per-axis CRF window radius in voxels for an anisotropic ``spacing``.

    ``radius`` applies to the finest axis; coarser axes get
    ``ceil(radius * min(spacing) / spacing[i])`` voxels (at least 1).
    """
    finest = min(spacing)
    return tuple(max(1, math.ceil(radius * finest / s - 1e-9)) for s in spacing)
