from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from scribbleseg.core.features import ILASTIK_SIGMAS, FeatureSpec, feature_names, filter_bank, filter_halo


@pytest.mark.parametrize(("spatial_dims", "expected"), [(2, 7 + 6 * 7), (3, 7 + 6 * 9)])
def test_ilastik_default_bank_has_ilastik_feature_count(spatial_dims: int, expected: int) -> None:
    # 0.3 is smoothing only; the six larger scales get smoothing, LoG, gradient magnitude, DoG and
    # d structure-tensor and d Hessian eigenvalues.
    spec = FeatureSpec()
    assert spec.sigmas == ILASTIK_SIGMAS
    assert spec.num_features(spatial_dims) == expected == len(feature_names(spec, spatial_dims))


def test_shapes_dtype_and_channels_are_channel_major() -> None:
    rng = np.random.default_rng(0)
    image = rng.random((2, 9, 20, 17)).astype(np.float64)
    spec = FeatureSpec(sigmas=(0.3, 1.0))
    features = filter_bank(image, spacing=(2.0, 1.0, 1.0), spec=spec)
    per_channel = spec.num_features(3)
    assert features.shape == (2 * per_channel, 9, 20, 17)
    assert features.dtype == np.float32
    # Channel 1's features are those of channel 1 alone; the input is untouched.
    alone = filter_bank(image[1:], spacing=(2.0, 1.0, 1.0), spec=spec)
    np.testing.assert_allclose(features[per_channel:], alone, rtol=1e-6)
    assert image.dtype == np.float64


def test_known_values_on_a_ramp_and_a_paraboloid() -> None:
    y, x = np.mgrid[0:64, 0:64].astype(np.float32)
    spec = FeatureSpec(sigmas=(1.0,))
    names = feature_names(spec, 2)
    ramp = filter_bank((3 * x)[None], spec=spec)
    inner = (slice(16, 48), slice(16, 48))
    np.testing.assert_allclose(ramp[names.index("gaussian 1")][inner], 3 * x[inner], atol=1e-3)
    np.testing.assert_allclose(ramp[names.index("gradient magnitude 1")][inner], 3.0, atol=1e-3)
    # Truncated derivative kernels leave an error of about 1e-4 of the value (up to 144 here).
    np.testing.assert_allclose(ramp[names.index("laplacian of gaussian 1")][inner], 0.0, atol=0.05)
    # Structure tensor of a ramp: one eigenvalue 9 (gradient squared), the other 0, descending.
    np.testing.assert_allclose(ramp[names.index("structure tensor eig0 1")][inner], 9.0, atol=1e-2)
    np.testing.assert_allclose(ramp[names.index("structure tensor eig1 1")][inner], 0.0, atol=1e-2)
    bowl = filter_bank(((x - 32) ** 2 + 2 * (y - 32) ** 2)[None], spec=spec)
    # Hessian of x^2 + 2 y^2 is diag(4, 2) in (y, x): eigenvalues 4 and 2; Laplacian 6 (scipy's
    # truncated second-derivative kernels come within 3 %).
    np.testing.assert_allclose(bowl[names.index("hessian eig0 1")][inner], 4.0, rtol=0.03)
    np.testing.assert_allclose(bowl[names.index("hessian eig1 1")][inner], 2.0, rtol=0.03)
    np.testing.assert_allclose(bowl[names.index("laplacian of gaussian 1")][inner], 6.0, rtol=0.03)


def test_spacing_makes_scales_physical() -> None:
    # A volume with 2 mm slices sampled from an isotropic one: the smoothing along z is half as
    # many voxels, so both agree on the shared voxels.
    rng = np.random.default_rng(1)
    fine = ndimage.gaussian_filter(rng.random((40, 24, 24)), 2).astype(np.float32)
    spec = FeatureSpec(sigmas=(3.5,))
    iso = filter_bank(fine[None], spacing=(1.0, 1.0, 1.0), spec=spec)[0]
    thick = filter_bank(fine[None, ::2], spacing=(2.0, 1.0, 1.0), spec=spec)[0]
    inner = (slice(6, 14), slice(8, 16), slice(8, 16))
    np.testing.assert_allclose(thick[inner], iso[::2][inner], rtol=0.02, atol=1e-3)
    assert filter_halo(spec, (2.0, 1.0, 1.0))[0] < filter_halo(spec, (2.0, 1.0, 1.0))[1]


@pytest.mark.parametrize(
    ("image", "kwargs", "match"),
    [
        (np.zeros((5, 5)), {}, "C, \\[Z,\\] Y, X"),
        (np.zeros((1, 5, 5)), {"spacing": (1.0, 1.0, 1.0)}, "spacing"),
    ],
)
def test_bad_input_is_named(image: np.ndarray, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        filter_bank(image, **kwargs)


@pytest.mark.parametrize("sigmas", [(), (0.0,), (float("nan"),), (-1.0,)])
def test_bad_scales_are_refused(sigmas: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="sigmas"):
        FeatureSpec(sigmas=sigmas)
