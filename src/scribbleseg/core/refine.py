"""CRF refinement: mean-field inference of a Potts dense CRF on the final probabilities.

A network (and a forest) trained on strokes that keep away from boundaries leaves a band of
undecided voxels along every boundary; on the nuclei sample every nucleus came out a pixel or two
too wide (``docs/benchmarks.md``, "Where the nuclei errors are"). The CRF loss shapes training but
does not decide that band at prediction time. A few iterations of mean-field inference of a Potts
dense CRF (Krähenbühl & Koltun, NeurIPS 2011) do, with the windowed kernel of the CRF loss
(:func:`~scribbleseg.core.losses.crf.window_message`)::

    Q_0 = P,    Q_{t+1}(x) ∝ P(x) · exp(λ Σ_y W_xy Q_t(y)),
    W_xy = exp(-Σ_c (I_c(x) - I_c(y))² / (2 σ_c²) - |(x - y) · spacing|² / (2 σ_s²)),  |x - y|_∞ ≤ r

so a voxel moves towards the class of the neighbours it resembles. The intensity width of each
channel is :data:`NOISE_WIDTHS` times the channel's noise (:func:`estimate_noise`, on the
normalised image the network sees): edges that stand out from the noise stop the message, flat
regions pass it. A fixed width failed on one sample or the other; the noise-derived width held on
both (``docs/benchmarks.md``).

The refinement of a voxel depends on the probabilities and the image within ``iterations × r``
voxels (:meth:`MeanField.halo`): blockwise prediction reads that much more around each block, so
blockwise and whole-image results stay equal.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from scribbleseg.core.losses.crf import effective_window_radius, window_message
from scribbleseg.errors import ConfigError

if TYPE_CHECKING:
    from scribbleseg.core.models import ScribbleNet
    from scribbleseg.core.volume import ImageSource

__all__ = [
    "NOISE_FLOOR",
    "NOISE_WIDTHS",
    "WINDOW_RADIUS",
    "MeanField",
    "estimate_noise",
    "grown_region",
    "noise_of",
    "with_refinement_weight",
]

#: The intensity width of the kernel, in units of the image's noise standard deviation.
NOISE_WIDTHS: float = 2.0
#: Smallest noise estimate used (normalised units): a noise-free image (synthetic, or clipped to
#: a constant over most of it) would otherwise get a zero-width kernel.
NOISE_FLOOR: float = 1e-3
#: Voxels the noise is estimated from at most; larger images are sampled in patches.
NOISE_MAX_VOXELS: int = 2_000_000
#: Window radius of the trainer's refinement by spatial dimensions: 11 × 11 in 2D (120 neighbours),
#: 7 × 7 × 7 in 3D (342). In 2D the wider window gained 0.002–0.010 Dice over radius 3 on all four
#: nuclei sets at 2.5 × the cost (0.5 s for 512²); in 3D radius 5 gained 0.000–0.004 on the MRI
#: sets at 4 × the cost (``docs/benchmarks.md``).
WINDOW_RADIUS: dict[int, int] = {2: 5, 3: 3}
#: Voxels refined in one piece at most (pieces overlap by the halo): about 0.1 KB of working
#: memory per voxel with a few classes.
MAX_VOXELS: int = 8_000_000
#: Probabilities are clamped to this before their logarithm is taken.
_MIN_PROBABILITY = 1e-6


def _second_differences(image: np.ndarray) -> list[list[np.ndarray]]:
    """Per channel, the second differences along each axis at least 3 voxels long (flattened)."""
    array = np.asarray(image, dtype=np.float32)
    return [
        [np.diff(channel, 2, axis=axis).ravel() for axis in range(channel.ndim) if channel.shape[axis] >= 3]
        for channel in array
    ]


def _noise_from(residuals: list[np.ndarray]) -> float:
    """Mean over axes of 1.4826 × MAD / √6 of one channel's second differences."""
    estimates = []
    for residual in residuals:
        if residual.size:
            deviation = np.median(np.abs(residual - np.median(residual)))
            estimates.append(1.4826 * float(deviation) / math.sqrt(6.0))
    return float(np.mean(estimates)) if estimates else 0.0


def noise_of(image: np.ndarray) -> tuple[float, ...]:
    """Noise standard deviation of each channel, robust to edges and smooth shading.

    Per axis, the median absolute deviation of the second differences (× 1.4826, the normal
    consistency factor, / √6, the standard deviation of a second difference of white noise);
    then the mean over the axes.

    Parameters
    ----------
    image : (C, *S) ndarray
        Normalised intensities. Axes shorter than 3 voxels are skipped.

    Returns
    -------
    tuple of float
        One value per channel; 0.0 where no axis is 3 voxels long or the channel is flat.
    """
    return tuple(_noise_from(residuals) for residuals in _second_differences(image))


def estimate_noise(
    source: ImageSource,
    *,
    patch_size: Sequence[int] | None = None,
    max_voxels: int = NOISE_MAX_VOXELS,
    seed: int = 0,
) -> tuple[float, ...]:
    """Noise standard deviation of each channel of a normalised image (see :func:`noise_of`).

    Images of at most ``max_voxels`` voxels are read whole; larger ones as up to
    ``max_voxels / prod(patch_size)`` patches at seeded random places (never the whole image),
    whose second differences are pooled: the same statistic as for the whole image, on a
    sample of it.

    Parameters
    ----------
    source : ImageSource
    patch_size : sequence of int, optional
        Patch shape for large images; default 64 voxels per axis (3D) or 256 (2D).
    max_voxels : int
    seed : int

    Returns
    -------
    tuple of float
        One value per channel, at least :data:`NOISE_FLOOR`.
    """
    shape = source.spatial_shape
    if math.prod(shape) <= max_voxels:
        noise = noise_of(source.read())
    else:
        default = 64 if len(shape) == 3 else 256
        patch = [min(int(p), n) for p, n in zip(patch_size or [default] * len(shape), shape, strict=True)]
        count = max(1, max_voxels // math.prod(patch))
        rng = np.random.default_rng(seed)
        pooled: list[list[list[np.ndarray]]] = []  # [patch][channel][axis]
        for _ in range(count):
            starts = [int(rng.integers(0, n - p + 1)) for p, n in zip(patch, shape, strict=True)]
            region = tuple(slice(a, a + p) for a, p in zip(starts, patch, strict=True))
            pooled.append(_second_differences(source.read(region)))
        noise = tuple(
            _noise_from([np.concatenate(parts) for parts in zip(*per_channel, strict=True)])
            for per_channel in zip(*pooled, strict=True)
        )
    return tuple(max(n, NOISE_FLOOR) for n in noise)


def _positive(value: Any, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if not (math.isfinite(number) and number > 0):
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
    return number


@dataclass(frozen=True)
class MeanField:
    """Mean-field CRF refinement of class probabilities (see the module docstring).

    Parameters
    ----------
    sigma_intensity : tuple of float
        Intensity width of the kernel per channel, in normalised units
        (``NOISE_WIDTHS × noise``: :meth:`for_noise`).
    weight : float
        ``λ``, the strength of the pairwise term against the probabilities.
    sigma_spatial : float
        Width of the spatial Gaussian in voxels of the finest axis (physical units divided by the
        smallest spacing, so the kernel means the same on any calibration).
    window_radius : int
        Window radius in voxels on every axis (offsets whose spatial weight is below the CRF
        loss's cut-off are dropped, so coarse axes reach less far).
    iterations : int
        Mean-field iterations.

    Raises
    ------
    ConfigError
        If a value is out of range.
    """

    sigma_intensity: tuple[float, ...]
    weight: float = 1.0
    sigma_spatial: float = 3.0
    window_radius: int = 3
    iterations: int = 5

    def __post_init__(self) -> None:
        if isinstance(self.sigma_intensity, (str, bytes)) or not isinstance(self.sigma_intensity, Sequence):
            raise ConfigError(f"sigma_intensity must be one number per channel, got {self.sigma_intensity!r}")
        sigmas = tuple(_positive(s, "sigma_intensity") for s in self.sigma_intensity)
        if not sigmas:
            raise ConfigError("sigma_intensity must have one value per channel, got none")
        object.__setattr__(self, "sigma_intensity", sigmas)
        object.__setattr__(self, "weight", _positive(self.weight, "weight"))
        object.__setattr__(self, "sigma_spatial", _positive(self.sigma_spatial, "sigma_spatial"))
        for name in ("window_radius", "iterations"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= 64:
                raise ConfigError(f"{name} must be an integer in [1, 64], got {value!r}")
            object.__setattr__(self, name, int(value))

    @classmethod
    def for_noise(
        cls, noise: Sequence[float], *, weight: float = 1.0, spatial_dims: int | None = None
    ) -> MeanField:
        """Build the refinement for per-channel ``noise`` (intensity width ``NOISE_WIDTHS × noise``).

        With ``spatial_dims``, the window radius is :data:`WINDOW_RADIUS` ``[spatial_dims]``;
        without, the class default (3).
        """
        sigmas = tuple(NOISE_WIDTHS * max(float(n), NOISE_FLOOR) for n in noise)
        if spatial_dims is None:
            return cls(sigmas, weight=weight)
        if spatial_dims not in WINDOW_RADIUS:
            raise ConfigError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
        return cls(sigmas, weight=weight, window_radius=WINDOW_RADIUS[spatial_dims])

    def _kernel(self, spacing: Sequence[float]) -> tuple[tuple[float, ...], float, tuple[int, ...]]:
        """(relative spacing, σ_s, radius per axis) in units of the finest axis."""
        finest = min(float(s) for s in spacing)
        relative = tuple(float(s) / finest for s in spacing)
        return relative, self.sigma_spatial, (self.window_radius,) * len(relative)

    def halo(self, spacing: Sequence[float]) -> tuple[int, ...]:
        """Voxels per axis beyond a region that its refined values depend on."""
        relative, sigma, radius = self._kernel(spacing)
        reach = effective_window_radius(spacing=relative, sigma_spatial=sigma, window_radius=radius)
        return tuple(self.iterations * r for r in reach)

    @torch.no_grad()
    def apply(
        self,
        probabilities: np.ndarray,
        image: np.ndarray,
        spacing: Sequence[float],
        *,
        region: Sequence[slice] | None = None,
        device: str | torch.device = "cpu",
        max_voxels: int = MAX_VOXELS,
    ) -> np.ndarray:
        """Refine ``probabilities`` of ``image``.

        Computed in slabs along the first axis of at most about ``max_voxels`` voxels, each
        with the :meth:`halo` around it, so memory is bounded whatever the input's size; the
        result is the same as in one piece.

        Parameters
        ----------
        probabilities : (K, *S) ndarray
            Class probabilities (summing to 1 over ``K``). Not modified.
        image : (C, *S) ndarray
            The normalised image, ``C == len(sigma_intensity)``.
        spacing : sequence of float
            Voxel spacing per spatial axis.
        region : tuple of slice, optional
            The part of the input whose refined values are returned (default all of it). The
            rest is context: values within the halo of ``region`` take part.
        device : str or torch.device
            Where to compute.
        max_voxels : int
            Voxels per slab at most (unless one plane of the input with the halo is larger).

        Returns
        -------
        (K, *region) float32 ndarray
            Refined probabilities, summing to 1 over ``K``.

        Raises
        ------
        ValueError
            If the shapes, the channel count or ``region`` do not fit.
        """
        if probabilities.ndim not in (3, 4) or image.ndim != probabilities.ndim:
            raise ValueError(
                f"probabilities (K, *S) and image (C, *S) must be 2D or 3D alike, got shapes "
                f"{probabilities.shape} and {image.shape}"
            )
        shape = probabilities.shape[1:]
        if image.shape[1:] != shape:
            raise ValueError(f"image {image.shape} and probabilities {probabilities.shape} differ in size")
        if image.shape[0] != len(self.sigma_intensity):
            raise ValueError(
                f"the refinement was set up for {len(self.sigma_intensity)} channel(s), "
                f"the image has {image.shape[0]}"
            )
        if len(spacing) != len(shape):
            raise ValueError(f"spacing {tuple(spacing)} does not have one value per spatial axis")
        if region is not None and len(region) != len(shape):
            raise ValueError(f"region {tuple(region)} does not have one slice per spatial axis")
        bounds = (
            [(0, n) for n in shape]
            if region is None
            else [s.indices(n)[:2] for s, n in zip(region, shape, strict=True)]
        )
        if any(a >= b for a, b in bounds):
            raise ValueError(f"region {tuple(region)} is not a non-empty region of an input of shape {shape}")
        halo = self.halo(spacing)
        # Slabs along the first axis: each with the halo around it along every axis.
        grown = [(max(0, a - h), min(n, b + h)) for (a, b), h, n in zip(bounds, halo, shape, strict=True)]
        plane = math.prod(b - a for a, b in grown[1:])
        depth = max(1, max_voxels // max(1, plane) - 2 * halo[0])
        first, last = bounds[0]
        result = np.empty((probabilities.shape[0], *(b - a for a, b in bounds)), dtype=np.float32)
        for top in range(first, last, depth):
            bottom = min(last, top + depth)
            read = (
                slice(max(0, top - halo[0]), min(shape[0], bottom + halo[0])),
                *(slice(a, b) for a, b in grown[1:]),
            )
            refined = self._refine(
                probabilities[(slice(None), *read)], image[(slice(None), *read)], spacing, device
            )
            keep = (
                slice(top - read[0].start, bottom - read[0].start),
                *(slice(a - g0, b - g0) for (a, b), (g0, _) in zip(bounds[1:], grown[1:], strict=True)),
            )
            result[:, top - first : bottom - first] = refined[(slice(None), *keep)]
        return result

    def _refine(
        self,
        probabilities: np.ndarray,
        image: np.ndarray,
        spacing: Sequence[float],
        device: str | torch.device,
    ) -> np.ndarray:
        """Mean-field iterations on one piece, in one go (its edges are not refined exactly)."""
        relative, sigma, radius = self._kernel(spacing)
        dev = torch.device(device)
        prior = torch.from_numpy(np.ascontiguousarray(probabilities, dtype=np.float32)).to(dev)[None]
        log_prior = prior.clamp_min(_MIN_PROBABILITY).log_()
        sigmas = torch.tensor(self.sigma_intensity, dtype=torch.float32, device=dev)
        guide = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(dev)[None]
        guide = guide / sigmas.reshape(1, -1, *([1] * (guide.ndim - 2)))
        q = prior
        for _ in range(self.iterations):
            message = window_message(
                q, guide, spacing=relative, sigma_spatial=sigma, sigma_intensity=1.0, window_radius=radius
            )
            q = torch.softmax(message.mul_(self.weight).add_(log_prior), dim=1)
        return q[0].cpu().numpy()

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a JSON-safe dict."""
        return {
            "sigma_intensity": list(self.sigma_intensity),
            "weight": self.weight,
            "sigma_spatial": self.sigma_spatial,
            "window_radius": self.window_radius,
            "iterations": self.iterations,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MeanField:
        """Build from :meth:`to_dict`'s output; other or missing keys raise :class:`ConfigError`."""
        keys = {"sigma_intensity", "weight", "sigma_spatial", "window_radius", "iterations"}
        if not isinstance(data, Mapping) or set(data) != keys:
            raise ConfigError(f"a CRF refinement must be a mapping with exactly the keys {sorted(keys)}")
        return cls(**dict(data))  # __post_init__ checks and converts every field

    def fingerprint(self) -> str:
        """Return a string that changes with every field (for the model fingerprint)."""
        return repr(sorted(self.to_dict().items()))


def grown_region(
    region: Sequence[slice], halo: Sequence[int], shape: Sequence[int]
) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """``region`` grown by ``halo`` voxels per side (inside ``shape``), and ``region`` within it.

    Returns
    -------
    grown : tuple of slice
        The region to compute and read.
    crop : tuple of slice
        Where ``region`` lies inside ``grown`` (to pass as :meth:`MeanField.apply`'s ``region``).
    """
    grown = tuple(
        slice(max(0, r.start - h), min(n, r.stop + h)) for r, h, n in zip(region, halo, shape, strict=True)
    )
    crop = tuple(slice(r.start - g.start, r.stop - g.start) for r, g in zip(region, grown, strict=True))
    return grown, crop


def with_refinement_weight(model: ScribbleNet, weight: float, source: ImageSource) -> ScribbleNet:
    """``model`` predicting with a CRF refinement of ``weight`` (0 = none); ``model`` is not changed.

    A model without a refinement gets one for ``source``'s noise (:func:`estimate_noise`, which
    reads the image). Returns ``model`` itself when nothing changes, else a shallow copy that
    shares its weights and forest.

    Parameters
    ----------
    model : ScribbleNet
    weight : float
        ``λ`` of the refinement, >= 0.
    source : ImageSource
        The image the model will predict.

    Returns
    -------
    ScribbleNet
    """
    import copy
    import dataclasses

    current = getattr(model, "refinement", None)
    if weight == 0:
        refinement = None
    elif current is not None:
        refinement = dataclasses.replace(current, weight=weight)
    else:
        refinement = MeanField.for_noise(
            estimate_noise(source), weight=weight, spatial_dims=source.spatial_dims
        )
    if refinement == current:
        return model
    adjusted = copy.copy(model)  # nn.Module: a new attribute dict, the same parameters and buffers
    adjusted.refinement = refinement
    return adjusted
