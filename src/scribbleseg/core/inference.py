"""Prediction on in-memory regions: live previews and sliding-window prediction.

Both read only the requested region (plus a halo) from the
:class:`~scribbleseg.core.volume.ImageSource`; voxels beyond the image are
filled by reflection, the same way the patch sampler fills them in training.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from scribbleseg.core.models import DOWNSAMPLING, ScribbleNet
from scribbleseg.core.volume import ImageSource

__all__ = [
    "autocast_context",
    "default_roi_size",
    "predict_probabilities",
    "predict_region",
    "probabilities_to_labels",
    "resolve_device",
]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; ``"cuda"`` without CUDA raises ``ValueError``."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but no CUDA GPU is available; use --device cpu")
    return torch.device(device)


def autocast_context(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager[None]:
    """Mixed precision on CUDA (bf16 where supported, else fp16); a no-op on CPU."""
    if not enabled or device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def default_roi_size(spatial_shape: Sequence[int]) -> tuple[int, ...]:
    """Sliding-window size: 256² in 2D, 96³ in 3D, shrunk to cover small images."""
    target = 256 if len(spatial_shape) == 2 else 96
    return tuple(min(target, _round_up(s, DOWNSAMPLING)) for s in spatial_shape)


def _round_up(value: int, multiple: int) -> int:
    return max(multiple, -(-int(value) // multiple) * multiple)


def _grow(region: Sequence[slice], halo: Sequence[int], minimum: Sequence[int]) -> tuple[slice, ...]:
    """Region plus ``halo`` on each side, grown further to at least ``minimum`` and a multiple of 16."""
    grown = []
    for s, h, m in zip(region, halo, minimum, strict=True):
        size = (s.stop - s.start) + 2 * h
        total = _round_up(max(size, m), DOWNSAMPLING)
        extra = total - (s.stop - s.start)
        before = extra // 2
        grown.append(slice(s.start - before, s.stop + (extra - before)))
    return tuple(grown)


def _full_region(source: ImageSource) -> tuple[slice, ...]:
    return tuple(slice(0, s) for s in source.spatial_shape)


def _flips(spatial_dims: int, tta: bool) -> Iterator[tuple[int, ...]]:
    yield ()
    if tta:
        for axis in range(spatial_dims):
            yield (axis + 2,)


@torch.no_grad()
def predict_probabilities(
    model: ScribbleNet,
    source: ImageSource,
    *,
    region: Sequence[slice] | None = None,
    roi_size: Sequence[int] | None = None,
    overlap: float = 0.25,
    batch_size: int = 4,
    halo: int = 16,
    device: str | torch.device = "auto",
    amp: bool = True,
    tta: bool = False,
    progress: Callable[[float], None] | None = None,
) -> np.ndarray:
    """Class probabilities of a region by Gaussian-blended sliding windows.

    Parameters
    ----------
    model : ScribbleNet
        Put in eval mode here.
    source : ImageSource
    region : tuple of slice, optional
        Spatial region (within the image); default the whole image, which must
        then fit in memory (use blockwise prediction for larger images).
    roi_size : tuple of int, optional
        Window size (multiples of 16); default :func:`default_roi_size`.
    overlap : float
        Window overlap fraction.
    batch_size : int
        Windows per forward pass.
    halo : int
        Voxels of context read around the region on each side.
    device : str or torch.device
    amp : bool
        Mixed precision on CUDA.
    tta : bool
        Average over flips along each spatial axis (test-time augmentation).
    progress : callable, optional
        Called with the fraction done (0..1) after each flip pass.

    Returns
    -------
    (K, *region) float32 ndarray
    """
    dev = resolve_device(device)
    region = tuple(region) if region is not None else _full_region(source)
    shape = tuple(s.stop - s.start for s in region)
    roi = tuple(roi_size) if roi_size is not None else default_roi_size(shape)
    if any(r % DOWNSAMPLING for r in roi):
        raise ValueError(f"roi_size {roi} must be multiples of {DOWNSAMPLING}")
    read_region = _grow(region, [halo] * len(region), roi)
    image = torch.from_numpy(source.read(read_region))[None].to(dev)
    model = model.to(dev).eval()

    def predictor(window: torch.Tensor) -> torch.Tensor:
        with autocast_context(dev, amp):
            logits = model(window).logits
        return torch.softmax(logits.float(), dim=1)

    flips = list(_flips(source.spatial_dims, tta))
    total = None
    for i, dims in enumerate(flips):
        inputs = torch.flip(image, dims) if dims else image
        probs = sliding_window_inference(
            inputs, roi, batch_size, predictor, overlap=overlap, mode="gaussian", sw_device=dev, device=dev
        )
        if dims:
            probs = torch.flip(probs, dims)
        total = probs if total is None else total + probs
        if progress is not None:
            progress((i + 1) / len(flips))
    assert total is not None
    total = total[0] / len(flips)
    crop = tuple(slice(s.start - r.start, s.stop - r.start) for s, r in zip(region, read_region, strict=True))
    return total[(slice(None), *crop)].float().cpu().numpy()


@torch.no_grad()
def predict_region(
    model: ScribbleNet,
    source: ImageSource,
    region: Sequence[slice],
    *,
    halo: int | Sequence[int] = 16,
    device: str | torch.device = "auto",
    amp: bool = True,
) -> np.ndarray:
    """Probabilities of one small region in a single forward pass (live preview).

    The region (clipped to the image) plus ``halo`` (voxels on each side, one
    value or one per axis) is read, padded to a multiple of 16, run through the
    network once, and cropped back.

    Returns
    -------
    (K, *region) float32 ndarray
    """
    dev = resolve_device(device)
    region = tuple(
        slice(max(0, s.start or 0), min(n, s.stop if s.stop is not None else n))
        for s, n in zip(region, source.spatial_shape, strict=True)
    )
    halos = [halo] * len(region) if isinstance(halo, int) else list(halo)
    read_region = _grow(region, halos, [0] * len(region))
    image = torch.from_numpy(source.read(read_region))[None].to(dev)
    was_training = model.training
    model.eval()
    try:
        with autocast_context(dev, amp):
            logits = model(image).logits
        probs = torch.softmax(logits.float(), dim=1)[0]
    finally:
        model.train(was_training)
    crop = tuple(slice(s.start - r.start, s.stop - r.start) for s, r in zip(region, read_region, strict=True))
    return probs[(slice(None), *crop)].cpu().numpy()


def probabilities_to_labels(probabilities: np.ndarray, class_values: Sequence[int]) -> np.ndarray:
    """Arg-max over classes, mapped to the user's class values.

    Parameters
    ----------
    probabilities : (K, *S) ndarray
    class_values : sequence of K int

    Returns
    -------
    ndarray of shape S
        In the smallest unsigned dtype that holds the values.
    """
    values = np.asarray(class_values)
    if len(values) != probabilities.shape[0]:
        raise ValueError(f"{len(values)} class values for {probabilities.shape[0]} probability channels")
    dtype = np.min_scalar_type(int(values.max()))
    return values.astype(dtype)[np.argmax(probabilities, axis=0)]
