"""Supervised local contrastive loss on the labelled voxels of each patch.

SupCon (Khosla et al., NeurIPS 2020) restricted to one patch at a time, as in the
local variant of Hu et al. (MICCAI 2021): anchors, positives and negatives are all
labelled voxels of the same batch item. The number of voxels per item is bounded by
class-balanced sampling, so memory is O(max_samples²) whatever the scribble size.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor

from scribbleseg.core.losses.partial import IGNORE_INDEX

__all__ = ["balanced_sample", "supervised_contrastive_loss"]


def balanced_sample(
    voxel_classes: Tensor, max_samples: int, generator: torch.Generator | None
) -> tuple[Tensor, Tensor] | None:
    """Pick at most ``max_samples`` positions of ``voxel_classes`` (M,), an equal share per class.

    Returns the chosen positions and their classes, or ``None`` when fewer than two classes
    are present.
    """
    counts = torch.bincount(voxel_classes)
    num_present = int((counts > 0).sum())
    if num_present < 2:
        return None
    # With more classes than max_samples each class still gets one voxel (a few more than asked).
    share = max(max_samples // num_present, 1)
    num_voxels = voxel_classes.numel()
    # A random permutation, then a stable sort by class, orders the voxels by class and at random
    # within a class; the first `share` of each class are a uniform sample without replacement.
    generator_device = generator.device if generator is not None else voxel_classes.device
    shuffle = torch.randperm(num_voxels, generator=generator, device=generator_device).to(
        voxel_classes.device
    )
    sorted_classes, order = torch.sort(voxel_classes[shuffle], stable=True)
    positions = shuffle[order]
    class_start = torch.cumsum(counts, dim=0) - counts
    rank_in_class = torch.arange(num_voxels, device=voxel_classes.device) - class_start[sorted_classes]
    keep = rank_in_class < share
    return positions[keep], sorted_classes[keep]


def supervised_contrastive_loss(
    embeddings: Tensor,
    target: Tensor,
    *,
    temperature: float = 0.1,
    max_samples: int = 1024,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Supervised contrastive loss among the labelled voxels of each batch item.

    For every sampled labelled voxel ``i`` (anchor) of a patch with positives ``P(i)`` (other
    sampled voxels of its class) and all other sampled voxels ``A(i)``::

        l_i = -1/|P(i)| * sum_{p in P(i)} log( exp(z_i·z_p / T) / sum_{a in A(i)} exp(z_i·z_a / T) )

    with ``z`` the L2-normalised embeddings. The loss is the mean of ``l_i`` over all anchors of
    all items that have at least one positive. An item with fewer than two classes (or fewer than
    two sampled voxels) contributes nothing.

    Parameters
    ----------
    embeddings : (B, E, *S) Tensor
        Raw projection-head output; normalised over ``E`` here. Any float dtype; the loss is
        computed in float32 (float64 if given float64), also under autocast.
    target : (B, *S) Tensor
        Integer class per voxel in ``[0, K)``, or :data:`~scribbleseg.core.losses.partial.IGNORE_INDEX`.
    temperature : float
        Softmax temperature ``T > 0``.
    max_samples : int
        Labelled voxels sampled per batch item, split equally between the classes present there
        (a class with fewer voxels contributes all of them, the rest is not redistributed).
        Memory and time grow with its square.
    generator : torch.Generator, optional
        Source of randomness of the sampling, for reproducible runs.

    Returns
    -------
    loss : () Tensor
        The mean anchor loss; ``embeddings.sum() * 0.0`` (a zero that keeps the graph) when no
        anchor has a positive.

    Raises
    ------
    ValueError
        If shapes do not fit, ``temperature <= 0`` or ``max_samples < 2``.
    """
    if embeddings.ndim < 3 or not embeddings.is_floating_point():
        raise ValueError(
            "embeddings must be a float tensor of shape (B, E, *S), "
            f"got {tuple(embeddings.shape)} {embeddings.dtype}"
        )
    if target.shape != embeddings.shape[:1] + embeddings.shape[2:]:
        raise ValueError(
            f"target must have shape (B, *S) = {tuple(embeddings.shape[:1] + embeddings.shape[2:])} to match "
            f"embeddings {tuple(embeddings.shape)}, got {tuple(target.shape)}"
        )
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(f"target must be an integer tensor, got {target.dtype}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if int(max_samples) != max_samples or max_samples < 2:
        raise ValueError(f"max_samples must be an integer >= 2, got {max_samples!r}")
    if bool((target < IGNORE_INDEX).any()):
        raise ValueError(f"target values must be >= 0 or equal IGNORE_INDEX ({IGNORE_INDEX})")

    compute_dtype = torch.promote_types(embeddings.dtype, torch.float32)
    device_type = embeddings.device.type
    autocast_off = (
        torch.autocast(device_type=device_type, enabled=False)
        if torch.amp.is_autocast_available(device_type)
        else contextlib.nullcontext()
    )
    total = embeddings.new_zeros((), dtype=compute_dtype)
    num_anchors = 0
    # Autocast would run the similarity matmul in half precision, where exp(sim / 0.1) overflows.
    with autocast_off:
        flat_embeddings = embeddings.flatten(2)  # (B, E, N)
        flat_target = target.flatten(1)  # (B, N)
        for item in range(embeddings.shape[0]):
            labelled_positions = (flat_target[item] != IGNORE_INDEX).nonzero().squeeze(1)
            if labelled_positions.numel() < 2:
                continue
            sample = balanced_sample(flat_target[item, labelled_positions], int(max_samples), generator)
            if sample is None:
                continue
            chosen, classes = sample
            z = flat_embeddings[item][:, labelled_positions[chosen]].t().to(compute_dtype)  # (n, E)
            z = F.normalize(z, dim=1)
            similarity = (z @ z.t()) / temperature  # (n, n)
            # Subtracting the (detached) row maximum changes nothing mathematically but keeps exp finite.
            similarity = similarity - similarity.amax(dim=1, keepdim=True).detach()
            is_self = torch.eye(len(classes), dtype=torch.bool, device=z.device)
            log_denominator = torch.logsumexp(
                similarity.masked_fill(is_self, float("-inf")), dim=1, keepdim=True
            )
            log_prob = similarity - log_denominator
            positive = (classes[:, None] == classes[None, :]) & ~is_self
            num_positives = positive.sum(dim=1)
            has_positive = num_positives > 0
            # where (not multiply): log_prob on the diagonal must not leak into the sum.
            anchor_loss = -torch.where(positive, log_prob, 0.0).sum(dim=1) / num_positives.clamp_min(1)
            total = total + anchor_loss[has_positive].sum()
            num_anchors += int(has_positive.sum())
    if num_anchors == 0:
        return embeddings.sum() * 0.0
    return total / num_anchors
