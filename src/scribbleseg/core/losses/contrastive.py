"""Supervised local contrastive loss on the labelled voxels of each patch.

SupCon (Khosla et al., NeurIPS 2020) restricted to one patch at a time, as in the
local variant of Hu et al. (MICCAI 2021): anchors, positives and negatives are all
labelled voxels of the same batch item. The number of voxels per item is bounded by
class-balanced sampling, so memory is O(max_samples²) whatever the scribble size.

The sampling (:func:`sample_labelled`) and the loss on the samples
(:func:`sampled_contrastive_loss`) are separate so that training can draw the sample on the CPU
from the CPU copy of the target and compute the loss for the whole batch at once on the device,
without a device-to-host wait or a kernel launch per batch item.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor

from scribbleseg.core.losses.partial import IGNORE_INDEX

__all__ = [
    "balanced_sample",
    "gather_samples",
    "sample_labelled",
    "sampled_contrastive_loss",
    "supervised_contrastive_loss",
]


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


def sample_labelled(
    target: Tensor, max_samples: int, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Class-balanced samples of the labelled voxels of each batch item.

    Parameters
    ----------
    target : (B, N) Tensor
        Integer class per voxel, or :data:`~scribbleseg.core.losses.partial.IGNORE_INDEX`.
    max_samples : int
        Voxels per item, an equal share per class (see :func:`balanced_sample`).
    generator : torch.Generator, optional
        Source of randomness; it must live on ``target``'s device.

    Returns
    -------
    positions : (B, n) Tensor
        Flat voxel indices of the samples (0 in the padding).
    classes : (B, n) Tensor
        Their classes; ``IGNORE_INDEX`` in the padding. An item with fewer than two classes among
        its labelled voxels gets no sample (all padding). ``n >= 1``.
    """
    chosen: list[tuple[Tensor, Tensor]] = []
    for item in range(target.shape[0]):
        labelled = (target[item] != IGNORE_INDEX).nonzero().squeeze(1)
        sample = None
        if labelled.numel() >= 2:
            sample = balanced_sample(target[item, labelled], max_samples, generator)
        if sample is None:
            chosen.append((labelled[:0], labelled[:0]))
        else:
            chosen.append((labelled[sample[0]], sample[1]))
    n = max([1, *(len(p) for p, _ in chosen)])
    positions = torch.zeros((target.shape[0], n), dtype=torch.long, device=target.device)
    classes = torch.full((target.shape[0], n), IGNORE_INDEX, dtype=target.dtype, device=target.device)
    for item, (item_positions, item_classes) in enumerate(chosen):
        positions[item, : len(item_positions)] = item_positions
        classes[item, : len(item_classes)] = item_classes
    return positions, classes


def gather_samples(values: Tensor, positions: Tensor) -> Tensor:
    """Return ``values`` (B, C, *S) at the flat voxel ``positions`` (B, n) of each item: (B, C, n)."""
    flat = values.flatten(2)
    return torch.gather(flat, 2, positions[:, None].expand(-1, flat.shape[1], -1))


def sampled_contrastive_loss(embeddings: Tensor, target: Tensor, *, temperature: float = 0.1) -> Tensor:
    """Compute the supervised contrastive loss among given samples, all batch items at once.

    Parameters
    ----------
    embeddings : (B, E, n) Tensor
        Raw projection-head output of the samples; normalised over ``E`` here.
    target : (B, n) Tensor
        Their classes; ``IGNORE_INDEX`` marks padding, which is neither anchor, positive nor
        negative.
    temperature : float
        Softmax temperature ``T > 0``.

    Returns
    -------
    loss : () Tensor
        The mean anchor loss of :func:`supervised_contrastive_loss` over the samples; a zero that
        keeps the graph when no anchor has a positive. Nothing here waits for the device.

    Raises
    ------
    ValueError
        If ``temperature <= 0``.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    compute_dtype = torch.promote_types(embeddings.dtype, torch.float32)
    device_type = embeddings.device.type
    autocast_off = (
        torch.autocast(device_type=device_type, enabled=False)
        if torch.amp.is_autocast_available(device_type)
        else contextlib.nullcontext()
    )
    # Autocast would run the similarity matmul in half precision, where exp(sim / 0.1) overflows.
    with autocast_off:
        z = F.normalize(embeddings.to(compute_dtype), dim=1)  # (B, E, n)
        # z·z <= 1 with equality for a voxel with itself: subtracting 1 keeps exp() finite, and
        # (as any constant per row) changes nothing else.
        similarity = (z.transpose(1, 2) @ z - 1.0) / temperature  # (B, n, n)
        labelled = target != IGNORE_INDEX
        not_self = ~torch.eye(target.shape[1], dtype=torch.bool, device=target.device)
        pair = labelled[:, :, None] & labelled[:, None, :] & not_self
        # A finite fill (exp() of it is 0): a row without pairs keeps a finite log-sum-exp, whose
        # gradient would otherwise be NaN.
        log_denominator = torch.logsumexp(similarity.masked_fill(~pair, -1.0e4), dim=2, keepdim=True)
        log_prob = similarity - log_denominator
        positive = pair & (target[:, :, None] == target[:, None, :])
        num_positives = positive.sum(dim=2)
        # where (not multiply): log_prob outside the positives must not leak into the sum.
        anchor_loss = -torch.where(positive, log_prob, 0.0).sum(dim=2) / num_positives.clamp_min(1)
        has_positive = num_positives > 0
        total = torch.where(has_positive, anchor_loss, 0.0).sum()
        return total / has_positive.sum().clamp_min(1)


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
        The mean anchor loss; a zero that keeps the graph when no anchor has a positive.

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

    flat_target = target.flatten(1)
    positions, classes = sample_labelled(flat_target, int(max_samples), generator)
    return sampled_contrastive_loss(gather_samples(embeddings, positions), classes, temperature=temperature)
