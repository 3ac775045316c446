"""Training settings: a few choices up front, the rest folded away; built into core configs.

Every value here is a field of :class:`~scribbleseg.core.config.ModelConfig`,
:class:`~scribbleseg.core.config.LossConfig` or :class:`~scribbleseg.core.config.TrainConfig`,
and the defaults are read from those classes: :meth:`SettingsPanel.to_config` builds the frozen
configs (validated by the core), :meth:`SettingsPanel.set_config` shows existing ones.
"""

from __future__ import annotations

import dataclasses
import os
from typing import NamedTuple

from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, LineEdit, SpinBox
from qtpy.QtWidgets import QVBoxLayout, QWidget
from superqt import QCollapsible

from scribbleseg.core.config import NETWORK_FEATURES, LossConfig, ModelConfig, TrainConfig
from scribbleseg.errors import ConfigError

__all__ = ["Configs", "SettingsPanel", "ui_thread_count"]

_LOSS = LossConfig()
_TRAIN = TrainConfig()
_MODEL = ModelConfig()


def ui_thread_count() -> int:
    """Torch threads for training from the GUI: every core but one, which the viewer keeps."""
    return max(1, (os.cpu_count() or 2) - 1)


class Configs(NamedTuple):
    """The three core configurations a training run needs."""

    model: ModelConfig
    loss: LossConfig
    train: TrainConfig


def _short(value: float) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return text if len(text) <= 12 else text[:10] + "…"


def _weight(value: float, tooltip: str) -> FloatSpinBox:
    return FloatSpinBox(value=value, min=0.0, max=100.0, step=0.05, tooltip=tooltip)


class SettingsPanel(QWidget):
    """Network, device and (folded) patch size, learning rate, loss weights and limits.

    Attributes
    ----------
    network, device : magicgui ComboBox
        Up front.
    advanced : magicgui Container
        ``patch_size``, ``batch_size``, ``learning_rate``, ``contrastive_weight``, ``crf_weight``,
        ``dynamic_crf_weight``, ``dice_weight``, ``teacher_weight``, ``point_radius``, ``max_steps``,
        ``max_seconds``, ``preview_interval``, ``feature_preview_steps``, ``weight_average``,
        ``forest_blend``, ``prevalence_correction``, ``crf_refinement``, ``seed``; shown by unfolding
        "Advanced".
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        # Fields without a widget (temperature, kernel widths …) come from here: the defaults, or
        # the configurations last given to set_config (e.g. a loaded model's).
        self._base = Configs(_MODEL, _LOSS, _TRAIN)
        self.network = ComboBox(
            label="network",
            choices=list(NETWORK_FEATURES),
            value=_MODEL.size,
            tooltip="small trains fast on a CPU; large is wider (for a GPU)",
        )
        self.device = ComboBox(
            label="device",
            choices=["auto", "cpu", "cuda"],
            value=_TRAIN.device,
            tooltip="auto takes a CUDA GPU when there is one",
        )
        self.basic = Container(widgets=[self.network, self.device], labels=True)
        self.patch_size = LineEdit(
            label="patch size",
            value="auto",
            tooltip="'auto', one size for every axis (e.g. 128), or one per axis (e.g. 32,64,64); "
            "multiples of 16",
        )
        self.batch_size = SpinBox(label="batch size", value=0, min=0, max=256, tooltip="0 = auto")
        self.learning_rate = FloatSpinBox(
            label="learning rate", value=_TRAIN.learning_rate, min=1e-5, max=1.0, step=1e-4
        )
        self.contrastive_weight = _weight(_LOSS.contrastive_weight, "weight of the local contrastive loss")
        self.crf_weight = _weight(_LOSS.crf_weight, "weight of the CRF loss (intensity + position)")
        self.dynamic_crf_weight = _weight(
            _LOSS.dynamic_crf_weight, "weight of the CRF loss on the network's own features"
        )
        self.dice_weight = _weight(_LOSS.dice_weight, "weight of the Dice loss on scribbled voxels")
        self.teacher_weight = _weight(
            _LOSS.teacher_weight, "weight of the soft labels of a random forest on filter features (0 = off)"
        )
        for widget, label in (
            (self.contrastive_weight, "contrastive weight"),
            (self.crf_weight, "CRF weight"),
            (self.dynamic_crf_weight, "dynamic CRF weight"),
            (self.dice_weight, "Dice weight"),
            (self.teacher_weight, "forest teacher weight"),
        ):
            widget.label = label
        self.point_radius = FloatSpinBox(
            label="point radius", value=_TRAIN.point_radius, min=0.5, max=50.0, step=0.5
        )
        self.max_steps = SpinBox(
            label="stop after steps", value=0, min=0, max=10_000_000, tooltip="0 = train until Stop"
        )
        self.max_seconds = FloatSpinBox(
            label="stop after seconds", value=0.0, min=0.0, max=1e7, step=10.0, tooltip="0 = train until Stop"
        )
        self.preview_interval = FloatSpinBox(
            label="preview every (s)", value=_TRAIN.preview_interval, min=0.1, max=600.0, step=0.5
        )
        self.feature_preview_steps = SpinBox(
            label="feature previews until step",
            value=_TRAIN.feature_preview_steps,
            min=0,
            max=10_000_000,
            tooltip="first previews from a random forest on filter features (instant); 0 = network only",
        )
        self.weight_average = FloatSpinBox(
            label="weight average decay",
            value=_TRAIN.weight_average,
            min=0.0,
            max=0.999,
            step=0.001,
            tooltip="exponential moving average of the weights used for previews and prediction; 0 = off",
        )
        self.forest_blend = FloatSpinBox(
            label="forest blend",
            value=_TRAIN.forest_blend,
            min=0.0,
            max=1.0,
            step=0.05,
            tooltip="weight of the random forest mixed into previews and predictions, falling as the "
            "network trains; 0 = network only",
        )
        self.prevalence_correction = CheckBox(
            label="prevalence correction",
            value=_TRAIN.prevalence_correction,
            tooltip="re-weight predictions to the class shares they imply over the image: narrows "
            "objects that come out too wide, shrinks objects painted only in their core",
        )
        self.crf_refinement = FloatSpinBox(
            label="CRF refinement",
            value=_TRAIN.crf_refinement,
            min=0.0,
            max=100.0,
            step=0.25,
            tooltip="weight of the mean-field CRF refinement of previews and predictions, which moves "
            "boundaries to the image's edges; 0 = off",
        )
        self.seed = SpinBox(label="seed", value=_TRAIN.seed, min=0, max=2**31 - 1)
        self.advanced = Container(
            widgets=[
                self.patch_size,
                self.batch_size,
                self.learning_rate,
                self.contrastive_weight,
                self.crf_weight,
                self.dynamic_crf_weight,
                self.dice_weight,
                self.teacher_weight,
                self.point_radius,
                self.max_steps,
                self.max_seconds,
                self.preview_interval,
                self.feature_preview_steps,
                self.weight_average,
                self.forest_blend,
                self.prevalence_correction,
                self.crf_refinement,
                self.seed,
            ],
            labels=True,
        )
        self.fold = QCollapsible("Advanced", self)
        self.fold.addWidget(self.advanced.native)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.basic.native)
        layout.addWidget(self.fold)

    def _patch_size(self, spatial_dims: int | None) -> tuple[int, ...] | None:
        text = self.patch_size.value.strip().lower()
        if text in ("", "auto"):
            return None
        try:
            sizes = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
        except ValueError:
            raise ConfigError(
                f"patch size {self.patch_size.value!r} is not 'auto' or integers like 128 or 32,64,64"
            ) from None
        if len(sizes) == 1 and spatial_dims is not None:
            sizes = sizes * spatial_dims
        if spatial_dims is not None and len(sizes) != spatial_dims:
            raise ConfigError(
                f"patch size {self.patch_size.value!r} has {len(sizes)} values but the image has "
                f"{spatial_dims} spatial axes"
            )
        return sizes

    def to_config(self, *, spatial_dims: int | None = None, num_threads: int | None = None) -> Configs:
        """Build the core configurations from the widgets.

        Parameters
        ----------
        spatial_dims : int, optional
            2 or 3; expands a single patch size to every axis and checks the count.
        num_threads : int, optional
            Torch CPU threads; default :func:`ui_thread_count`.

        Raises
        ------
        ConfigError
            For a value the core configurations refuse (the message names it).
        """
        base = self._base
        model = dataclasses.replace(base.model, size=self.network.value)
        loss = dataclasses.replace(
            base.loss,
            contrastive_weight=self.contrastive_weight.value,
            crf_weight=self.crf_weight.value,
            dynamic_crf_weight=self.dynamic_crf_weight.value,
            dice_weight=self.dice_weight.value,
            teacher_weight=self.teacher_weight.value,
        )
        train = dataclasses.replace(
            base.train,
            steps=self.max_steps.value or None,
            time_budget=self.max_seconds.value or None,
            patch_size=self._patch_size(spatial_dims),
            batch_size=self.batch_size.value or None,
            learning_rate=self.learning_rate.value,
            point_radius=self.point_radius.value,
            seed=self.seed.value,
            device=self.device.value,
            num_threads=num_threads if num_threads is not None else ui_thread_count(),
            preview_interval=self.preview_interval.value,
            feature_preview_steps=self.feature_preview_steps.value,
            weight_average=self.weight_average.value,
            forest_blend=self.forest_blend.value,
            prevalence_correction=self.prevalence_correction.value,
            crf_refinement=self.crf_refinement.value,
        )
        return Configs(model, loss, train)

    def set_config(self, model: ModelConfig, loss: LossConfig, train: TrainConfig) -> list[str]:
        """Show existing configurations (e.g. of a loaded model) in the widgets.

        Fields without a widget are kept and used by :meth:`to_config`. A value outside its
        widget's range (e.g. a batch size from the command line) is set to the nearest limit.

        Returns
        -------
        list of str
            One note per value that was changed that way, for the user.
        """
        self._base = Configs(model, loss, train)
        self.network.value = model.size
        self.device.value = train.device
        self.patch_size.value = "auto" if train.patch_size is None else ",".join(map(str, train.patch_size))
        self.prevalence_correction.value = train.prevalence_correction
        notes: list[str] = []
        for widget, value in (
            (self.batch_size, train.batch_size or 0),
            (self.learning_rate, train.learning_rate),
            (self.contrastive_weight, loss.contrastive_weight),
            (self.crf_weight, loss.crf_weight),
            (self.dynamic_crf_weight, loss.dynamic_crf_weight),
            (self.dice_weight, loss.dice_weight),
            (self.teacher_weight, loss.teacher_weight),
            (self.point_radius, train.point_radius),
            (self.max_steps, train.steps or 0),
            (self.max_seconds, train.time_budget or 0.0),
            (self.preview_interval, train.preview_interval),
            (self.feature_preview_steps, train.feature_preview_steps),
            (self.weight_average, train.weight_average),
            (self.forest_blend, train.forest_blend),
            (self.crf_refinement, train.crf_refinement),
            (self.seed, train.seed),
        ):
            shown = min(max(value, widget.min), widget.max)
            if shown != value:
                notes.append(
                    f"{widget.label} {_short(value)} is outside {_short(widget.min)} to "
                    f"{_short(widget.max)}, set to {_short(shown)}"
                )
            widget.value = int(shown) if isinstance(widget, SpinBox) else float(shown)
        return notes
