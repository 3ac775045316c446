"""Prediction on in-memory regions: live previews and sliding-window prediction.

Both read only the requested region (plus a halo) from the
:class:`~scribbleseg.core.volume.ImageSource`; voxels beyond the image are
filled by reflection, the same way the patch sampler fills them in training.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch

from scribbleseg.core.models import DOWNSAMPLING, ScribbleNet
from scribbleseg.core.volume import ImageSource, clip_region

__all__ = [
    "amp_dtype",
    "autocast_context",
    "cpu_bf16_supported",
    "default_roi_size",
    "predict_probabilities",
    "predict_region",
    "prepare_input",
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


def cpu_bf16_supported() -> bool:
    """Whether this CPU runs bfloat16 convolutions natively (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without these probes: stay in float32
        return False


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """Return the mixed-precision dtype used on ``device``, or ``None`` for float32.

    CUDA: bf16 where supported, else fp16. CPU: bf16 when the CPU has native
    bf16 instructions (2.4x faster forward passes than float32 on an
    AVX512-BF16 core, see ``docs/benchmarks.md``), else float32.
    """
    if not enabled:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_bf16_supported():
        return torch.bfloat16
    return None


def autocast_context(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager[None]:
    """Mixed precision as chosen by :func:`amp_dtype`; a no-op where that is ``None``."""
    dtype = amp_dtype(device, enabled)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def prepare_input(image: torch.Tensor) -> torch.Tensor:
    """Channels-last layout for 3D inputs on CPU (faster oneDNN convolutions); others unchanged."""
    if image.ndim == 5 and image.device.type == "cpu":
        return image.contiguous(memory_format=torch.channels_last_3d)
    return image


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


def predict_probabilities(
    model: ScribbleNet,
    source: ImageSource,
    *,
    region: Sequence[slice] | None = None,
    roi_size: Sequence[int] | None = None,
    overlap: float = 0.25,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    amp: bool = True,
    tta: bool = False,
) -> np.ndarray:
    """Class probabilities of a region by Gaussian-blended sliding windows.

    Windows lie on one grid fixed by the image (not by the region), so any
    region, block or whole image gets the same numbers:
    :func:`scribbleseg.core.blockwise.predict_blockwise` writes the same
    prediction block by block to zarr for images larger than memory.

    Parameters
    ----------
    model : ScribbleNet
        Run in eval mode (its mode is restored afterwards).
    source : ImageSource
    region : tuple of slice, optional
        Spatial region (within the image); default the whole image, whose
        probabilities must then fit in memory.
    roi_size : tuple of int, optional
        Window size (multiples of 16); default :func:`default_roi_size`.
    overlap : float
        Window overlap fraction.
    batch_size : int, optional
        Windows per forward pass.
    device : str or torch.device
    amp : bool
        Mixed precision: on CUDA, and bf16 on CPUs with native bf16 (see :func:`amp_dtype`).
    tta : bool
        Average over flips along each spatial axis (test-time augmentation).

    Returns
    -------
    (K, *region) float32 ndarray
    """
    # Imported here: blockwise builds on this module's helpers.
    from scribbleseg.core.blockwise import predict_grid

    return predict_grid(
        model,
        source,
        region,
        roi_size=roi_size,
        overlap=overlap,
        batch_size=batch_size,
        device=device,
        amp=amp,
        tta=tta,
    )


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
    region = clip_region(region, source.spatial_shape)
    halos = [halo] * len(region) if isinstance(halo, int) else list(halo)
    read_region = _grow(region, halos, [0] * len(region))
    image = torch.from_numpy(source.read(read_region))[None].to(dev)
    was_training = model.training
    model.eval()
    try:
        with autocast_context(dev, amp):
            logits = model(prepare_input(image)).logits
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
