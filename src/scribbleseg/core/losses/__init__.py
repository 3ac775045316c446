"""Training losses for sparse scribble labels.

- :func:`partial_cross_entropy`, :func:`partial_dice_loss`: supervised terms on labelled voxels only.
- :func:`teacher_cross_entropy`: soft labels of a feature-based teacher on the unlabelled voxels.
- :func:`supervised_contrastive_loss`: local SupCon among the labelled voxels of each patch;
  :func:`sample_labelled` and :func:`sampled_contrastive_loss` are its two halves (the sample, and
  the loss of all batch items at once on it).
- :func:`crf_loss`: dense-CRF (Potts) regulariser over a local window, O(K × N) memory;
  :func:`crf_loss_unfold` is its naive, window-materialising reference.
"""

from __future__ import annotations

from scribbleseg.core.losses.contrastive import (
    balanced_sample,
    gather_samples,
    sample_labelled,
    sampled_contrastive_loss,
    supervised_contrastive_loss,
)
from scribbleseg.core.losses.crf import SPATIAL_WEIGHT_CUTOFF, crf_loss, crf_loss_unfold, spatial_kernel_sum
from scribbleseg.core.losses.partial import (
    IGNORE_INDEX,
    partial_cross_entropy,
    partial_dice_loss,
    teacher_cross_entropy,
)

__all__ = [
    "IGNORE_INDEX",
    "SPATIAL_WEIGHT_CUTOFF",
    "balanced_sample",
    "crf_loss",
    "crf_loss_unfold",
    "gather_samples",
    "partial_cross_entropy",
    "partial_dice_loss",
    "sample_labelled",
    "sampled_contrastive_loss",
    "spatial_kernel_sum",
    "supervised_contrastive_loss",
    "teacher_cross_entropy",
]
