"""ilastik's default pixel-feature filter bank, in 2D and native 3D, with physical voxel spacing.

The features are those of ilastik's pixel classification defaults: Gaussian smoothing, Laplacian of
Gaussian, Gaussian gradient magnitude, difference of Gaussians, structure-tensor eigenvalues and
Hessian-of-Gaussian eigenvalues, at the scales ``ILASTIK_SIGMAS``; the smallest scale (0.3) only
for the smoothing. ilastik computes them with its ``fastfilters`` library, which is not on PyPI;
here they come from :mod:`scipy.ndimage` (the same Gaussian-derivative definitions, truncated at
3.5 sigma).

Scales are in units of the finest voxel spacing, so an anisotropic axis gets a narrower kernel in
voxels (``sigma * min(spacing) / spacing[i]``) and derivatives are taken per physical length.

This module imports only numpy and scipy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["ILASTIK_SIGMAS", "FeatureSpec", "feature_names", "filter_bank", "filter_halo"]

#: ilastik's default scales.
ILASTIK_SIGMAS: tuple[float, ...] = (0.3, 0.7, 1.0, 1.6, 3.5, 5.0, 10.0)

#: Kernel extent in sigmas (ilastik's fastfilters truncates at about 3 to 3.5 sigma).
_TRUNCATE = 3.5

#: Ratio of the inner to the outer scale of the difference of Gaussians (ilastik: 0.66).
_DOG_RATIO = 0.66


@dataclass(frozen=True)
class FeatureSpec:
    """Which filters at which scales.

    Parameters
    ----------
    sigmas : tuple of float
        Scales, in units of the finest voxel spacing.
    smoothing_only_below : float
        Scales below this get only Gaussian smoothing (ilastik: 0.3 is smoothing only).
    """

    sigmas: tuple[float, ...] = ILASTIK_SIGMAS
    smoothing_only_below: float = 0.5

    def __post_init__(self) -> None:
        sigmas = tuple(float(s) for s in self.sigmas)
        if not sigmas or any(not np.isfinite(s) or s <= 0 for s in sigmas):
            raise ValueError(f"sigmas must be positive and finite, got {self.sigmas!r}")
        object.__setattr__(self, "sigmas", sigmas)

    def num_features(self, spatial_dims: int) -> int:
        """Return the number of feature channels per image channel."""
        full = sum(1 for s in self.sigmas if s >= self.smoothing_only_below)
        # smoothing + LoG + gradient magnitude + DoG + d structure-tensor + d Hessian eigenvalues
        return len(self.sigmas) + full * (3 + 2 * spatial_dims)


def feature_names(spec: FeatureSpec, spatial_dims: int) -> list[str]:
    """Names of the channels :func:`filter_bank` returns for one image channel, in order."""
    names = []
    for sigma in spec.sigmas:
        names.append(f"gaussian {sigma:g}")
        if sigma < spec.smoothing_only_below:
            continue
        names += [f"laplacian of gaussian {sigma:g}", f"gradient magnitude {sigma:g}", f"dog {sigma:g}"]
        names += [f"structure tensor eig{i} {sigma:g}" for i in range(spatial_dims)]
        names += [f"hessian eig{i} {sigma:g}" for i in range(spatial_dims)]
    return names


def filter_halo(spec: FeatureSpec, spacing: Sequence[float]) -> tuple[int, ...]:
    """Voxels of context per axis that a feature at a voxel depends on (largest kernel radius)."""
    finest = min(spacing)
    widest = max(spec.sigmas)
    # The structure tensor smooths twice (inner sigma, outer sigma / 2).
    return tuple(int(np.ceil(_TRUNCATE * widest * 1.5 * finest / s)) + 1 for s in spacing)


def filter_bank(
    image: np.ndarray,
    *,
    spacing: Sequence[float] | None = None,
    spec: FeatureSpec | None = None,
) -> np.ndarray:
    """Compute the filter bank of every channel of an image.

    Parameters
    ----------
    image : (C, [Z,] Y, X) ndarray
        Channels first. Not modified.
    spacing : sequence of float, optional
        Physical voxel spacing ``([z,] y, x)``; default isotropic.
    spec : FeatureSpec, optional
        Filters and scales; default ilastik's.

    Returns
    -------
    (C * F, [Z,] Y, X) ndarray of float32
        ``F = spec.num_features(ndim)`` features per channel, channel-major, in the order of
        :func:`feature_names`.
    """
    spec = spec or FeatureSpec()
    image = np.asarray(image)
    if image.ndim not in (3, 4):
        raise ValueError(f"image must be (C, [Z,] Y, X), got shape {image.shape}")
    spatial_dims = image.ndim - 1
    spacing = tuple(float(s) for s in (spacing or (1.0,) * spatial_dims))
    if len(spacing) != spatial_dims:
        raise ValueError(f"spacing {spacing} has {len(spacing)} axes but the image has {spatial_dims}")
    per_channel = spec.num_features(spatial_dims)
    out = np.empty((image.shape[0] * per_channel, *image.shape[1:]), dtype=np.float32)
    for c in range(image.shape[0]):
        _channel_features(
            image[c].astype(np.float32, copy=False),
            spacing,
            spec,
            out[c * per_channel : (c + 1) * per_channel],
        )
    return out


def _channel_features(
    image: np.ndarray, spacing: tuple[float, ...], spec: FeatureSpec, out: np.ndarray
) -> None:
    ndim = image.ndim
    finest = min(spacing)
    scale = tuple(finest / s for s in spacing)  # voxels per unit of finest spacing, per axis

    def sigmas(sigma: float) -> list[float]:
        return [sigma * r for r in scale]

    def derivative(sigma: float, orders: Sequence[int]) -> np.ndarray:
        # Gaussian derivative per physical length (finest-spacing units).
        result = ndimage.gaussian_filter(
            image, sigmas(sigma), order=list(orders), truncate=_TRUNCATE, mode="reflect"
        )
        factor = float(np.prod([r**o for r, o in zip(scale, orders, strict=True)]))
        return result * factor if factor != 1.0 else result

    k = 0
    for sigma in spec.sigmas:
        smooth = ndimage.gaussian_filter(image, sigmas(sigma), truncate=_TRUNCATE, mode="reflect")
        out[k] = smooth
        k += 1
        if sigma < spec.smoothing_only_below:
            continue
        unit = np.eye(ndim, dtype=int)
        gradients = [derivative(sigma, unit[i]) for i in range(ndim)]
        hessian = np.empty((*image.shape, ndim, ndim), dtype=np.float32)
        for i in range(ndim):
            for j in range(i, ndim):
                hessian[..., i, j] = hessian[..., j, i] = derivative(sigma, unit[i] + unit[j])
        out[k] = np.trace(hessian, axis1=-2, axis2=-1)  # Laplacian of Gaussian
        out[k + 1] = np.sqrt(sum(g * g for g in gradients))
        inner = ndimage.gaussian_filter(image, sigmas(_DOG_RATIO * sigma), truncate=_TRUNCATE, mode="reflect")
        out[k + 2] = smooth - inner
        k += 3
        # Structure tensor: gradients at the inner scale sigma, products smoothed at sigma / 2.
        tensor = np.empty_like(hessian)
        for i in range(ndim):
            for j in range(i, ndim):
                tensor[..., i, j] = tensor[..., j, i] = ndimage.gaussian_filter(
                    gradients[i] * gradients[j], sigmas(sigma / 2), truncate=_TRUNCATE, mode="reflect"
                )
        # Eigenvalues in descending order, as ilastik reports them.
        out[k : k + ndim] = np.moveaxis(np.linalg.eigvalsh(tensor)[..., ::-1], -1, 0)
        k += ndim
        out[k : k + ndim] = np.moveaxis(np.linalg.eigvalsh(hessian)[..., ::-1], -1, 0)
        k += ndim
    assert k == len(out)
