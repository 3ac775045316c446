"""Dense-CRF (Potts relaxation) regularisation loss over a local window.

The loss of Tang et al. (ECCV 2018, "On regularized losses for weakly-supervised CNN
segmentation"), restricted to a local window as in the gated CRF loss (Obukhov et al.,
2019), optionally with a second kernel on the network's own features (dynamic feature
regularisation, Zhang et al., 2021)::

    loss = 1 / (B N) * sum_b sum_k sum_{x != y} W_xy S_k(x) (1 - S_k(y))

    W_xy = exp(-|I_x - I_y|² / (2 σ_i²) - |(x - y) * spacing|² / (2 σ_s²))
           [* exp(-|f_x - f_y|² / (2 σ_f²))]

for voxel pairs with ``|x_i - y_i| <= window_radius_i`` on every axis, both inside the
array (no wrap-around, no padding), ``N = prod(S)`` and ``f`` the detached, L2-normalised
features.

Offsets whose spatial weight ``exp(-|o * spacing|² / (2 σ_s²))`` is below
:data:`SPATIAL_WEIGHT_CUTOFF` are left out: they cannot contribute more than that
fraction of a neighbour's weight, and with anisotropic spacing they are the far corners
of the window, which would otherwise cost as much time as the near offsets. Both
implementations below apply the same rule, so they agree up to rounding.

:func:`crf_loss` never materialises the window: memory is O((K + C + F) × N) whatever
its size. :func:`crf_loss_unfold` is the naive reference that does (O(window × K × N)).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

__all__ = [
    "SPATIAL_WEIGHT_CUTOFF",
    "crf_loss",
    "crf_loss_unfold",
    "effective_window_radius",
    "spatial_kernel_sum",
    "window_message",
]

#: Offsets whose spatial Gaussian weight is below this value are skipped (see the module docstring).
SPATIAL_WEIGHT_CUTOFF: float = 1e-4

# One pair region: (source index, destination index, spatial weight); the destination voxel of a
# source voxel x is x + offset. Indices include the leading (batch, channel) slices.
_PairRegion = tuple[tuple[slice, ...], tuple[slice, ...], float]


def _check_positive(value: Any, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {value!r}") from None
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return number


def _check_companion(tensor: Tensor, name: str, probs: Tensor) -> None:
    """Check that ``tensor`` is (B, ·, *S) like ``probs``, on the same device."""
    if not isinstance(tensor, Tensor) or tensor.ndim != probs.ndim:
        shape = tuple(tensor.shape) if isinstance(tensor, Tensor) else type(tensor).__name__
        raise ValueError(
            f"{name} must be a tensor of shape (B, {name[0].upper()}, *S) like probs, got {shape}"
        )
    if tensor.shape[0] != probs.shape[0] or tensor.shape[2:] != probs.shape[2:]:
        raise ValueError(
            f"{name} must have batch size and spatial shape {(probs.shape[0], *probs.shape[2:])} of probs, "
            f"got shape {tuple(tensor.shape)}"
        )
    if not tensor.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {tensor.dtype}")
    if tensor.device != probs.device:
        raise ValueError(f"{name} is on {tensor.device} but probs on {probs.device}")


def _check_arguments(
    probs: Tensor,
    image: Tensor,
    spacing: Sequence[float],
    sigma_spatial: float,
    sigma_intensity: float,
    window_radius: Sequence[int],
    features: Tensor | None,
    sigma_features: float | None,
    mask: Tensor | None,
) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """Validate the arguments of the CRF losses; return ``spacing`` and ``window_radius`` as tuples."""
    if not isinstance(probs, Tensor) or probs.ndim not in (4, 5) or not probs.is_floating_point():
        shape = tuple(probs.shape) if isinstance(probs, Tensor) else type(probs).__name__
        raise ValueError(
            f"probs must be a float tensor of shape (B, K, Y, X) or (B, K, Z, Y, X), got {shape}"
        )
    spatial_dims = probs.ndim - 2
    _check_companion(image, "image", probs)
    if len(spacing) != spatial_dims:
        raise ValueError(
            f"spacing must have {spatial_dims} values (one per spatial axis), got {tuple(spacing)}"
        )
    spacing_tuple = tuple(_check_positive(s, "spacing") for s in spacing)
    if len(window_radius) != spatial_dims:
        raise ValueError(
            f"window_radius must have {spatial_dims} values (one per spatial axis), "
            f"got {tuple(window_radius)}"
        )
    if not all(int(r) == r and r >= 0 for r in window_radius):
        raise ValueError(f"window_radius must be non-negative integers, got {tuple(window_radius)}")
    radius_tuple = tuple(int(r) for r in window_radius)
    _check_positive(sigma_spatial, "sigma_spatial")
    _check_positive(sigma_intensity, "sigma_intensity")
    if features is not None:
        _check_companion(features, "features", probs)
        if sigma_features is None:
            raise ValueError("sigma_features must be given when features is given")
        _check_positive(sigma_features, "sigma_features")
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor, got {getattr(mask, 'dtype', type(mask).__name__)}")
        if mask.shape != probs.shape[:1] + probs.shape[2:]:
            raise ValueError(
                f"mask must have shape (B, *S) = {tuple(probs.shape[:1] + probs.shape[2:])}, "
                f"got {tuple(mask.shape)}"
            )
        if mask.device != probs.device:
            raise ValueError(f"mask is on {mask.device} but probs on {probs.device}")
    return spacing_tuple, radius_tuple


def _compute_dtype(probs: Tensor) -> torch.dtype:
    # Half precision cannot hold the sums over the window (nor exp of the kernel exponent) accurately.
    return torch.promote_types(probs.dtype, torch.float32)


def _guide(
    image: Tensor,
    features: Tensor | None,
    sigma_intensity: float,
    sigma_features: float | None,
    dtype: torch.dtype,
) -> Tensor:
    """Stack image and features, scaled so that ``|g_x - g_y|²`` is the kernel's exponent.

    Returns a new contiguous (B, C [+ F], *S) tensor of ``dtype``, without autograd history.
    Written in place into one allocation, so the features cost one (F, N) copy, not three.
    """
    channels = image.shape[1]
    feature_channels = features.shape[1] if features is not None else 0
    guide = torch.empty(
        (image.shape[0], channels + feature_channels, *image.shape[2:]), dtype=dtype, device=image.device
    )
    image_part = guide[:, :channels]
    image_part.copy_(image.detach())
    image_part.mul_(1.0 / (math.sqrt(2.0) * float(sigma_intensity)))
    if features is not None:
        assert sigma_features is not None  # checked by _check_arguments
        feature_part = guide[:, channels:]
        feature_part.copy_(features.detach())
        # L2 normalisation over F as F.normalize does (norm clamped at 1e-12), fused with the scaling.
        norms = torch.linalg.vector_norm(feature_part, dim=1, keepdim=True).clamp_min_(1e-12)
        feature_part.div_(norms.mul_(math.sqrt(2.0) * float(sigma_features)))
    return guide


def _spatial_weight(offset: Sequence[int], spacing: Sequence[float], sigma_spatial: float) -> float:
    squared_distance = sum((o * s) ** 2 for o, s in zip(offset, spacing, strict=True))
    return math.exp(-squared_distance / (2.0 * float(sigma_spatial) ** 2))


def spatial_kernel_sum(
    *, spacing: Sequence[float], sigma_spatial: float, window_radius: Sequence[int]
) -> float:
    """Sum of the spatial weights of the window's offsets (the centre and cut-off offsets excluded).

    It is the largest degree a voxel can have (all intensities equal). Dividing the CRF loss by it
    makes a loss weight mean the same in 2D and 3D and for any window or spacing.
    """
    total = 0.0
    for offset in itertools.product(*(range(-r, r + 1) for r in window_radius)):
        if any(offset):
            weight = _spatial_weight(offset, spacing, sigma_spatial)
            if weight >= SPATIAL_WEIGHT_CUTOFF:
                total += weight
    return total


def effective_window_radius(
    *, spacing: Sequence[float], sigma_spatial: float, window_radius: Sequence[int]
) -> tuple[int, ...]:
    """Return the window radius per axis that is left once the cut-off offsets are dropped.

    A value at a voxel depends on no voxel farther away than this along each axis (the halo one
    pass of the window needs).
    """
    reach = [0] * len(window_radius)
    for offset in itertools.product(*(range(-r, r + 1) for r in window_radius)):
        if any(offset) and _spatial_weight(offset, spacing, sigma_spatial) >= SPATIAL_WEIGHT_CUTOFF:
            reach = [max(r, abs(o)) for r, o in zip(reach, offset, strict=True)]
    return tuple(reach)


def _half_window_regions(
    shape: Sequence[int], spacing: Sequence[float], sigma_spatial: float, window_radius: Sequence[int]
) -> list[_PairRegion]:
    """Overlapping regions for the offsets of one half of the window.

    Only offsets that are lexicographically positive are listed (``W_xy = W_yx`` covers the other
    half); offsets that do not fit into ``shape`` or whose spatial weight is below
    :data:`SPATIAL_WEIGHT_CUTOFF` are left out.
    """
    zero = (0,) * len(shape)
    regions: list[_PairRegion] = []
    for offset in itertools.product(*(range(-r, r + 1) for r in window_radius)):
        if offset <= zero:  # the centre and the mirrored half
            continue
        if any(abs(o) >= n for o, n in zip(offset, shape, strict=True)):
            continue  # no pair of voxels inside the array is this far apart
        weight = _spatial_weight(offset, spacing, sigma_spatial)
        if weight < SPATIAL_WEIGHT_CUTOFF:
            continue
        source = tuple(
            slice(0, n - o) if o >= 0 else slice(-o, n) for o, n in zip(offset, shape, strict=True)
        )
        destination = tuple(
            slice(o, n) if o >= 0 else slice(0, n + o) for o, n in zip(offset, shape, strict=True)
        )
        regions.append((source, destination, weight))
    return regions


def _window_products(
    probs: Tensor,
    guide: Tensor,
    pair_mask: Tensor | None,
    regions: list[_PairRegion],
    *,
    per_channel: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """Return ``W S`` (B, K, *S) and the degree ``W 1`` (B, *S) by looping over half the offsets.

    ``probs`` (B, K, *S) and ``guide`` (B, G, *S) are of the compute dtype; ``pair_mask`` (B, *S)
    is 1 where a voxel takes part in pairs, 0 elsewhere. With the mask, ``W`` means
    ``m_x W_xy m_y``. ``per_channel``: build each offset's kernel exponent one guide channel at a
    time (two operations per channel, an N-sized buffer: the faster way on a CPU) or from one
    (G, N) difference (four operations whatever G, a (G, N) buffer: on a GPU, where a step of the
    dynamic CRF is bound by the number of kernel launches, not by arithmetic). Default: per
    channel on a CPU only.
    """
    if per_channel is None:
        per_channel = probs.device.type == "cpu"
    batch, num_classes = probs.shape[:2]
    num_guide = guide.shape[1]
    # S is extended by a channel of ones, so that its product with W is the degree: one multiply-add
    # per offset and direction serves both. The mask m_y is folded into these (K + 1) channels, and
    # m_x is applied once after the loop, instead of twice per offset.
    extended = probs.new_empty((batch, num_classes + 1, *probs.shape[2:]))
    extended[:, :num_classes] = probs
    extended[:, num_classes] = 1.0
    if pair_mask is not None:
        extended.mul_(pair_mask.unsqueeze(1))
    weighted = torch.zeros_like(extended)
    # Reused for every offset (each takes a view of the first elements it needs): the loop allocates
    # nothing, and every operation in it is in place.
    weight_buffer = probs.new_empty(math.prod(probs.shape[:1] + probs.shape[2:]))
    one_difference = num_guide > 1 and not per_channel
    if one_difference:  # one (B, G, region) difference
        buffer_size = guide.numel()
    elif num_guide > 1:  # one channel's difference at a time
        buffer_size = weight_buffer.numel()
    else:  # a single channel needs none
        buffer_size = 0
    difference_buffer = guide.new_empty(buffer_size)
    zero = probs.new_zeros(())
    every = slice(None)
    for source, destination, spatial_weight in regions:
        region_shape = tuple(s.stop - s.start for s in source)
        weight = weight_buffer[: batch * math.prod(region_shape)].view(batch, *region_shape)
        # weight = exp(-sum_c (g_c(x) - g_c(x + o))²)
        if one_difference:
            difference = difference_buffer[: num_guide * weight.numel()].view(batch, num_guide, *region_shape)
            torch.sub(guide[(every, every, *source)], guide[(every, every, *destination)], out=difference)
            torch.sum(difference.square_(), dim=1, out=weight)
            weight.neg_()
        else:  # one channel at a time, with N-sized buffers
            torch.sub(guide[(every, 0, *source)], guide[(every, 0, *destination)], out=weight)
            torch.addcmul(zero, weight, weight, value=-1.0, out=weight)
            difference = difference_buffer[: weight.numel()].view_as(weight) if num_guide > 1 else weight
            for channel in range(1, num_guide):
                torch.sub(
                    guide[(every, channel, *source)], guide[(every, channel, *destination)], out=difference
                )
                weight.addcmul_(difference, difference, value=-1.0)
        weight.exp_()
        # The spatial Gaussian is one number per offset: applied as the `value` scalar. W is
        # symmetric, so the offset adds W S(x + o) at x and W S(x) at x + o.
        weight_per_class = weight.unsqueeze(1)
        weighted[(every, every, *source)].addcmul_(
            extended[(every, every, *destination)], weight_per_class, value=spatial_weight
        )
        weighted[(every, every, *destination)].addcmul_(
            extended[(every, every, *source)], weight_per_class, value=spatial_weight
        )
    if pair_mask is not None:
        weighted.mul_(pair_mask.unsqueeze(1))
    return weighted[:, :num_classes], weighted[:, num_classes]


class _WindowedCRF(torch.autograd.Function):
    """Dense-CRF loss with a hand-written backward; only ``W S`` and the degree are saved."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
        probs: Tensor,
        guide: Tensor,
        pair_mask: Tensor | None,
        regions: list[_PairRegion],
    ) -> Tensor:
        compute_probs = probs.detach().to(guide.dtype)
        weighted, degree = _window_products(compute_probs, guide, pair_mask, regions)
        scale = 1.0 / (probs.shape[0] * math.prod(probs.shape[2:]))
        # sum_x S_k(x) (d(x) - (W S_k)(x)), with the difference taken per voxel before summing:
        # summing S·d and S·WS separately would cancel two large totals in float32.
        per_voxel = torch.sub(degree.unsqueeze(1), weighted)
        loss = per_voxel.mul_(compute_probs).sum(dtype=torch.float64).to(guide.dtype) * scale
        del per_voxel
        ctx.save_for_backward(weighted, degree)
        ctx.scale = scale  # type: ignore[attr-defined]
        ctx.probs_dtype = probs.dtype  # type: ignore[attr-defined]
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None, None, None]:
        weighted, degree = ctx.saved_tensors
        # d/dS_k(x) = d(x) - (W S_k)(x) - (Wᵀ S_k)(x) = d(x) - 2 (W S_k)(x), since W is symmetric.
        grad = torch.add(degree.unsqueeze(1), weighted, alpha=-2.0)
        grad.mul_(grad_output.to(grad.dtype) * ctx.scale)
        return grad.to(ctx.probs_dtype), None, None, None


def _autocast_disabled(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def crf_loss(
    probs: Tensor,
    image: Tensor,
    *,
    spacing: Sequence[float],
    sigma_spatial: float,
    sigma_intensity: float,
    window_radius: Sequence[int],
    features: Tensor | None = None,
    sigma_features: float | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """Dense-CRF loss over a local window, without materialising the window.

    Loops over half of the window's offsets (``W`` is symmetric) and accumulates ``W S`` and
    the degree ``W 1`` in place; a custom autograd function then needs only those two for the
    gradient ``(d - 2 W S_k) / (B N)``. Peak memory is O((K + C + F) × N), independent of the
    window size. Computed in float32 (float64 for float64 ``probs``) also for half-precision
    ``probs`` and under autocast; the gradient is returned in ``probs``' dtype.

    Parameters
    ----------
    probs : (B, K, Y, X) or (B, K, Z, Y, X) Tensor
        Softmax probabilities. The gradient flows to them (and on through the caller's softmax).
    image : (B, C, *S) Tensor
        Normalised intensities; all channels enter the intensity kernel. No gradient.
    spacing : sequence of float
        Physical voxel size per spatial axis, ``(y, x)`` or ``(z, y, x)``.
    sigma_spatial : float
        Width of the spatial Gaussian, in the physical units of ``spacing``.
    sigma_intensity : float
        Width of the intensity Gaussian, in units of the normalised intensities.
    window_radius : sequence of int
        Window radius in voxels per spatial axis; pairs with ``|x_i - y_i| <= window_radius_i``.
    features : (B, F, *S) Tensor, optional
        Decoder features for the dynamic variant; detached and L2-normalised over ``F`` here.
    sigma_features : float, optional
        Width of the feature Gaussian; required with ``features`` (ignored without).
    mask : (B, *S) bool Tensor, optional
        Voxels where it is False (padding) take part in no pair. The normalisation stays ``B N``.

    Returns
    -------
    loss : () Tensor
        ``sum_k sum_{x,y} W_xy S_k(x) (1 - S_k(y)) / (B N)`` in the compute dtype.

    Raises
    ------
    ValueError
        If shapes, devices or dtypes do not fit, ``spacing``/``window_radius`` do not have one
        entry per spatial axis, a sigma is not positive, or ``features`` comes without
        ``sigma_features``.

    Notes
    -----
    Offsets whose spatial weight is below :data:`SPATIAL_WEIGHT_CUTOFF` (1e-4) are skipped, in
    both directions. With a ``mask`` the normalisation is still ``B N``, so padding lowers the
    loss in proportion; the pairs themselves are exactly those of the unpadded voxels.
    """
    spacing_tuple, radius_tuple = _check_arguments(
        probs, image, spacing, sigma_spatial, sigma_intensity, window_radius, features, sigma_features, mask
    )
    dtype = _compute_dtype(probs)
    with torch.no_grad():
        guide = _guide(image, features, sigma_intensity, sigma_features, dtype)
        pair_mask = mask.to(dtype) if mask is not None else None
    regions = _half_window_regions(probs.shape[2:], spacing_tuple, sigma_spatial, radius_tuple)
    with _autocast_disabled(probs.device):
        return _WindowedCRF.apply(probs, guide, pair_mask, regions)


@torch.no_grad()
def window_message(
    probs: Tensor,
    image: Tensor,
    *,
    spacing: Sequence[float],
    sigma_spatial: float,
    sigma_intensity: float,
    window_radius: Sequence[int],
) -> Tensor:
    """``Σ_y W_xy S_k(y)`` over the window of :func:`crf_loss`: the message of mean-field inference.

    Same kernel, cut-off and memory bound as :func:`crf_loss`; no gradient.

    Parameters
    ----------
    probs : (B, K, Y, X) or (B, K, Z, Y, X) Tensor
    image : (B, C, *S) Tensor
    spacing, sigma_spatial, sigma_intensity, window_radius
        As for :func:`crf_loss`.

    Returns
    -------
    (B, K, *S) Tensor
        In the compute dtype (float32, or float64 for float64 ``probs``).
    """
    spacing_tuple, radius_tuple = _check_arguments(
        probs, image, spacing, sigma_spatial, sigma_intensity, window_radius, None, None, None
    )
    dtype = _compute_dtype(probs)
    guide = _guide(image, None, sigma_intensity, None, dtype)
    regions = _half_window_regions(probs.shape[2:], spacing_tuple, sigma_spatial, radius_tuple)
    with _autocast_disabled(probs.device):
        weighted, _ = _window_products(probs.detach().to(dtype), guide, None, regions)
    return weighted


def crf_loss_unfold(
    probs: Tensor,
    image: Tensor,
    *,
    spacing: Sequence[float],
    sigma_spatial: float,
    sigma_intensity: float,
    window_radius: Sequence[int],
    features: Tensor | None = None,
    sigma_features: float | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """Naive reference of :func:`crf_loss` that materialises the window.

    Pads the probabilities and unfolds them into a window stack of shape (B, K, *S, *window),
    multiplies it by the (B, *S, *window) kernel and lets autograd differentiate everything.
    Memory is O(window × K × N) — for tests and benchmarks only. Same arguments, result and
    :data:`SPATIAL_WEIGHT_CUTOFF` rule as :func:`crf_loss`.

    Parameters
    ----------
    probs, image, spacing, sigma_spatial, sigma_intensity, window_radius, features, sigma_features, mask
        As for :func:`crf_loss`.

    Returns
    -------
    loss : () Tensor
        The same value as :func:`crf_loss`, up to rounding.
    """
    spacing_tuple, radius_tuple = _check_arguments(
        probs, image, spacing, sigma_spatial, sigma_intensity, window_radius, features, sigma_features, mask
    )
    dtype = _compute_dtype(probs)
    batch = probs.shape[0]
    spatial = tuple(probs.shape[2:])
    spatial_dims = len(spatial)
    window_dims = tuple(range(-spatial_dims, 0))
    # F.pad wants (before, after) pairs from the last axis backwards.
    padding = [r for radius in reversed(radius_tuple) for r in (radius, radius)]

    def window_stack(tensor: Tensor) -> Tensor:
        """(B, C, *S) -> (B, C, *S, *window): zero-padded, unfolded views (no copy yet)."""
        stacked = F.pad(tensor, padding)
        for axis, radius in enumerate(radius_tuple):
            stacked = stacked.unfold(2 + axis, 2 * radius + 1, 1)
        return stacked

    def at_centre(tensor: Tensor) -> Tensor:
        """(B, C, *S) -> (B, C, *S, 1, …, 1), to broadcast against a window stack."""
        return tensor.reshape(*tensor.shape, *([1] * spatial_dims))

    with torch.no_grad(), _autocast_disabled(probs.device):
        guide = _guide(image, features, sigma_intensity, sigma_features, dtype)
        offsets = torch.meshgrid(
            *(torch.arange(-r, r + 1, dtype=torch.float64) for r in radius_tuple), indexing="ij"
        )
        squared_distance = sum((o * s) ** 2 for o, s in zip(offsets, spacing_tuple, strict=True))
        spatial_kernel = torch.exp(-squared_distance / (2.0 * float(sigma_spatial) ** 2))
        spatial_kernel[spatial_kernel < SPATIAL_WEIGHT_CUTOFF] = 0.0
        spatial_kernel[radius_tuple] = 0.0  # x != y
        # Channel by channel, so only one (B, *S, *window) difference exists at a time.
        kernel_exponent = torch.zeros(
            (batch, *spatial, *spatial_kernel.shape), dtype=dtype, device=probs.device
        )
        for channel in range(guide.shape[1]):
            one_channel = guide[:, channel : channel + 1]
            difference = window_stack(one_channel)[:, 0] - at_centre(one_channel)[:, 0]
            kernel_exponent.add_(difference.square_())
            del difference
        weights = kernel_exponent.neg_().exp_()
        weights.mul_(spatial_kernel.to(device=probs.device, dtype=dtype))
        # Zero padding of `inside` removes pairs that leave the array; the mask removes padded voxels.
        inside = torch.ones((batch, 1, *spatial), dtype=dtype, device=probs.device)
        if mask is not None:
            inside.mul_(mask.unsqueeze(1).to(dtype))
        weights.mul_(window_stack(inside)[:, 0]).mul_(at_centre(inside)[:, 0])
        degree = weights.sum(dim=window_dims)

    with _autocast_disabled(probs.device):
        compute_probs = probs.to(dtype)
        # The (B, K, *S, *window) product below is the materialised window.
        weighted = (window_stack(compute_probs) * weights.unsqueeze(1)).sum(dim=window_dims)
        loss = (compute_probs * (degree.unsqueeze(1) - weighted)).sum()
        return loss / (batch * math.prod(spatial))
