"""Training as a generator of small, frozen update records.

The CLI, the tests and the napari widget all drive the same :class:`Trainer`:

>>> trainer = Trainer(source, target, train_config=TrainConfig(steps=200))  # doctest: +SKIP
>>> for update in trainer.run():  # doctest: +SKIP
...     print(update.step, update.loss)

Thread-safety: :meth:`Trainer.run` runs in one (worker) thread; :meth:`stop`,
:meth:`add_labels` and :meth:`set_preview_region` may be called from any other
thread. New labels are applied, and a stop is honoured, between two steps.
"""

from __future__ import annotations

import copy
import math
import queue
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from scribbleseg.core.annotations import SparseTarget
from scribbleseg.core.config import (
    LossConfig,
    ModelConfig,
    TrainConfig,
    crf_grid,
    default_forest_blend_steps,
    default_patch_size,
    default_teacher_refinement,
    default_teacher_self_training,
)
from scribbleseg.core.inference import (
    amp_dtype,
    autocast_context,
    predict_region,
    probabilities_to_labels,
    resolve_device,
)
from scribbleseg.core.losses import (
    crf_loss,
    gather_samples,
    partial_cross_entropy,
    partial_dice_loss,
    sample_labelled,
    sampled_contrastive_loss,
    spatial_kernel_sum,
    teacher_cross_entropy,
)
from scribbleseg.core.models import DOWNSAMPLING, ScribbleNet, build_model
from scribbleseg.core.pixel_classifier import ForestBlend, ForestTeacher, feature_preview
from scribbleseg.core.prevalence import estimate_factors, reweight
from scribbleseg.core.refine import MeanField, estimate_noise, grown_region
from scribbleseg.core.sampling import PatchSampler
from scribbleseg.core.volume import ImageSource, clip_region
from scribbleseg.errors import ConfigError, ScribbleSegError

if TYPE_CHECKING:
    from scribbleseg.io.checkpoint import ModelMetadata

__all__ = ["Preview", "TrainUpdate", "Trainer"]

StopReason = Literal["steps", "time", "stopped"]


@dataclass(frozen=True)
class Preview:
    """Prediction of the region the user is looking at.

    Attributes
    ----------
    region : tuple of slice
        Spatial region in image coordinates.
    labels : ndarray
        Predicted class values over ``region``.
    probabilities : (K, *region) float32 ndarray
    step : int
        Training step the prediction was made after.
    source : {"network", "features"}
        Who predicted: the network, or (in the first steps) the random forest on filter features
        of :mod:`scribbleseg.core.pixel_classifier`.
    """

    region: tuple[slice, ...]
    labels: np.ndarray
    probabilities: np.ndarray
    step: int
    source: Literal["network", "features"] = "network"


@dataclass(frozen=True)
class TrainUpdate:
    """One training step's report.

    Attributes
    ----------
    step : int
        Steps done so far (in this and earlier runs of the trainer).
    elapsed : float
        Seconds since this run started.
    loss : float
        Total weighted loss of the step.
    terms : mapping of str to float
        Unweighted loss terms of this step (``pce``, ``dice``, ``contrastive``, ``crf``, ``dynamic_crf``).
    labelled_voxels : int
        Labelled voxels the trainer currently uses (grows as strokes arrive).
    preview : Preview or None
    done : bool
        True on the last record of a run.
    reason : {"steps", "time", "stopped"} or None
        Why the run ended (only when ``done``).
    message : str or None
        Something the user should be told, e.g. that training ran out of memory
        and continues with a smaller patch or on the CPU, or that a step was
        skipped because its loss or gradients were not finite (such records do
        not advance ``step``).
    """

    step: int
    elapsed: float
    loss: float
    terms: Mapping[str, float]
    labelled_voxels: int
    preview: Preview | None = None
    done: bool = False
    reason: StopReason | None = None
    message: str | None = None


#: Smallest patch edge the out-of-memory recovery shrinks to (two U-Net levels of context).
_MIN_OOM_PATCH = 32


def _join(first: str | None, second: str) -> str:
    """Two messages for the user as one."""
    return second if first is None else f"{first}; {second}"


#: Steps in a row whose loss or gradients are not finite after which a run gives up (each such
#: step is skipped: the weights keep their last finite values).
MAX_NON_FINITE_STEPS = 20


@dataclass
class _PendingLabels:
    region: tuple[slice, ...]
    labels: np.ndarray


@dataclass
class _Clock:
    started: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


class Trainer:
    """Trains a :class:`ScribbleNet` from sparse labels.

    Parameters
    ----------
    source : ImageSource
        The image; its normalisation statistics are computed (from a sample) here.
    target : SparseTarget
        Labels as training targets; updated in place by :meth:`add_labels`.
    model_config, loss_config, train_config : optional
        Defaults when omitted.
    init_model : ScribbleNet, optional
        Warm start: weights are copied from this model (it must have the same
        spatial dims, channels and classes).
    """

    def __init__(
        self,
        source: ImageSource,
        target: SparseTarget,
        *,
        model_config: ModelConfig | None = None,
        loss_config: LossConfig | None = None,
        train_config: TrainConfig | None = None,
        init_model: ScribbleNet | None = None,
    ) -> None:
        self.source = source
        self.target = target
        self.model_config = model_config or ModelConfig()
        self.loss_config = loss_config or LossConfig()
        self.train_config = train = train_config or TrainConfig()
        self.class_map = target.class_map
        num_classes = len(self.class_map.values)
        spatial_dims = source.spatial_dims

        if train.num_threads is not None:
            torch.set_num_threads(int(train.num_threads))
        torch.manual_seed(train.seed)
        self._rng = np.random.default_rng(train.seed)
        self._generator = torch.Generator().manual_seed(train.seed)
        self.device = resolve_device(train.device)
        self.normalisation = source.normalisation

        self.model = build_model(
            self.model_config,
            spatial_dims=spatial_dims,
            in_channels=source.n_channels,
            num_classes=num_classes,
        )
        if init_model is not None:
            self._warm_start(init_model)
        self.model.to(self.device)
        # TrainConfig.weight_average: the averaged weights, and the raw ones training resumes from
        # while ``self.model`` holds the average between runs.
        self._average: ScribbleNet | None = copy.deepcopy(self.model) if train.weight_average > 0 else None
        self._raw_weights: dict[str, torch.Tensor] | None = None
        self._average_start = 0  # the average starts again when labels change

        patch = train.patch_size or default_patch_size(source.spatial_shape, source.spacing)
        if len(patch) != spatial_dims:
            raise ConfigError(f"patch_size {patch} has {len(patch)} axes but the image has {spatial_dims}")
        self.patch_size = tuple(patch)
        self.batch_size = train.batch_size or (4 if spatial_dims == 2 else 2)
        self._initial_patch, self._initial_batch = self.patch_size, self.batch_size
        self.sampler = PatchSampler(
            source,
            target,
            patch_size=self.patch_size,
            batch_size=self.batch_size,
            label_probability=train.label_sampling_probability,
            rng=self._rng,
            intensity_jitter=train.intensity_augmentation,
        )
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=train.learning_rate, weight_decay=train.weight_decay
        )
        # Training mixed precision on CUDA only: on CPU, bf16 training took 1.46x more steps per
        # second but its Dice was lower in the one comparison we ran (docs/benchmarks.md); CPU
        # previews and prediction do use bf16 (predict_region / blockwise, amp=True).
        self._amp_dtype = amp_dtype(self.device, train.amp) if self.device.type == "cuda" else None
        self._scaler = torch.amp.GradScaler("cuda", enabled=self._amp_dtype == torch.float16)
        self._non_finite_steps = 0  # skipped steps in a row (MAX_NON_FINITE_STEPS)

        spacing = tuple(float(s) for s in source.spacing)
        # The CRF terms run on a coarser grid (LossConfig.crf_downsample; see config.crf_grid).
        self._crf_factors, self._crf_spacing, self._crf_radius = crf_grid(
            self.loss_config.crf_window_radius, spacing, self.loss_config.crf_downsample
        )
        self._crf_sigma_spatial = self.loss_config.crf_sigma_spatial * min(spacing)
        # Preview context: 15 voxels along the finest axis, fewer along coarse ones (a z-slice of
        # a thick-slice volume then needs 16 slices read, not 48).
        self._preview_halo = tuple(int(15 * min(spacing) / s) for s in spacing)
        # CRF terms are reported per unit of the window's spatial kernel (see LossConfig).
        self._crf_scale = 1.0 / spatial_kernel_sum(
            spacing=self._crf_spacing, sigma_spatial=self._crf_sigma_spatial, window_radius=self._crf_radius
        )

        self.step = 0
        self.seconds = 0.0
        self._stop = threading.Event()
        self._pending: queue.SimpleQueue[_PendingLabels] = queue.SimpleQueue()
        self._preview_lock = threading.Lock()
        self._preview_region: tuple[slice, ...] | None = None
        self._preview_due = True
        self._labels_version = 0
        self._feature_preview_key: tuple[Any, ...] | None = None
        # The forest teacher (LossConfig.teacher_weight): the one in use, and one being fitted.
        self._teacher: ForestTeacher | None = None
        self._teacher_start_step = 0
        self._teacher_version = -1
        self._teacher_started_at = -math.inf
        self._teacher_failed = False
        self._teacher_job: tuple[threading.Thread, ForestTeacher, int] | None = None
        self._teacher_cancel = threading.Event()
        self._teacher_message: str | None = None
        # Prevalence factors of the network's probabilities (TrainConfig.prevalence_correction)
        # and the step they were estimated at.
        self._class_factors: tuple[float, ...] | None = None
        self._class_factors_step = -math.inf
        # The image's noise per channel for TrainConfig.crf_refinement: estimated on first use.
        self._noise: tuple[float, ...] | None = None

    # ----------------------------------------------------------------- control
    def stop(self) -> None:
        """Ask :meth:`run` to finish after the current step (thread-safe)."""
        self._stop.set()

    def add_labels(self, region: Sequence[slice], labels: np.ndarray) -> None:
        """Queue new user labels (class values, 0 = unlabelled) for ``region`` (thread-safe).

        They replace the region's labels before the next step.
        """
        self._pending.put(_PendingLabels(tuple(region), np.array(labels, copy=True)))

    def set_preview_region(self, region: Sequence[slice] | None) -> None:
        """Region to preview while training (None: no previews). Thread-safe."""
        with self._preview_lock:
            self._preview_region = tuple(region) if region is not None else None
            self._preview_due = True

    @property
    def labelled_voxels(self) -> int:
        """Number of labelled voxels currently used for training."""
        return len(self.target.index)

    # ------------------------------------------------------------------- train
    def run(self, *, checkpoint: bool = False) -> Iterator[TrainUpdate]:
        """Train, yielding a :class:`TrainUpdate` after every step.

        Ends after ``steps`` steps or ``time_budget`` seconds (counted from this
        call), or at the step after :meth:`stop`. The last record has ``done``.
        Calling ``run`` again continues from the current weights.

        Parameters
        ----------
        checkpoint : bool
            This run is one leg of a longer training (``benchmarks/accuracy.py`` scores the model
            at each of its budgets): when it ends on its budget or step count, a forest teacher
            still being fitted goes on in its thread and the next run takes it up. Otherwise (and
            after a Stop) such a fit is abandoned, giving the CPU back (it is fitted again next run).
        """
        train = self.train_config
        self._stop.clear()
        clock = _Clock()
        last_preview = -math.inf
        steps_this_run = 0
        self._resume_raw_weights()
        self.model.train()
        loss_value, terms = math.nan, MappingProxyType({})

        def record(**extra: Any) -> TrainUpdate:
            return TrainUpdate(
                step=self.step,
                elapsed=clock.elapsed(),
                loss=loss_value,
                terms=terms,
                labelled_voxels=self.labelled_voxels,
                **extra,
            )

        reason: StopReason
        while True:
            if self._stop.is_set():
                reason = "stopped"
                break
            if train.steps is not None and steps_this_run >= train.steps:
                reason = "steps"
                break
            if train.time_budget is not None and clock.elapsed() >= train.time_budget:
                reason = "time"
                break
            self._apply_pending_labels()
            self._update_teacher()
            norm_state = self._norm_state()
            message, self._teacher_message = self._teacher_message, None
            taken = False
            try:
                loss_value, terms, taken = self._train_step()
                if taken:
                    self._non_finite_steps = 0
                else:
                    self._restore_norm_state(norm_state)
                    message = _join(message, self._skip_non_finite_step())  # raises after too many
            except BaseException as exc:
                # Keep the model of the last good step: its weights are untouched (the optimizer
                # step comes last) and its batch-norm statistics are restored.
                self._restore_norm_state(norm_state)
                if not isinstance(exc, torch.OutOfMemoryError):
                    self.model.eval()  # as after a normal run
                    self._teacher_cancel.set()
                    raise
                message = _join(message, self._recover_from_out_of_memory())
            if not taken:
                yield record(message=message)
                continue
            self.step += 1
            steps_this_run += 1
            self._update_average()
            preview = None
            if not self._stop.is_set() and self._want_preview(clock.elapsed() - last_preview):
                last_preview = clock.elapsed()
                try:
                    preview = self.preview()
                except torch.OutOfMemoryError:
                    self._release_memory()
                    skipped = "out of memory while drawing the preview: it is skipped this time"
                    message = _join(message, skipped)
            yield record(preview=preview, message=message)
        if not checkpoint or reason == "stopped":
            self._teacher_cancel.set()  # a forest still being fitted is abandoned (fitted again next run)
        message = None
        self._adopt_average()
        self._attach_forest()
        if steps_this_run:
            try:
                # After a Stop, fewer passes: the user is waiting (Stop within a second).
                self.recalibrate_batch_norm(batches=2 if reason == "stopped" else 8)
                self._refresh_class_factors(self.model, force=True)
            except torch.OutOfMemoryError:
                self._release_memory()
                message = "out of memory while re-estimating batch-norm statistics: kept the running ones"
        self.model.class_factors = self._class_factors
        self.model.refinement = self.refinement()
        self.seconds += clock.elapsed()
        self.model.eval()
        yield record(done=True, reason=reason, message=message)

    # ------------------------------------------------------------ weight average
    @torch.no_grad()
    def _update_average(self) -> None:
        """Move the averaged weights towards the current ones (TrainConfig.weight_average)."""
        if self._average is None:
            return
        n = self.step - self._average_start
        decay = min(self.train_config.weight_average, (1 + n) / (10 + n))
        # Multi-tensor operations: a few kernel launches instead of one per tensor.
        torch._foreach_lerp_(
            list(self._average.parameters()), [p.detach() for p in self.model.parameters()], 1.0 - decay
        )
        # Batch-norm statistics: the latest (recalibrated after a run).
        buffers = list(self._average.buffers())
        if buffers:  # (a network without buffers has none to copy; foreach refuses empty lists)
            torch._foreach_copy_(buffers, list(self.model.buffers()))

    def _adopt_average(self) -> None:
        """At the end of a run, put the averaged weights into ``self.model``; keep the raw ones."""
        if self._average is None or self.step == 0 or self._raw_weights is not None:
            return
        self._raw_weights = {name: value.detach().clone() for name, value in self.model.state_dict().items()}
        self.model.load_state_dict(self._average.state_dict())

    def _resume_raw_weights(self) -> None:
        """At the start of a run, train on from the raw weights (the optimizer's state is theirs)."""
        if self._raw_weights is None:
            return
        assert self._average is not None
        # The averaged model keeps the batch-norm statistics recalibrated for it after the last run.
        self._average.load_state_dict(self.model.state_dict())
        self.model.load_state_dict(self._raw_weights)
        self._raw_weights = None

    def _norm_state(self) -> list[torch.Tensor]:
        """Return copies of the batch-norm buffers (a few kB), to undo a failed step's forward pass."""
        return [buffer.clone() for buffer in self._norm_buffers()]

    def _restore_norm_state(self, state: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for buffer, saved in zip(self._norm_buffers(), state, strict=True):
                buffer.copy_(saved)

    def _norm_buffers(self) -> list[torch.Tensor]:
        return [
            buffer
            for module in self.model.modules()
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
            for buffer in module.buffers()
        ]

    # ------------------------------------------------------------ out of memory
    def _release_memory(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _recover_from_out_of_memory(self) -> str:
        """Shrink the batch, then the patch, then move to the CPU; return what was done.

        Raises
        ------
        ScribbleSegError
            If a step does not fit even with batch 1 and the smallest patch on the CPU.
        """
        self._release_memory()
        batch, patch = self.batch_size, self.patch_size
        if batch > 1:
            self._resize(patch, batch // 2)
            return f"out of memory: training continues with batch size {self.batch_size} (was {batch})"
        smaller = tuple(min(p, max(_MIN_OOM_PATCH, (p // 2) // DOWNSAMPLING * DOWNSAMPLING)) for p in patch)
        if smaller != patch:
            self._resize(smaller, batch)
            return f"out of memory: training continues with patch {smaller} (was {patch})"
        if self.device.type != "cpu":
            was = self.device
            self._move_to(torch.device("cpu"))
            self._resize(self.train_config.patch_size or self._initial_patch, self._initial_batch)
            return (
                f"out of memory on {was} even with batch 1 and patch {patch}: "
                f"training continues on the CPU (slower) with patch {self.patch_size}, "
                f"batch {self.batch_size}"
            )
        raise ScribbleSegError(
            f"out of memory on the CPU even with batch 1 and patch {patch}: close other programs, "
            "or use a smaller network (size 'small')"
        )

    def _resize(self, patch: Sequence[int], batch: int) -> None:
        self.patch_size = tuple(int(p) for p in patch)
        self.batch_size = int(batch)
        self.sampler.resize(patch_size=self.patch_size, batch_size=self.batch_size)

    def _move_to(self, device: torch.device) -> None:
        """Move the network and the optimizer state to ``device`` (e.g. the CPU after a GPU OOM)."""
        self.model.to(device)
        if self._average is not None:
            self._average.to(device)
        if self._raw_weights is not None:
            self._raw_weights = {name: value.to(device) for name, value in self._raw_weights.items()}
        for state in self.optimizer.state.values():
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and key != "step":
                    state[key] = value.to(device)
        self.device = device
        self._amp_dtype = amp_dtype(device, self.train_config.amp) if device.type == "cuda" else None
        self._scaler = torch.amp.GradScaler("cuda", enabled=self._amp_dtype == torch.float16)

    def _apply_pending_labels(self) -> None:
        while True:
            try:
                pending = self._pending.get_nowait()
            except queue.Empty:
                return
            self.target.update(pending.region, pending.labels)
            self._labels_version += 1
            # New strokes must show in the preview within a few steps, not after the average's
            # horizon (about 100 steps): the average starts again from the current weights.
            self._average_start = self.step
            with self._preview_lock:
                self._preview_due = True

    def _want_preview(self, since_last: float) -> bool:
        with self._preview_lock:
            if self._preview_region is None:
                return False
            return self._preview_due or since_last >= self.train_config.preview_interval

    def preview(self, region: Sequence[slice] | None = None) -> Preview | None:
        """Predict ``region`` (default: the preview region) with the current weights."""
        with self._preview_lock:
            region = tuple(region) if region is not None else self._preview_region
            self._preview_due = False
        if region is None:
            return None
        if self.step < self.train_config.feature_preview_steps:
            key = (region, self._labels_version)
            if key == self._feature_preview_key:
                return None  # the same labels in the same view: the same forest, nothing new
            probabilities = feature_preview(
                self.source, self.target, region, seed=self.train_config.seed, threads=torch.get_num_threads()
            )
            if probabilities is not None:
                self._feature_preview_key = key
                labels = probabilities_to_labels(probabilities, self.class_map.values)
                return Preview(region, labels, probabilities, step=self.step, source="features")
        # The averaged weights: in ``_average`` during a run, in ``model`` between runs.
        average_apart = self._average is not None and self._raw_weights is None
        model = self._average if average_apart else self.model
        clipped = clip_region(region, self.source.spatial_shape)
        refinement = self.refinement()
        # The refinement looks ``halo`` voxels around each voxel: the view is computed with that much
        # around it (inside the image) and cropped, as whole-image prediction does; but a single
        # slice of a volume is refined within the slice (a halo across it would cost 30 slices).
        halo = refinement.halo(self.source.spacing) if refinement is not None else (0,) * len(clipped)
        halo = tuple(h if r.stop - r.start > 1 else 0 for r, h in zip(clipped, halo, strict=True))
        grown, crop = grown_region(clipped, halo, self.source.spatial_shape)
        probabilities = predict_region(
            model, self.source, grown, halo=self._preview_halo, device=self.device, amp=True
        )
        self._refresh_class_factors(model)
        probabilities = reweight(probabilities, self._class_factors)
        blend = self._blend_weight()
        if blend > 0:
            assert self._teacher is not None
            forest = self._teacher.read_forest(grown)
            probabilities = (1.0 - blend) * probabilities + blend * forest
        if refinement is not None:
            probabilities = refinement.apply(
                probabilities, self.source.read(grown), self.source.spacing, region=crop, device=self.device
            )
        labels = probabilities_to_labels(probabilities, self.class_map.values)
        return Preview(region=region, labels=labels, probabilities=probabilities, step=self.step)

    def refinement(self) -> MeanField | None:
        """Return the CRF refinement of previews and predictions (TrainConfig.crf_refinement) or None.

        The image's noise is estimated on the first call (it reads up to 2 million voxels).
        """
        return self._mean_field(self.train_config.crf_refinement)

    def teacher_refinement(self) -> MeanField | None:
        """Return the CRF refinement of the teacher's soft labels (LossConfig.teacher_refinement) or None."""
        weight = self.loss_config.teacher_refinement
        if weight is None:
            weight = default_teacher_refinement(self.source.spatial_dims)
        return self._mean_field(weight)

    def teacher_self_training(self) -> int:
        """Return the rounds of the teacher's self-training (LossConfig.teacher_self_training)."""
        rounds = self.loss_config.teacher_self_training
        if rounds is None:
            rounds = default_teacher_self_training(self.source.spatial_dims)
        return rounds

    def _mean_field(self, weight: float) -> MeanField | None:
        """Return the mean-field refinement of ``weight`` for this image's noise, or None for weight 0."""
        if weight <= 0:
            return None
        if self._noise is None:
            self._noise = estimate_noise(self.source, patch_size=self.patch_size, seed=self.train_config.seed)
        return MeanField.for_noise(self._noise, weight=weight, spatial_dims=self.source.spatial_dims)

    @torch.no_grad()
    def recalibrate_batch_norm(self, batches: int = 8) -> None:
        """Re-estimate batch-norm statistics with the final weights.

        During training the running statistics are an exponential average over
        earlier weights; after a short run they no longer match the network, and
        eval-mode predictions (previews, whole-image prediction, saved models)
        are much worse than the training loss suggests. A few forward passes in
        train mode with a cumulative average (``momentum=None``) fix that.
        """
        norms = [m for m in self.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        if not norms:
            return
        momenta = [m.momentum for m in norms]
        was_training = self.model.training
        try:
            for m in norms:
                m.reset_running_stats()
                m.momentum = None
            self.model.train()
            for _ in range(batches):
                batch = self.sampler.sample()
                image = torch.from_numpy(batch.image).to(self.device)
                with autocast_context(self.device, self._amp_dtype is not None):
                    self.model(image)
        finally:
            for m, momentum in zip(norms, momenta, strict=True):
                m.momentum = momentum
            self.model.train(was_training)

    @torch.no_grad()
    def _refresh_class_factors(self, model: torch.nn.Module, *, force: bool = False) -> None:
        """Re-estimate the network's prevalence factors when older than 250 steps (or ``force``).

        They come from the network's probabilities on up to 8 patch-sized regions spread over the
        image (the same regions every time), so the cost is bounded by the patch, not the image.
        """
        if not self.train_config.prevalence_correction:
            self._class_factors = None
            return
        if not force and self.step - self._class_factors_step < 250:
            return
        shape = self.source.spatial_shape
        patch = [min(p, n) for p, n in zip(self.patch_size, shape, strict=True)]
        count = min(8, math.ceil(math.prod(shape) / math.prod(patch)))
        rng = np.random.default_rng(self.train_config.seed)
        samples = []
        for _ in range(count):
            starts = [int(rng.integers(0, n - p + 1)) for p, n in zip(patch, shape, strict=True)]
            region = tuple(slice(a, a + p) for a, p in zip(starts, patch, strict=True))
            probabilities = predict_region(
                model, self.source, region, halo=self._preview_halo, device=self.device, amp=True
            )
            samples.append(probabilities.reshape(self.target.num_classes, -1))
        factors = estimate_factors(np.concatenate(samples, axis=1))
        self._class_factors = tuple(float(f) for f in factors)
        self._class_factors_step = self.step

    def _teacher_fade(self) -> float:
        """1 when the first forest teacher is adopted, falling linearly to 0 over ``teacher_steps``."""
        if self._teacher is None:
            return 0.0
        return max(0.0, 1.0 - (self.step - self._teacher_start_step) / self.loss_config.teacher_steps)

    def _teacher_weight(self) -> float:
        return self.loss_config.teacher_weight * self._teacher_fade()

    def _blend_weight(self) -> float:
        """Weight of the forest in previews and predictions now (TrainConfig.forest_blend).

        It fades with the teacher, and hands over to the network between two thirds of
        ``forest_blend_steps`` and ``forest_blend_steps`` after the forest came in (by default in
        2D only: :func:`~scribbleseg.core.config.default_forest_blend_steps`).
        """
        if self._teacher is None:
            return 0.0
        end = self.train_config.forest_blend_steps or default_forest_blend_steps(self.source.spatial_dims)
        weight = self.train_config.forest_blend * self._teacher_fade()
        if end is None:
            return weight
        return weight * min(1.0, max(0.0, (end - (self.step - self._teacher_start_step)) / (end / 3)))

    def _attach_forest(self) -> None:
        """Give ``self.model`` the forest blend of this step (or none), for prediction and saving."""
        weight, teacher = self._blend_weight(), self._teacher
        if weight == 0 or teacher is None or teacher.forest is None:
            self.model.forest_blend = None
            return
        self.model.forest_blend = ForestBlend(
            teacher.forest, teacher.spec, weight, self.target.num_classes, factors=teacher.factors
        )

    def _update_teacher(self) -> None:
        """Adopt a teacher fitted in the background; start fitting one when labels changed.

        The forest is fitted in its own thread while the network trains, so neither the first
        steps nor Stop wait for it. It is refitted on new labels at most every 30 s, and only
        while its teacher weight or its blend weight has not faded out.
        """
        cfg = self.loss_config
        if cfg.teacher_weight == 0 and self.train_config.forest_blend == 0:
            return
        job = self._teacher_job
        if job is not None:
            thread, teacher, version = job
            if thread.is_alive():
                return
            self._teacher_job = None
            if teacher.error is not None:
                self._teacher_failed = True
                self._teacher_message = (
                    f"the instant feature classifier failed ({type(teacher.error).__name__}: "
                    f"{teacher.error}); training goes on without it"
                )
            if teacher.probabilities is not None:
                if self._teacher is None:
                    self._teacher_start_step = self.step
                self._teacher = teacher
            if not teacher.abandoned:  # else fit again (a Stop or the end of a run abandoned it)
                self._teacher_version = version
        fading_done = self._teacher is not None and self._teacher_weight() == 0 and self._blend_weight() == 0
        up_to_date = self._teacher_version == self._labels_version
        recent = time.perf_counter() - self._teacher_started_at < 30.0
        if fading_done or up_to_date or (self._teacher is not None and recent) or self._teacher_failed:
            return
        teacher = ForestTeacher(
            self.source,
            self.target,
            seed=self.train_config.seed,
            threads=torch.get_num_threads(),
            should_stop=self._teacher_cancel.is_set,
            prevalence_correction=self.train_config.prevalence_correction,
            # Blend only (no teacher loss): the raw forest.
            refinement=self.teacher_refinement() if cfg.teacher_weight > 0 else None,
            self_training=self.teacher_self_training() if cfg.teacher_weight > 0 else 0,
            pseudo_boundary=cfg.teacher_pseudo_boundary,
        )
        if not teacher.available:
            self._teacher_failed = True  # too large: no teacher for this image
            return
        self._teacher_cancel.clear()
        self._teacher_started_at = time.perf_counter()
        thread = threading.Thread(target=teacher.fit_in_background, name="scribbleseg-teacher", daemon=True)
        self._teacher_job = (thread, teacher, self._labels_version)
        thread.start()

    def _regularizer_ramp(self) -> float:
        warmup = self.loss_config.warmup_steps
        if warmup == 0:
            return 1.0
        return float(np.clip((self.step - warmup) / warmup, 0.0, 1.0))

    def _train_step(self) -> tuple[float, Mapping[str, float], bool]:
        """One optimizer step; return the loss, its terms and whether the step was taken.

        A step whose loss or gradients are not finite (NaN or inf) is not taken: the weights and
        the optimizer's state stay as they were (with float16 autocast the gradient scaler does the
        same for gradients, which overflow now and then by design while it finds its scale).
        """
        cfg = self.loss_config
        teacher_weight = self._teacher_weight()
        batch = self.sampler.sample(self._teacher if teacher_weight > 0 else None)
        image = torch.from_numpy(batch.image).to(self.device, non_blocking=True)
        cpu_target = torch.from_numpy(batch.target)
        target = cpu_target.to(self.device, non_blocking=True)
        valid = torch.from_numpy(batch.valid).to(self.device, non_blocking=True)
        soft = None
        if batch.teacher is not None:
            soft = torch.from_numpy(batch.teacher).to(self.device, non_blocking=True)
        want_contrastive = cfg.contrastive_weight > 0
        if want_contrastive:
            # Drawn on the CPU from the CPU target and sent with the batch, before the device has
            # work queued: no device-to-host wait, and the same draws on any device.
            positions, sampled_target = self._contrastive_sample(cpu_target)

        ramp = self._regularizer_ramp()
        want_crf = cfg.crf_weight > 0 and ramp > 0
        want_dynamic = cfg.dynamic_crf_weight > 0 and ramp > 0 and self.step >= cfg.dynamic_start_step

        with autocast_context(self.device, self._amp_dtype is not None):
            out = self.model(image)
        logits = out.logits.float()
        terms: dict[str, torch.Tensor] = {"pce": partial_cross_entropy(logits, target)}
        total = terms["pce"]
        if cfg.dice_weight > 0:
            terms["dice"] = partial_dice_loss(logits, target)
            total = total + cfg.dice_weight * terms["dice"]
        if soft is not None:
            terms["teacher"] = teacher_cross_entropy(logits, soft, target, valid)
            total = total + teacher_weight * terms["teacher"]
        if want_contrastive:
            # The projection head runs only on the sampled labelled voxels, not on the whole patch.
            embedding = self._sampled_embeddings(out.features, positions)
            terms["contrastive"] = sampled_contrastive_loss(
                embedding.float(), sampled_target, temperature=cfg.temperature
            )
            total = total + cfg.contrastive_weight * terms["contrastive"]
        if want_crf or want_dynamic:
            probs = self._pool(torch.softmax(logits, dim=1))
            crf_image = self._pool(image)
            kernel = dict(
                spacing=self._crf_spacing,
                sigma_spatial=self._crf_sigma_spatial,
                sigma_intensity=cfg.crf_sigma_intensity,
                window_radius=self._crf_radius,
                mask=self._pool(valid[:, None].float())[:, 0] > 0.999,  # only wholly valid cells
            )
            if want_crf:
                terms["crf"] = self._crf_scale * crf_loss(probs, crf_image, **kernel)
                total = total + ramp * cfg.crf_weight * terms["crf"]
            if want_dynamic:
                terms["dynamic_crf"] = self._crf_scale * crf_loss(
                    probs,
                    crf_image,
                    features=self._pool(out.features.detach().float()),
                    sigma_features=cfg.crf_sigma_features,
                    **kernel,
                )
                total = total + ramp * cfg.dynamic_crf_weight * terms["dynamic_crf"]

        self.optimizer.zero_grad(set_to_none=True)
        self._scaler.scale(total).backward()
        checks = [total.detach().float()]
        if not self._scaler.is_enabled():
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            if grads:  # their norms' sum is finite exactly when every gradient is
                checks.append(torch.stack(torch._foreach_norm(grads)).float().sum())
        # One device-to-host copy for all the numbers (each float() of a GPU tensor waits for it),
        # before the optimizer step, which needs to know whether they are finite.
        numbers = torch.stack([*checks, *(value.detach().float() for value in terms.values())]).tolist()
        values = dict(zip(terms, numbers[len(checks) :], strict=True))
        finite = all(math.isfinite(number) for number in numbers[: len(checks)])
        if finite:
            self._scaler.step(self.optimizer)
            self._scaler.update()
        else:
            self.optimizer.zero_grad(set_to_none=True)
        return numbers[0], MappingProxyType(values), finite

    def _skip_non_finite_step(self) -> str:
        """Count a step that was not taken for a non-finite loss or gradient; return the message.

        Raises
        ------
        ScribbleSegError
            After :data:`MAX_NON_FINITE_STEPS` such steps in a row: training has diverged.
        """
        self._non_finite_steps += 1
        if self._non_finite_steps >= MAX_NON_FINITE_STEPS:
            self._non_finite_steps = 0
            raise ScribbleSegError(
                f"training stopped: the last {MAX_NON_FINITE_STEPS} steps all gave a loss or "
                "gradients that are not finite (NaN or inf), so the network has not been changed "
                "by them. Try a lower learning rate, or turn mixed precision off (--float32 on the "
                "command line, TrainConfig(amp=False))"
            )
        return (
            f"step skipped: its loss or gradients were not finite (NaN or inf); the weights are "
            f"unchanged ({self._non_finite_steps} in a row, training stops at {MAX_NON_FINITE_STEPS})"
        )

    def _contrastive_sample(self, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions (B, n) and targets (B, n) of class-balanced samples of labelled voxels.

        Drawn from ``target`` (B, *S) on the CPU with the trainer's generator
        (:func:`~scribbleseg.core.losses.contrastive.sample_labelled`, padded with
        ``IGNORE_INDEX``), returned on the training device.
        """
        positions, sampled_target = sample_labelled(
            target.flatten(1), self.loss_config.contrastive_samples, self._generator
        )
        return (
            positions.to(self.device, non_blocking=True),
            sampled_target.to(self.device, non_blocking=True),
        )

    def _sampled_embeddings(self, features: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Projection-head embeddings (B, E, n) of the features (B, F, *S) at ``positions`` (B, n)."""
        with autocast_context(self.device, self._amp_dtype is not None):
            return self.model.embed(gather_samples(features, positions))

    def _pool(self, tensor: torch.Tensor) -> torch.Tensor:
        """Average-pool (B, C, *S) onto the CRF grid (a no-op at factor 1)."""
        if all(f == 1 for f in self._crf_factors):
            return tensor
        pool = torch.nn.functional.avg_pool2d if tensor.ndim == 4 else torch.nn.functional.avg_pool3d
        return pool(tensor, kernel_size=self._crf_factors, stride=self._crf_factors)

    # ------------------------------------------------------------------ model
    def _warm_start(self, init_model: ScribbleNet) -> None:
        mine, theirs = self.model, init_model
        if (mine.spatial_dims, mine.in_channels, mine.num_classes) != (
            theirs.spatial_dims,
            theirs.in_channels,
            theirs.num_classes,
        ):
            raise ConfigError(
                "the initial model does not fit this data: it was trained for "
                f"{theirs.spatial_dims}D, {theirs.in_channels} channel(s), {theirs.num_classes} classes; "
                f"this image/labels need {mine.spatial_dims}D, {mine.in_channels} channel(s), "
                f"{mine.num_classes} classes"
            )
        if mine.config.resolved_features != theirs.config.resolved_features:
            raise ConfigError("the initial model has a different network size; choose the same --network")
        mine.load_state_dict(theirs.state_dict())

    def metadata(self) -> ModelMetadata:
        """Everything needed to re-apply the model (for :func:`scribbleseg.io.checkpoint.save_model`)."""
        from scribbleseg import __version__
        from scribbleseg.io.checkpoint import ModelMetadata

        class_map = self.class_map
        return ModelMetadata(
            model=self.model_config,
            spatial_dims=self.source.spatial_dims,
            in_channels=self.source.n_channels,
            class_values=tuple(int(v) for v in class_map.values),
            class_names=tuple(class_map.names),
            background_class=class_map.background,
            normalisation={"low": list(self.normalisation.low), "high": list(self.normalisation.high)},
            spacing=tuple(float(s) for s in self.source.spacing),
            loss=self.loss_config.to_dict(),
            train=self.train_config.to_dict(),
            training={
                "steps": self.step,
                "seconds": round(self.seconds, 3),
                "labelled_voxels": self.labelled_voxels,
                "patch_size": "x".join(str(p) for p in self.patch_size),
                "batch_size": self.batch_size,
                "forest_blend": self.model.forest_blend.weight if self.model.forest_blend else 0.0,
            },
            version=__version__,
        )
