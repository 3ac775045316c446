"""Whole-image prediction, block by block, with sliding windows on one global grid.

Large images are predicted block by block into zarr arrays on disk, so peak
memory depends on the block size, never on the image size.

Why the output has no seams
---------------------------
Every window lies on one grid fixed by the *image*: window ``k`` along an axis
starts at ``origin + k * stride`` (:class:`WindowGrid`). A voxel's probability
is the Gaussian-weighted mean of the predictions of all grid windows that hold
it. A block computes exactly the windows that touch it (reading the context
they need, reflected beyond the image), so its voxels get the same windows,
weights and input as in a prediction of the whole image at once
(:func:`predict_grid` without a region): blockwise and whole-image results are
the same numbers, whatever the block shape. The network uses batch norm, so a
window's output depends only on its input. The model's CRF refinement
(:mod:`scribbleseg.core.refine`) looks a fixed number of voxels around each
voxel: a block is computed with that halo around it and cropped, so it stays
equal to the whole image too (up to float rounding of the sums).

Resuming
--------
The output arrays carry ``attributes["scribbleseg"]["complete"]``, false until
every block is written. After writing a block, an empty marker file
``<labels>.zarr/.scribbleseg/done/<i>_<j>_<k>`` records it; a rerun with the
same model, image and settings (compared by a fingerprint stored in the
attributes) skips the marked blocks. Blocks are whole zarr chunks, so no two
blocks ever write the same chunk (safe for parallel workers,
:mod:`scribbleseg.distributed`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import itertools
import json
import math
import os
import pathlib
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from scribbleseg import __version__
from scribbleseg.core.inference import (
    autocast_context,
    default_roi_size,
    prepare_input,
    probabilities_to_labels,
    resolve_device,
)
from scribbleseg.core.models import DOWNSAMPLING, ScribbleNet
from scribbleseg.core.prevalence import reweight
from scribbleseg.core.refine import grown_region
from scribbleseg.core.volume import ImageSource, region_bounds
from scribbleseg.errors import ConfigError, InputError, ScribbleSegError

__all__ = [
    "BlockwisePlan",
    "BlockwiseProgress",
    "BlockwiseResult",
    "WindowGrid",
    "default_block_shape",
    "finish_prediction",
    "image_facts",
    "iter_blockwise",
    "model_fingerprint",
    "predict_blockwise",
    "predict_grid",
    "prepare_prediction",
    "reading_image",
    "run_block",
]


#: Folder (inside the labels store) holding one marker file per finished block.
_DONE_FOLDER = pathlib.PurePosixPath(".scribbleseg", "done")

#: Gaussian importance: sigma as a fraction of the window size (MONAI's default).
_SIGMA_SCALE = 0.125

#: Block side aimed at by :func:`default_block_shape` (voxels; 3D, then 2D).
_BLOCK_SIDE = {3: 256, 2: 2048}

ProbabilityDtype = Literal["float32", "float16"]

Region = tuple[slice, ...]


# ---------------------------------------------------------------------------
# the window grid
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowGrid:
    """Sliding windows on a grid fixed by the image, and their Gaussian weights.

    Along each axis, window ``k`` covers ``[origin + k * stride, origin + k *
    stride + roi_size)`` for ``k = 0 .. counts - 1``. The grid starts half an
    overlap before the image (``origin <= 0``) so that border voxels see the
    same (reflected) context as inner ones, and its last window reaches past the
    image end.

    Use :meth:`for_image` to build one.

    Attributes
    ----------
    image_shape : tuple of int
        Spatial shape ``([Z,] Y, X)`` of the image.
    roi_size : tuple of int
        Window size, multiples of 16.
    stride : tuple of int
        Distance between window starts.
    origin : tuple of int
        Start of window 0 (``<= 0``).
    counts : tuple of int
        Number of windows along each axis.
    """

    image_shape: tuple[int, ...]
    roi_size: tuple[int, ...]
    stride: tuple[int, ...]
    origin: tuple[int, ...]
    counts: tuple[int, ...]

    @classmethod
    def for_image(
        cls, image_shape: Sequence[int], *, roi_size: Sequence[int] | None = None, overlap: float = 0.25
    ) -> WindowGrid:
        """Build the grid for an image.

        Parameters
        ----------
        image_shape : sequence of int
            Spatial shape ``([Z,] Y, X)``.
        roi_size : sequence of int, optional
            Window size (multiples of 16); default
            :func:`~scribbleseg.core.inference.default_roi_size` of the image.
        overlap : float
            Fraction of a window shared with the next, in ``[0, 1)``.

        Returns
        -------
        WindowGrid

        Raises
        ------
        ConfigError
            If ``roi_size`` or ``overlap`` is invalid.
        """
        shape = tuple(int(s) for s in image_shape)
        if len(shape) not in (2, 3) or min(shape) < 1:
            raise ConfigError(f"image shape must have 2 or 3 positive sizes, got {shape}")
        roi = tuple(int(r) for r in roi_size) if roi_size is not None else default_roi_size(shape)
        if len(roi) != len(shape) or any(r < DOWNSAMPLING or r % DOWNSAMPLING for r in roi):
            raise ConfigError(f"roi_size {roi} must give {len(shape)} positive multiples of {DOWNSAMPLING}")
        overlap = float(overlap)
        if not 0.0 <= overlap < 1.0:
            raise ConfigError(f"overlap must be in [0, 1), got {overlap}")
        stride = tuple(max(1, int(r * (1.0 - overlap))) for r in roi)
        origin = tuple(-((r - s) // 2) for r, s in zip(roi, stride, strict=True))
        counts = tuple(
            max(1, -(-(n - o - r) // s) + 1) for n, r, s, o in zip(shape, roi, stride, origin, strict=True)
        )
        return cls(shape, roi, stride, origin, counts)

    @property
    def ndim(self) -> int:
        """Number of spatial axes."""
        return len(self.image_shape)

    def window_start(self, index: Sequence[int]) -> tuple[int, ...]:
        """Global start of window ``index`` (one grid index per axis)."""
        return tuple(o + int(k) * s for o, k, s in zip(self.origin, index, self.stride, strict=True))

    def windows_touching(self, region: Sequence[slice]) -> tuple[range, ...]:
        """Grid indices, per axis, of the windows that overlap ``region``.

        Parameters
        ----------
        region : tuple of slice
            Spatial region inside the image.

        Returns
        -------
        tuple of range
        """
        ranges = []
        for (start, stop), o, s, r, n in zip(
            region_bounds(region, self.image_shape),
            self.origin,
            self.stride,
            self.roi_size,
            self.counts,
            strict=True,
        ):
            # window k touches [start, stop) iff o + k*s < stop and o + k*s + r > start
            first = max(0, (start - r - o) // s + 1)
            last = min(n, -(-(stop - o) // s))
            ranges.append(range(first, max(first, last)))
        return tuple(ranges)

    def profiles(self) -> tuple[np.ndarray, ...]:
        """1D Gaussian importance profiles (max 1) whose outer product weights a window."""
        out = []
        for r in self.roi_size:
            position = np.arange(r, dtype=np.float64) - (r - 1) / 2.0
            sigma = _SIGMA_SCALE * r
            out.append(np.exp(-0.5 * (position / sigma) ** 2).astype(np.float32))
        return tuple(out)

    def weight_sums(self, region: Sequence[slice]) -> tuple[np.ndarray, ...]:
        """Per-axis sums of the window profiles over ``region``.

        The weight a voxel receives from all windows is the product of these
        (the windows holding a voxel are the product of the per-axis ones).
        """
        sums = []
        bounds = region_bounds(region, self.image_shape)
        for axis, (profile, ks) in enumerate(
            zip(self.profiles(), self.windows_touching(region), strict=True)
        ):
            start, stop = bounds[axis]
            total = np.zeros(stop - start, dtype=np.float32)
            for k in ks:
                first = self.origin[axis] + k * self.stride[axis]
                lo, hi = max(first, start), min(first + self.roi_size[axis], stop)
                total[lo - start : hi - start] += profile[lo - first : hi - first]
            sums.append(total)
        return tuple(sums)

    def to_dict(self) -> dict[str, list[int]]:
        """JSON-safe dict of the fields."""
        return {f.name: list(getattr(self, f.name)) for f in dataclasses.fields(self)}


# ---------------------------------------------------------------------------
# prediction of one region
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def reading_image(what: str) -> Iterator[None]:
    """Turn a failed read of the image (corrupt or missing chunk …) into an :class:`InputError`.

    Parameters
    ----------
    what : str
        Names what was being read, e.g. ``"image.zarr at z 0:64, y 0:256"``.
    """
    try:
        yield
    except (ScribbleSegError, MemoryError):
        raise
    except Exception as exc:  # zarr, numcodecs, tifffile, dask … all mean "the data cannot be read"
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        raise InputError(
            f"cannot read {what}: a chunk is missing, corrupt or unreadable ({detail}) — check or "
            "re-copy the image"
        ) from exc


def _describe_region(region: Sequence[slice]) -> str:
    letters = "ZYX"[-len(region) :]
    return ", ".join(f"{a.lower()} {s.start}:{s.stop}" for a, s in zip(letters, region, strict=True))


def _flips(spatial_dims: int, tta: bool) -> list[tuple[int, ...]]:
    return [()] + ([(axis + 2,) for axis in range(spatial_dims)] if tta else [])


def _default_batch_size(device: torch.device) -> int:
    # On CPU a batch gains little speed but multiplies the activations' memory.
    return 4 if device.type == "cuda" else 1


@torch.inference_mode()
def predict_grid(
    model: ScribbleNet,
    source: ImageSource,
    region: Sequence[slice] | None = None,
    *,
    grid: WindowGrid | None = None,
    roi_size: Sequence[int] | None = None,
    overlap: float = 0.25,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    amp: bool = True,
    tta: bool = False,
) -> np.ndarray:
    """Class probabilities of a region from the Gaussian-weighted windows of the image's grid.

    Without ``region`` this is the whole-image sliding-window prediction
    (memory grows with the image); :func:`predict_blockwise` gives the same
    numbers block by block.

    Parameters
    ----------
    model : ScribbleNet
        Run in eval mode (its mode is restored afterwards). Its ``class_factors``, if any,
        re-weight the network's probabilities, its ``forest_blend``, if any, is mixed in, and
        its ``refinement``, if any, refines the mix (the region is computed with the
        refinement's halo around it, so any region gives the whole image's values).
    source : ImageSource
        The image; only the windows touching ``region`` are read.
    region : tuple of slice, optional
        Spatial region inside the image; default the whole image.
    grid : WindowGrid, optional
        The window grid; default ``WindowGrid.for_image(source.spatial_shape,
        roi_size=roi_size, overlap=overlap)``. It depends on the image, not on
        the region.
    roi_size : sequence of int, optional
        Window size when ``grid`` is not given.
    overlap : float
        Window overlap when ``grid`` is not given.
    batch_size : int, optional
        Windows per forward pass; default 4 on CUDA, 1 on CPU.
    device : str or torch.device
    amp : bool
        Mixed precision: on CUDA, and bf16 on CPUs with native bf16 (see :func:`amp_dtype`).
    tta : bool
        Average each window over flips along every spatial axis.

    Returns
    -------
    (K, *region) float32 ndarray
        Probabilities summing to 1 over ``K``.
    """
    dev = resolve_device(device)
    if grid is None:
        grid = WindowGrid.for_image(source.spatial_shape, roi_size=roi_size, overlap=overlap)
    elif grid.image_shape != source.spatial_shape:
        raise ConfigError(
            f"window grid is for an image of shape {grid.image_shape}, not {source.spatial_shape}"
        )
    bounds = region_bounds(region, source.spatial_shape)
    region = tuple(slice(a, b) for a, b in bounds)
    batch = int(batch_size) if batch_size is not None else _default_batch_size(dev)
    if batch < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch}")
    refinement = getattr(model, "refinement", None)
    if refinement is None:
        return _mixed_probabilities(model, source, region, grid, batch, dev, amp, tta)
    # The refined value of a voxel depends on everything within the refinement's halo: computing
    # it over the region grown by the halo (inside the image) keeps blocks equal to the whole image.
    grown, crop = grown_region(region, refinement.halo(source.spacing), source.spatial_shape)
    probabilities = _mixed_probabilities(model, source, grown, grid, batch, dev, amp, tta)
    with reading_image(f"the image at {_describe_region(grown)}"):
        image = source.read(grown)
    return refinement.apply(probabilities, image, source.spacing, region=crop, device=dev)


def _mixed_probabilities(
    model: ScribbleNet,
    source: ImageSource,
    region: tuple[slice, ...],
    grid: WindowGrid,
    batch: int,
    dev: torch.device,
    amp: bool,
    tta: bool,
) -> np.ndarray:
    """:func:`predict_grid` before the refinement: the network, re-weighted, mixed with the forest."""
    bounds = [(r.start, r.stop) for r in region]
    flips = _flips(source.spatial_dims, tta)
    weight = _outer(grid.profiles())
    touching = grid.windows_touching(region)
    numerator: np.ndarray | None = None

    was_training = model.training
    model = model.to(dev).eval()
    try:
        for k0 in touching[0]:
            # One row of windows (same position along the first axis) shares one read.
            starts = [grid.window_start((k0, *rest)) for rest in itertools.product(*touching[1:])]
            low = [min(s[a] for s in starts) for a in range(grid.ndim)]
            high = [max(s[a] for s in starts) + grid.roi_size[a] for a in range(grid.ndim)]
            read_region = tuple(slice(lo, hi) for lo, hi in zip(low, high, strict=True))
            with reading_image(f"the image at {_describe_region(read_region)}"):
                slab = source.read(read_region)
            for first in range(0, len(starts), batch):
                chunk = starts[first : first + batch]
                windows = np.stack([slab[_window_in(start, low, grid.roi_size)] for start in chunk])
                probabilities = _forward(model, torch.from_numpy(windows).to(dev), dev, amp, flips)
                if numerator is None:
                    numerator = np.zeros(
                        (probabilities.shape[1], *(b - a for a, b in bounds)), dtype=np.float32
                    )
                for start, window in zip(chunk, probabilities, strict=True):
                    _accumulate(numerator, window, weight, start, bounds)
    finally:
        model.train(was_training)
    assert numerator is not None  # every region inside the image is touched by a window
    for axis, total in enumerate(grid.weight_sums(region)):
        shape = [1] * numerator.ndim
        shape[axis + 1] = total.size
        numerator /= total.reshape(shape)
    numerator = reweight(numerator, getattr(model, "class_factors", None))
    blend = getattr(model, "forest_blend", None)
    if blend is not None and blend.weight > 0:
        with reading_image(f"the image at {_describe_region(region)}"):
            numerator = blend.mix(numerator, blend.probabilities(source, region))
    return numerator


def _window_in(start: Sequence[int], origin: Sequence[int], roi: Sequence[int]) -> tuple[slice, ...]:
    """Index of the window at global ``start`` in a ``(C, ...)`` array read from global ``origin``."""
    return (slice(None), *(slice(s - o, s - o + r) for s, o, r in zip(start, origin, roi, strict=True)))


def _outer(profiles: Sequence[np.ndarray]) -> np.ndarray:
    weight = profiles[0]
    for profile in profiles[1:]:
        weight = np.multiply.outer(weight, profile)
    return np.ascontiguousarray(weight, dtype=np.float32)


def _forward(
    model: ScribbleNet, windows: torch.Tensor, dev: torch.device, amp: bool, flips: Sequence[tuple[int, ...]]
) -> np.ndarray:
    total: torch.Tensor | None = None
    for dims in flips:
        inputs = torch.flip(windows, dims) if dims else windows
        with autocast_context(dev, amp):
            logits = model(prepare_input(inputs)).logits
        probabilities = torch.softmax(logits.float(), dim=1).contiguous()
        if dims:
            probabilities = torch.flip(probabilities, dims)
        total = probabilities if total is None else total + probabilities
    assert total is not None
    if len(flips) > 1:
        total = total / len(flips)
    return total.cpu().numpy()


def _accumulate(
    numerator: np.ndarray,
    window: np.ndarray,
    weight: np.ndarray,
    start: Sequence[int],
    bounds: Sequence[tuple[int, int]],
) -> None:
    """Add ``window * weight`` to ``numerator`` where the window meets the region."""
    inside: list[slice] = []
    local: list[slice] = []
    for s, r, (a, b) in zip(start, weight.shape, bounds, strict=True):
        lo, hi = max(s, a), min(s + r, b)
        inside.append(slice(lo - a, hi - a))
        local.append(slice(lo - s, hi - s))
    numerator[(slice(None), *inside)] += window[(slice(None), *local)] * weight[tuple(local)]


# ---------------------------------------------------------------------------
# the plan: outputs, blocks and resuming
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockwiseProgress:
    """One finished block of a blockwise prediction.

    Attributes
    ----------
    blocks_done : int
        Blocks written so far, those skipped (already done) included.
    blocks_total : int
    blocks_computed : int
        Blocks computed in this run.
    blocks_skipped : int
        Blocks found done when the run started.
    region : tuple of slice
        The block just written.
    elapsed : float
        Seconds since the run started.
    """

    blocks_done: int
    blocks_total: int
    blocks_computed: int
    blocks_skipped: int
    region: Region
    elapsed: float

    @property
    def fraction(self) -> float:
        """Fraction of blocks done, 0..1."""
        return self.blocks_done / self.blocks_total if self.blocks_total else 1.0


@dataclass(frozen=True)
class BlockwiseResult:
    """What a blockwise prediction did.

    Attributes
    ----------
    labels : pathlib.Path
        The labels zarr array.
    probabilities : pathlib.Path or None
        The probabilities zarr array, if written.
    blocks_total, blocks_computed, blocks_skipped : int
        All blocks; computed in this run; already done before it.
    seconds : float
        Wall time of this run.
    """

    labels: pathlib.Path
    probabilities: pathlib.Path | None
    blocks_total: int
    blocks_computed: int
    blocks_skipped: int
    seconds: float


@dataclass(frozen=True)
class BlockwisePlan:
    """Everything a worker needs to predict and write any block; small and picklable.

    Build it with :func:`prepare_prediction`, which also creates (or checks,
    for resuming) the output arrays.

    Attributes
    ----------
    labels : str
        Path of the labels zarr array.
    probabilities : str or None
        Path of the probabilities zarr array.
    grid : WindowGrid
    block_shape : tuple of int
        Spatial block shape, a multiple of the output chunks.
    class_values : tuple of int
        Label value of each network output.
    batch_size : int or None
    tta, amp : bool
    fingerprint : str
        Hash of the model, image and settings; a rerun resumes only if equal.
    """

    labels: str
    probabilities: str | None
    grid: WindowGrid
    block_shape: tuple[int, ...]
    class_values: tuple[int, ...]
    batch_size: int | None
    tta: bool
    amp: bool
    fingerprint: str

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Spatial shape of the image (and of the labels)."""
        return self.grid.image_shape

    @property
    def block_counts(self) -> tuple[int, ...]:
        """Number of blocks along each axis."""
        return tuple(-(-n // b) for n, b in zip(self.image_shape, self.block_shape, strict=True))

    @property
    def n_blocks(self) -> int:
        """Number of blocks."""
        return math.prod(self.block_counts)

    def blocks(self) -> list[tuple[int, ...]]:
        """Return the indices of all blocks, in C order."""
        return list(itertools.product(*(range(n) for n in self.block_counts)))

    def block_region(self, index: Sequence[int]) -> Region:
        """Spatial region of block ``index``, cut to the image."""
        return tuple(
            slice(i * b, min((i + 1) * b, n))
            for i, b, n in zip(index, self.block_shape, self.image_shape, strict=True)
        )

    def marker(self, index: Sequence[int]) -> pathlib.Path:
        """Path of the file that marks block ``index`` as written."""
        return pathlib.Path(self.labels, _DONE_FOLDER, "_".join(str(int(i)) for i in index))

    def is_complete(self) -> bool:
        """Whether the outputs are marked complete."""
        paths = [self.labels] if self.probabilities is None else [self.labels, self.probabilities]
        return all(_is_complete(pathlib.Path(p)) for p in paths)

    def is_done(self, index: Sequence[int]) -> bool:
        """Whether block ``index`` is marked as written."""
        return self.marker(index).exists()

    def pending_blocks(self) -> list[tuple[int, ...]]:
        """Blocks not yet marked as written, in C order (none once the outputs are complete)."""
        if self.is_complete():
            return []
        folder = pathlib.Path(self.labels, _DONE_FOLDER)
        done = set(os.listdir(folder)) if folder.is_dir() else set()
        return [i for i in self.blocks() if "_".join(map(str, i)) not in done]


def _is_complete(path: pathlib.Path) -> bool:
    import zarr

    from scribbleseg.io.zarr import ATTRIBUTES_KEY

    try:
        attributes = zarr.open_array(str(path), mode="r").attrs.get(ATTRIBUTES_KEY)
    except Exception:
        return False
    return isinstance(attributes, Mapping) and attributes.get("complete") is True


def default_block_shape(chunks: Sequence[int]) -> tuple[int, ...]:
    """Block shape for prediction: whole chunks, about 256³ voxels in 3D (2048² in 2D).

    Larger blocks recompute fewer windows at their borders (a window that
    straddles two blocks is computed for both); smaller ones need less memory.
    """
    side = _BLOCK_SIDE[len(chunks)]
    return tuple(int(c) * max(1, round(side / int(c))) for c in chunks)


def model_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 of a model's weights (names, shapes and values), class factors, forest blend and refinement."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(value.shape)}:{value.dtype}".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    factors = getattr(model, "class_factors", None)
    if factors is not None:
        digest.update(f"class factors:{tuple(factors)!r}".encode())
    blend = getattr(model, "forest_blend", None)
    if blend is not None and blend.weight > 0:
        digest.update(f"forest blend:{blend.fingerprint()}".encode())
    refinement = getattr(model, "refinement", None)
    if refinement is not None:
        digest.update(f"refinement:{refinement.fingerprint()}".encode())
    return digest.hexdigest()


def _default_chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    from scribbleseg.io.zarr import default_chunks

    return default_chunks(shape, "ZYX"[-len(shape) :])


def _check_block_shape(
    block_shape: Sequence[int], chunks: Sequence[int], image_shape: Sequence[int]
) -> tuple[int, ...]:
    block = tuple(int(b) for b in block_shape)
    if len(block) != len(chunks) or any(b < 1 for b in block):
        raise ConfigError(f"block shape {block} must give {len(chunks)} positive sizes")
    block = tuple(min(b, -(-n // c) * c) for b, c, n in zip(block, chunks, image_shape, strict=True))
    if any(b % c for b, c in zip(block, chunks, strict=True)):
        raise ConfigError(
            f"block shape {block} must be a multiple of the output chunks {tuple(chunks)} "
            "(so that no two blocks write the same chunk)"
        )
    return block


def _our_attributes(path: pathlib.Path) -> Mapping[str, Any] | None:
    """Our attributes of the zarr array at ``path``; None if absent; raise if it is not ours."""
    import zarr

    from scribbleseg.io.zarr import ATTRIBUTES_KEY

    if not path.exists() and not path.is_symlink():
        return None
    if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
        return None  # an empty folder (e.g. left by a run that failed while creating it) holds nothing
    is_zarr = path.is_dir() and any((path / m).exists() for m in ("zarr.json", ".zarray", ".zgroup"))
    if not is_zarr:
        what = "folder" if path.is_dir() else "file"
        raise InputError(
            f"cannot write {path}: a {what} of that name exists (remove it or choose another name)"
        )
    try:
        node = zarr.open(store=str(path), mode="r")
        attributes = node.attrs.get(ATTRIBUTES_KEY)
    except Exception:
        attributes = None
    if not isinstance(attributes, Mapping) or "prediction" not in attributes:
        raise InputError(
            f"cannot write {path}: a zarr store of that name exists and is not a ScribbleSeg prediction "
            "(remove it or choose another name)"
        )
    return attributes


def _write_error(path: str | os.PathLike[str], exc: OSError) -> InputError:
    if exc.errno == errno.ENOSPC:
        reason = "the disk is full"
    elif exc.errno == errno.EDQUOT:
        reason = "the disk quota is exceeded"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        reason = "permission denied"
    else:
        reason = exc.strerror or str(exc)
    return InputError(
        f"cannot write {path}: {reason} — the partial output is marked incomplete; free space or fix the "
        "cause and rerun the same command to resume"
    )


@contextlib.contextmanager
def _writing(path: str | os.PathLike[str]) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise _write_error(path, exc) from exc


def _create_array(
    path: pathlib.Path,
    *,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    dtype: np.dtype,
    axes: str,
    attributes: dict[str, Any],
) -> None:
    from scribbleseg.io.zarr import create_array

    with _writing(path):
        if path.exists():
            shutil.rmtree(path)
        create_array(path, shape=shape, chunks=chunks, dtype=dtype, axes=axes, attributes=attributes)


def prepare_prediction(
    labels: str | os.PathLike[str],
    *,
    image_shape: Sequence[int],
    class_values: Sequence[int],
    model_id: str,
    image_id: Mapping[str, Any],
    probabilities: str | os.PathLike[str] | None = None,
    probabilities_dtype: ProbabilityDtype = "float32",
    spacing: Sequence[float] | None = None,
    chunks: Sequence[int] | None = None,
    block_shape: Sequence[int] | None = None,
    roi_size: Sequence[int] | None = None,
    overlap: float = 0.25,
    batch_size: int | None = None,
    tta: bool = False,
    amp: bool = True,
) -> BlockwisePlan:
    """Create the output arrays of a blockwise prediction, or find them ready to resume.

    An existing output is resumed when its stored fingerprint equals this
    prediction's (same model, image, settings); an existing ScribbleSeg
    prediction with another fingerprint is replaced; anything else there is
    refused.

    Parameters
    ----------
    labels : path-like
        The labels ``.zarr`` array to write; its folder must exist.
    image_shape : sequence of int
        Spatial shape ``([Z,] Y, X)`` of the image.
    class_values : sequence of int
        Label value of each network output.
    model_id : str
        Identifies the weights, e.g. :func:`model_fingerprint`.
    image_id : mapping
        JSON-safe facts identifying the image (path, dtype, normalisation …).
    probabilities : path-like, optional
        Also write probabilities ``(K, [Z,] Y, X)`` to this ``.zarr`` array.
    probabilities_dtype : {"float32", "float16"}
    spacing : sequence of float, optional
        Physical spacing, recorded in the attributes.
    chunks : sequence of int, optional
        Spatial chunk shape; default :func:`scribbleseg.io.zarr.default_chunks`, or
        the block size along axes where the block is not a multiple of those.
    block_shape : sequence of int, optional
        A multiple of ``chunks``; default :func:`default_block_shape`.
    roi_size, overlap, batch_size, tta, amp
        See :func:`predict_grid`.

    Returns
    -------
    BlockwisePlan

    Raises
    ------
    InputError
        If an output folder is missing or not a folder, a path holds something
        that is not a ScribbleSeg prediction, or writing fails.
    ConfigError
        If a setting is invalid.
    """
    from scribbleseg.io.arrays import output_path

    shape = tuple(int(s) for s in image_shape)
    grid = WindowGrid.for_image(shape, roi_size=roi_size, overlap=overlap)
    if chunks is not None:
        chunk_shape = tuple(int(c) for c in chunks)
    elif block_shape is not None and len(block_shape) == len(shape):
        # Default chunks where the block is a multiple of them, else one chunk per block along that axis.
        chunk_shape = tuple(
            c if int(b) % c == 0 else int(b) for c, b in zip(_default_chunks(shape), block_shape, strict=True)
        )
    else:
        chunk_shape = _default_chunks(shape)
    if len(chunk_shape) != len(shape) or any(c < 1 for c in chunk_shape):
        raise ConfigError(f"chunks {chunk_shape} must give {len(shape)} positive sizes")
    chunk_shape = tuple(min(c, n) for c, n in zip(chunk_shape, shape, strict=True))
    block = _check_block_shape(
        block_shape if block_shape is not None else default_block_shape(chunk_shape), chunk_shape, shape
    )
    values = tuple(int(v) for v in class_values)
    if probabilities_dtype not in ("float32", "float16"):
        raise ConfigError(f"probabilities dtype must be float32 or float16, got {probabilities_dtype!r}")
    labels_path = output_path(labels)
    probabilities_path = output_path(probabilities) if probabilities is not None else None
    if probabilities_path is not None and probabilities_path.resolve() == labels_path.resolve():
        raise InputError(f"the labels and the probabilities would both be written to {labels_path}")

    # The marker files depend on the block shape: it is part of the fingerprint.
    facts = {
        "version": __version__,
        "model": model_id,
        "image": dict(image_id),
        "image_shape": list(shape),
        "class_values": list(values),
        "grid": grid.to_dict(),
        "block_shape": list(block),
        "chunks": list(chunk_shape),
        "tta": bool(tta),
        "probabilities": probabilities_dtype if probabilities_path is not None else None,
    }
    fingerprint = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()
    plan = BlockwisePlan(
        labels=str(labels_path),
        probabilities=str(probabilities_path) if probabilities_path is not None else None,
        grid=grid,
        block_shape=block,
        class_values=values,
        batch_size=batch_size,
        tta=bool(tta),
        amp=bool(amp),
        fingerprint=fingerprint,
    )
    existing = [_our_attributes(labels_path)]
    if probabilities_path is not None:
        existing.append(_our_attributes(probabilities_path))
    if all(
        a is not None
        and isinstance(a.get("prediction"), Mapping)
        and a["prediction"].get("fingerprint") == fingerprint
        for a in existing
    ):
        return plan  # resume

    axes = "ZYX"[-len(shape) :]
    prediction = {"fingerprint": fingerprint, **facts}
    common: dict[str, Any] = {"complete": False, "prediction": prediction}
    if spacing is not None:
        common["spacing"] = [float(s) for s in spacing]
    if probabilities_path is not None:
        _create_array(
            probabilities_path,
            shape=(len(values), *shape),
            chunks=(1, *chunk_shape),
            dtype=np.dtype(probabilities_dtype),
            axes="C" + axes,
            attributes={"axes": "C" + axes, **common},
        )
    _create_array(
        labels_path,
        shape=shape,
        chunks=chunk_shape,
        dtype=np.min_scalar_type(max(values)),
        axes=axes,
        attributes={"axes": axes, **common},
    )
    with _writing(labels_path):
        (labels_path / _DONE_FOLDER).mkdir(parents=True, exist_ok=True)
    return plan


def run_block(
    plan: BlockwisePlan,
    model: ScribbleNet,
    source: ImageSource,
    index: Sequence[int],
    *,
    device: str | torch.device = "auto",
) -> Region:
    """Predict block ``index`` of ``plan``, write it and mark it done.

    Parameters
    ----------
    plan : BlockwisePlan
    model : ScribbleNet
    source : ImageSource
        The image, with the normalisation the plan was made for.
    index : sequence of int
        Block index.
    device : str or torch.device

    Returns
    -------
    tuple of slice
        The block's region.

    Raises
    ------
    InputError
        If the image cannot be read or the output cannot be written.
    """
    import zarr

    region = plan.block_region(index)
    probabilities = predict_grid(
        model,
        source,
        region,
        grid=plan.grid,
        batch_size=plan.batch_size,
        device=device,
        amp=plan.amp,
        tta=plan.tta,
    )
    labels = probabilities_to_labels(probabilities, plan.class_values)
    if plan.probabilities is not None:
        with _writing(plan.probabilities):
            target = zarr.open_array(plan.probabilities, mode="r+")
            target[(slice(None), *region)] = probabilities.astype(target.dtype, copy=False)
    del probabilities
    with _writing(plan.labels):
        target = zarr.open_array(plan.labels, mode="r+")
        target[region] = labels.astype(target.dtype, copy=False)
        plan.marker(index).touch()
    return region


def finish_prediction(plan: BlockwisePlan) -> None:
    """Mark the outputs complete once every block is marked done.

    Raises
    ------
    RuntimeError
        If some blocks are not done.
    """
    import zarr

    from scribbleseg.io.zarr import ATTRIBUTES_KEY

    if plan.is_complete():
        return
    pending = plan.pending_blocks()
    if pending:
        raise RuntimeError(f"{len(pending)} of {plan.n_blocks} blocks are not written yet, e.g. {pending[0]}")
    # Probabilities first: the labels' flag is the last thing written.
    for path in (plan.probabilities, plan.labels):
        if path is None:
            continue
        with _writing(path):
            array = zarr.open_array(path, mode="r+")
            attributes = dict(array.attrs[ATTRIBUTES_KEY])
            attributes["complete"] = True
            array.attrs[ATTRIBUTES_KEY] = attributes
    shutil.rmtree(pathlib.Path(plan.labels, _DONE_FOLDER.parent), ignore_errors=True)


def iter_blockwise(
    plan: BlockwisePlan,
    model: ScribbleNet,
    source: ImageSource,
    *,
    device: str | torch.device = "auto",
) -> Iterator[BlockwiseProgress]:
    """Predict the pending blocks of ``plan`` one by one, yielding after each.

    Closing the generator (or an exception in the consumer) stops after the
    current block; the outputs stay marked incomplete and a later run resumes.
    The outputs are marked complete when the last block is written.

    Yields
    ------
    BlockwiseProgress
    """
    clock = time.perf_counter()
    pending = plan.pending_blocks()
    skipped = plan.n_blocks - len(pending)
    for computed, index in enumerate(pending, start=1):
        region = run_block(plan, model, source, index, device=device)
        yield BlockwiseProgress(
            blocks_done=skipped + computed,
            blocks_total=plan.n_blocks,
            blocks_computed=computed,
            blocks_skipped=skipped,
            region=region,
            elapsed=time.perf_counter() - clock,
        )
    finish_prediction(plan)


def image_facts(source: ImageSource, name: str | None = None) -> dict[str, Any]:
    """JSON-safe facts identifying an image for the fingerprint (normalisation included)."""
    return {
        "name": name,
        "shape": list(source.shape),
        "dtype": str(source.dtype),
        "normalisation": source.normalisation.to_dict(),
    }


def predict_blockwise(
    model: ScribbleNet,
    source: ImageSource,
    labels: str | os.PathLike[str],
    *,
    class_values: Sequence[int] | None = None,
    probabilities: str | os.PathLike[str] | None = None,
    probabilities_dtype: ProbabilityDtype = "float32",
    chunks: Sequence[int] | None = None,
    block_shape: Sequence[int] | None = None,
    roi_size: Sequence[int] | None = None,
    overlap: float = 0.25,
    batch_size: int | None = None,
    tta: bool = False,
    device: str | torch.device = "auto",
    amp: bool = True,
    model_id: str | None = None,
    image_name: str | None = None,
    progress: Callable[[BlockwiseProgress], None] | None = None,
) -> BlockwiseResult:
    """Predict a whole image block by block into zarr arrays on disk.

    The result equals :func:`predict_grid` of the whole image; peak memory
    depends on ``block_shape`` only. An interrupted run (crash, exception from
    ``progress``) leaves the outputs marked incomplete; calling again with the
    same arguments computes only the missing blocks.

    Parameters
    ----------
    model : ScribbleNet
    source : ImageSource
        The image. Its normalisation is estimated (from a sample) first if unset.
    labels : path-like
        Output ``.zarr`` array of class values, shape ``([Z,] Y, X)``.
    class_values : sequence of int, optional
        Label value of each network output; default ``1 .. K``.
    probabilities : path-like, optional
        Also write probabilities ``(K, [Z,] Y, X)`` to this ``.zarr`` array.
    probabilities_dtype : {"float32", "float16"}
    chunks, block_shape : sequence of int, optional
        Output chunks and prediction blocks (a multiple of the chunks), see
        :func:`prepare_prediction`.
    roi_size, overlap, batch_size, tta, device, amp
        See :func:`predict_grid`.
    model_id : str, optional
        Identifies the weights for resuming; default :func:`model_fingerprint`.
    image_name : str, optional
        Identifies the image (e.g. its path) for resuming.
    progress : callable, optional
        Called with a :class:`BlockwiseProgress` after each written block; an
        exception it raises stops the prediction (resumable).

    Returns
    -------
    BlockwiseResult

    Raises
    ------
    InputError
        If the image cannot be read or an output cannot be written.
    """
    clock = time.perf_counter()
    values = tuple(class_values) if class_values is not None else tuple(range(1, model.num_classes + 1))
    if len(values) != model.num_classes:
        raise ConfigError(f"{len(values)} class values for a model with {model.num_classes} classes")
    with reading_image("the image (normalisation sample)"):
        facts = image_facts(source, image_name)
    plan = prepare_prediction(
        labels,
        image_shape=source.spatial_shape,
        class_values=values,
        model_id=model_id or model_fingerprint(model),
        image_id=facts,
        probabilities=probabilities,
        probabilities_dtype=probabilities_dtype,
        spacing=source.spacing,
        chunks=chunks,
        block_shape=block_shape,
        roi_size=roi_size,
        overlap=overlap,
        batch_size=batch_size,
        tta=tta,
        amp=amp,
    )
    skipped = plan.n_blocks - len(plan.pending_blocks())
    computed = 0
    for update in iter_blockwise(plan, model, source, device=device):
        computed = update.blocks_computed
        if progress is not None:
            progress(update)
    return BlockwiseResult(
        labels=pathlib.Path(plan.labels),
        probabilities=pathlib.Path(plan.probabilities) if plan.probabilities is not None else None,
        blocks_total=plan.n_blocks,
        blocks_computed=computed,
        blocks_skipped=skipped,
        seconds=time.perf_counter() - clock,
    )
