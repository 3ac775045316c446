"""Supervised losses restricted to the labelled (scribbled) voxels.

Both losses select the labelled voxels *before* anything else touches the
logits. Softmax acts on each voxel independently, so selecting first and then
applying the softmax is exactly "softmax, then mask" — but it also guarantees
that unlabelled voxels neither change the value nor receive any gradient, even
when their logits are huge or not finite.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["IGNORE_INDEX", "partial_cross_entropy", "partial_dice_loss", "teacher_cross_entropy"]

#: Target value of unlabelled voxels.
IGNORE_INDEX: int = -1


def _check_logits_target(logits: Tensor, target: Tensor) -> None:
    """Raise ``ValueError`` unless ``logits`` (B, K, *S) and ``target`` (B, *S) fit together."""
    if logits.ndim < 3:
        raise ValueError(
            f"logits must have shape (B, K, *S) with at least one spatial axis, got {tuple(logits.shape)}"
        )
    if not logits.is_floating_point():
        raise ValueError(f"logits must be a floating-point tensor, got {logits.dtype}")
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(
            f"target must have shape (B, *S) = {tuple(logits.shape[:1] + logits.shape[2:])} to match logits "
            f"{tuple(logits.shape)}, got {tuple(target.shape)}"
        )
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(f"target must be an integer tensor, got {target.dtype}")
    num_classes = logits.shape[1]
    # One host sync; the boolean selection that follows needs one anyway.
    if bool(((target < IGNORE_INDEX) | (target >= num_classes)).any()):
        raise ValueError(
            f"target values must lie in [0, {num_classes}) or equal IGNORE_INDEX ({IGNORE_INDEX})"
        )


def _labelled_logits(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Return the logits (M, K) and classes (M,) of the M labelled voxels."""
    labelled = target != IGNORE_INDEX
    # movedim is a view; the boolean index copies only the M labelled rows (scribbles are sparse).
    return logits.movedim(1, -1)[labelled], target[labelled]


def partial_cross_entropy(logits: Tensor, target: Tensor, *, class_weights: Tensor | None = None) -> Tensor:
    """Cross-entropy averaged over the labelled voxels only.

    Parameters
    ----------
    logits : (B, K, *S) Tensor
        Raw network output, floating point (any precision; computed in float32 or better).
    target : (B, *S) Tensor
        Integer class per voxel in ``[0, K)``, or :data:`IGNORE_INDEX` for unlabelled voxels.
    class_weights : (K,) Tensor, optional
        Non-negative weight per class. The result is then the weighted mean
        ``sum_i w[t_i] * ce_i / sum_i w[t_i]`` over labelled voxels ``i``.

    Returns
    -------
    loss : () Tensor
        The mean (weighted mean) cross-entropy over labelled voxels. With no labelled voxel,
        ``logits.sum() * 0.0``: a zero that keeps the autograd graph, so ``backward`` still works.

    Raises
    ------
    ValueError
        If shapes or dtypes do not fit, a target value is out of range, or ``class_weights`` is not
        a non-negative (K,) vector.
    """
    _check_logits_target(logits, target)
    num_classes = logits.shape[1]
    if class_weights is not None:
        if class_weights.shape != (num_classes,):
            raise ValueError(
                f"class_weights must have shape ({num_classes},), got {tuple(class_weights.shape)}"
            )
        if bool((class_weights < 0).any()):
            raise ValueError("class_weights must be non-negative")
    selected_logits, selected_target = _labelled_logits(logits, target)
    if selected_target.numel() == 0:
        return logits.sum() * 0.0
    compute_dtype = torch.promote_types(selected_logits.dtype, torch.float32)
    per_voxel = F.cross_entropy(selected_logits.to(compute_dtype), selected_target, reduction="none")
    if class_weights is None:
        return per_voxel.mean()
    voxel_weights = class_weights.to(device=per_voxel.device, dtype=compute_dtype)[selected_target]
    # clamp: if every labelled voxel has weight 0 the numerator is 0 too, and the loss is 0, not NaN.
    return (voxel_weights * per_voxel).sum() / voxel_weights.sum().clamp_min(torch.finfo(compute_dtype).tiny)


def partial_dice_loss(logits: Tensor, target: Tensor, *, smooth: float = 1e-5) -> Tensor:
    """Soft Dice loss of the softmax probabilities on the labelled voxels only.

    The softmax is applied to the logits first; Dice is then computed over the labelled voxels
    of the whole batch (unlabelled voxels are excluded from the intersection and from both
    denominators) for each class present among them, and ``1 - Dice`` is averaged over those
    classes. Absent classes are left out: on sparse scribbles their only correct "prediction" is
    zero everywhere, which the cross-entropy already asks for.

    Parameters
    ----------
    logits : (B, K, *S) Tensor
        Raw network output, floating point.
    target : (B, *S) Tensor
        Integer class per voxel in ``[0, K)``, or :data:`IGNORE_INDEX` for unlabelled voxels.
    smooth : float
        Added to numerator and denominator of each class's Dice, ``(2 I + smooth) / (P + G + smooth)``.

    Returns
    -------
    loss : () Tensor
        Mean of ``1 - Dice_k`` over the classes present in the labelled voxels; a graph-keeping zero
        (``logits.sum() * 0.0``) when no voxel is labelled.

    Raises
    ------
    ValueError
        If shapes or dtypes do not fit, a target value is out of range, or ``smooth`` is negative.
    """
    if not smooth >= 0.0:
        raise ValueError(f"smooth must be >= 0, got {smooth!r}")
    _check_logits_target(logits, target)
    num_classes = logits.shape[1]
    selected_logits, selected_target = _labelled_logits(logits, target)
    if selected_target.numel() == 0:
        return logits.sum() * 0.0
    compute_dtype = torch.promote_types(selected_logits.dtype, torch.float32)
    probs = torch.softmax(selected_logits.to(compute_dtype), dim=1)  # (M, K)
    one_hot = F.one_hot(selected_target, num_classes).to(compute_dtype)  # (M, K)
    intersection = (probs * one_hot).sum(dim=0)
    denominator = probs.sum(dim=0) + one_hot.sum(dim=0)
    dice = (2.0 * intersection + smooth) / (denominator + smooth)
    present = one_hot.sum(dim=0) > 0
    return (1.0 - dice)[present].mean()


def teacher_cross_entropy(
    logits: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy towards a teacher's soft labels on unlabelled voxels, weighted by its confidence.

    Parameters
    ----------
    logits : (B, K, *S) Tensor
    teacher : (B, K, *S) Tensor
        Teacher probabilities (all 0 where it has none).
    target : (B, *S) int64 Tensor
        ``IGNORE_INDEX`` where unlabelled: only those voxels count (labelled ones have pCE).
    valid : (B, *S) bool Tensor
        False on padding.

    Returns
    -------
    Tensor
        Scalar: ``sum_v w_v * CE(teacher_v, softmax(logits)_v) / sum_v w_v`` with the confidence
        ``w_v = (max_k teacher_vk - 1/K) / (1 - 1/K)`` (0 for a uniform or missing teacher); 0 when
        no voxel has weight.
    """
    num_classes = logits.shape[1]
    confidence = (teacher.amax(dim=1) - 1.0 / num_classes) / (1.0 - 1.0 / num_classes)
    weight = confidence.clamp_min(0.0) * ((target == IGNORE_INDEX) & valid)
    cross_entropy = -(teacher * torch.log_softmax(logits, dim=1)).sum(dim=1)
    return (weight * cross_entropy).sum() / weight.sum().clamp_min(1.0)
