"""Patch sampling biased to labelled voxels, with augmentation.

A patch is centred, with probability ``label_probability``, near a labelled
voxel drawn class-balanced from the :class:`LabelledVoxelIndex` (so a class
with a single stroke is seen as often as one with many), otherwise anywhere
in the image. Only the region a patch covers is read from the image source,
so this works unchanged on zarr / dask images larger than memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from scribbleseg.core.annotations import SparseTarget
from scribbleseg.core.volume import ImageSource

__all__ = ["PatchBatch", "PatchSampler"]


@dataclass(frozen=True)
class PatchBatch:
    """One training batch.

    Attributes
    ----------
    image : (B, C, *P) float32 ndarray
        Normalised image patches.
    target : (B, *P) int64 ndarray
        Class indices, ``IGNORE_INDEX`` where unlabelled or outside the image.
    valid : (B, *P) bool ndarray
        False where the patch extends beyond the image (padding).
    teacher : (B, K, *P) float32 ndarray or None
        Soft labels of a :class:`~scribbleseg.core.pixel_classifier.ForestTeacher`, when the
        sampler has one (0 where it has none).
    """

    image: np.ndarray
    target: np.ndarray
    valid: np.ndarray
    teacher: np.ndarray | None = None


class PatchSampler:
    """Draw training batches from an image and its sparse target.

    Parameters
    ----------
    source : ImageSource
    target : SparseTarget
        Read at every call, so strokes added to it are picked up at once.
    patch_size : tuple of int
        Spatial patch size ``([Z,] Y, X)``.
    batch_size : int
    label_probability : float
        Chance that a patch is centred near a labelled voxel.
    rng : numpy.random.Generator
    augment : bool
        Random flips (every axis), 90° rotations in the plane when it is
        isotropic and square, and a small intensity scale/shift.
    intensity_jitter : float
        Multiplier of the intensity scale/shift's spread (scale sd 0.1, shift sd 0.05 of the
        normalised range at 1; 0 leaves intensities as they are; checked by
        ``TrainConfig.intensity_augmentation``). The draws are made whatever it is, so two
        samplers with the same ``rng`` draw the same patches and flips.
    """

    def __init__(
        self,
        source: ImageSource,
        target: SparseTarget,
        *,
        patch_size: tuple[int, ...],
        batch_size: int,
        label_probability: float,
        rng: np.random.Generator,
        augment: bool = True,
        intensity_jitter: float = 1.0,
    ) -> None:
        if len(patch_size) != source.spatial_dims:
            raise ValueError(
                f"patch_size {patch_size} must have one entry per spatial axis of the image "
                f"{source.spatial_shape}"
            )
        if target.target.shape != source.spatial_shape:
            raise ValueError(f"target shape {target.target.shape} != image shape {source.spatial_shape}")
        self.source = source
        self.target = target
        self.patch_size = tuple(int(p) for p in patch_size)
        self.batch_size = int(batch_size)
        self.label_probability = float(label_probability)
        self.rng = rng
        self.augment = augment
        self.intensity_jitter = float(intensity_jitter)
        self._set_rotation()

    def _set_rotation(self) -> None:
        spacing = self.source.spacing
        patch = self.patch_size
        self._can_rotate = patch[-1] == patch[-2] and spacing[-1] == spacing[-2]

    def resize(self, *, patch_size: Sequence[int], batch_size: int) -> None:
        """Draw later batches with another patch and batch size (e.g. after running out of memory)."""
        if len(patch_size) != self.source.spatial_dims or batch_size < 1:
            raise ValueError(f"invalid patch_size {tuple(patch_size)} or batch_size {batch_size}")
        self.patch_size = tuple(int(p) for p in patch_size)
        self.batch_size = int(batch_size)
        self._set_rotation()

    def _centre(self) -> np.ndarray:
        shape = np.asarray(self.source.spatial_shape)
        if len(self.target.index) and self.rng.random() < self.label_probability:
            centre = self.target.index.sample(self.rng, 1)[0]
            # Jitter so labelled voxels are not always at the patch centre (the
            # network must not learn "the centre is labelled").
            half = np.asarray(self.patch_size) // 2
            jitter = self.rng.integers(-(half * 3) // 4, (half * 3) // 4 + 1)
            return np.clip(centre + jitter, 0, shape - 1)
        return (self.rng.random(len(shape)) * shape).astype(np.int64)

    def region_around(self, centre: np.ndarray) -> tuple[slice, ...]:
        """Patch region (possibly beyond the image) centred on ``centre``."""
        return tuple(
            slice(int(c) - p // 2, int(c) - p // 2 + p) for c, p in zip(centre, self.patch_size, strict=True)
        )

    def sample(self, teacher: Any | None = None) -> PatchBatch:
        """Draw one batch; with ``teacher`` (has ``read(region) -> (K, *P)``), its soft labels too."""
        images, targets, valids, soft = [], [], [], []
        for _ in range(self.batch_size):
            region = self.region_around(self._centre())
            image = self.source.read(region)
            target = self.target.read(region)
            valid = self._inside_image(region)
            extra = teacher.read(region) if teacher is not None else None
            if self.augment:
                image, target, valid, extra = self._augment(image, target, valid, extra)
            images.append(image)
            targets.append(target)
            valids.append(valid)
            soft.append(extra)
        return PatchBatch(
            image=np.ascontiguousarray(np.stack(images), dtype=np.float32),
            target=np.ascontiguousarray(np.stack(targets), dtype=np.int64),
            valid=np.ascontiguousarray(np.stack(valids)),
            teacher=None if teacher is None else np.ascontiguousarray(np.stack(soft), dtype=np.float32),
        )

    def _inside_image(self, region: tuple[slice, ...]) -> np.ndarray:
        valid = np.zeros(self.patch_size, dtype=bool)
        inside = tuple(
            slice(max(0, -s.start), min(s.stop, size) - s.start)
            for s, size in zip(region, self.source.spatial_shape, strict=True)
        )
        valid[inside] = True
        return valid

    def _augment(
        self, image: np.ndarray, target: np.ndarray, valid: np.ndarray, teacher: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        ndim = target.ndim
        for axis in range(ndim):
            if self.rng.random() < 0.5:
                image = np.flip(image, axis + 1)
                target = np.flip(target, axis)
                valid = np.flip(valid, axis)
                teacher = None if teacher is None else np.flip(teacher, axis + 1)
        if self._can_rotate:
            k = int(self.rng.integers(4))
            if k:
                image = np.rot90(image, k, axes=(-2, -1))
                target = np.rot90(target, k, axes=(-2, -1))
                valid = np.rot90(valid, k, axes=(-2, -1))
                teacher = None if teacher is None else np.rot90(teacher, k, axes=(-2, -1))
        scale = 1.0 + 0.1 * self.intensity_jitter * self.rng.standard_normal()
        shift = 0.05 * self.intensity_jitter * self.rng.standard_normal()
        image = image * np.float32(scale) + np.float32(shift)
        return image, target, valid, teacher
