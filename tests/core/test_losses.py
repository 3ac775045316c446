"""Tests of scribbleseg.core.losses: partial CE / Dice, supervised contrastive, dense CRF."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from scribbleseg.core.losses import (
    IGNORE_INDEX,
    SPATIAL_WEIGHT_CUTOFF,
    crf_loss,
    crf_loss_unfold,
    partial_cross_entropy,
    partial_dice_loss,
    supervised_contrastive_loss,
)
from scribbleseg.core.losses.contrastive import balanced_sample, sample_labelled, sampled_contrastive_loss

# ----------------------------------------------------------------------------------------------
# helpers


def make_target(
    generator: torch.Generator,
    batch: int,
    spatial: tuple[int, ...],
    num_classes: int,
    labelled_fraction: float,
) -> torch.Tensor:
    """Random classes with most voxels unlabelled; every class appears in every item."""
    target = torch.randint(0, num_classes, (batch, *spatial), generator=generator)
    unlabelled = torch.rand((batch, *spatial), generator=generator) > labelled_fraction
    target[unlabelled] = IGNORE_INDEX
    flat = target.view(batch, -1)
    for k in range(num_classes):
        flat[:, k] = k  # make sure each class is present at least once
    return target


def one_voxel_per_class(batch: int, spatial: tuple[int, ...], num_classes: int) -> torch.Tensor:
    target = torch.full((batch, *spatial), IGNORE_INDEX, dtype=torch.long)
    flat = target.view(batch, -1)
    for k in range(num_classes):
        flat[:, 3 * k + 1] = k
    return target


# ----------------------------------------------------------------------------------------------
# partial cross-entropy / Dice


@pytest.mark.parametrize("loss_fn", [partial_cross_entropy, partial_dice_loss])
@pytest.mark.parametrize("spatial", [(5, 7), (3, 4, 5)], ids=["2d", "3d"])
def test_partial_losses_ignore_unlabelled_voxels(loss_fn, spatial):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn((2, 3, *spatial), generator=generator, dtype=torch.float64)
    target = make_target(generator, 2, spatial, 3, labelled_fraction=0.3)
    unlabelled = target == IGNORE_INDEX
    assert unlabelled.any() and (~unlabelled).any()

    def value_and_grad(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.clone().requires_grad_(True)
        loss = loss_fn(x, target)
        (grad,) = torch.autograd.grad(loss, x)
        return loss.detach(), grad

    value, grad = value_and_grad(logits)
    changed = logits.clone()
    changed.movedim(1, -1)[unlabelled] = 1e4 * torch.randn(
        (int(unlabelled.sum()), 3), generator=generator, dtype=torch.float64
    )
    changed_value, changed_grad = value_and_grad(changed)

    assert torch.isfinite(value) and value > 0
    assert torch.equal(value, changed_value)
    labelled_grad = grad.movedim(1, -1)[~unlabelled]
    assert torch.equal(labelled_grad, changed_grad.movedim(1, -1)[~unlabelled])
    assert labelled_grad.abs().sum() > 0
    assert torch.all(grad.movedim(1, -1)[unlabelled] == 0)
    assert torch.all(changed_grad.movedim(1, -1)[unlabelled] == 0)


def test_partial_cross_entropy_matches_torch_weighted_mean():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn((2, 4, 6, 5), generator=generator, dtype=torch.float64)
    target = make_target(generator, 2, (6, 5), 4, labelled_fraction=0.4)
    weights = torch.tensor([0.5, 2.0, 1.0, 3.0], dtype=torch.float64)
    expected = F.cross_entropy(logits, target, weight=weights, ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(partial_cross_entropy(logits, target, class_weights=weights), expected)
    expected_unweighted = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(partial_cross_entropy(logits, target), expected_unweighted)


def test_partial_dice_applies_softmax_before_masking():
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn((2, 3, 4, 5, 6), generator=generator, dtype=torch.float64)
    target = make_target(generator, 2, (4, 5, 6), 3, labelled_fraction=0.3)
    target[target == 2] = 0  # class 2 absent from the labels: it must be left out of the mean
    smooth = 1e-5
    probs = torch.softmax(logits, dim=1).movedim(1, -1)
    labelled = target != IGNORE_INDEX
    p = probs[labelled]
    g = F.one_hot(target[labelled], 3).double()
    dice = (2 * (p * g).sum(0) + smooth) / (p.sum(0) + g.sum(0) + smooth)
    expected = (1 - dice[:2]).mean()
    torch.testing.assert_close(partial_dice_loss(logits, target, smooth=smooth), expected)


def test_partial_dice_is_small_for_confident_correct_prediction():
    target = make_target(torch.Generator().manual_seed(3), 1, (8, 8), 2, labelled_fraction=0.5)
    logits = 30.0 * F.one_hot(target.clamp_min(0), 2).movedim(-1, 1).double()
    assert partial_dice_loss(logits, target) < 1e-6
    assert partial_cross_entropy(logits, target) < 1e-6


# ----------------------------------------------------------------------------------------------
# supervised contrastive


def supcon_reference(embeddings: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """Loop-based SupCon over all labelled voxels of each item (no sampling)."""
    anchor_losses = []
    for item in range(embeddings.shape[0]):
        labels = target[item].flatten()
        z = F.normalize(embeddings[item].flatten(1).t()[labels >= 0], dim=1)
        classes = labels[labels >= 0]
        if len(classes.unique()) < 2:
            continue
        for i in range(len(classes)):
            others = [a for a in range(len(classes)) if a != i]
            positives = [p for p in others if classes[p] == classes[i]]
            if not positives:
                continue
            log_denominator = torch.logsumexp(torch.stack([z[i] @ z[a] / temperature for a in others]), 0)
            anchor_losses.append(
                -torch.stack([z[i] @ z[p] / temperature - log_denominator for p in positives]).mean()
            )
    return torch.stack(anchor_losses).mean()


@pytest.mark.parametrize("spatial", [(5, 7), (3, 4, 5)], ids=["2d", "3d"])
def test_contrastive_matches_reference_without_sampling(spatial):
    generator = torch.Generator().manual_seed(4)
    embeddings = torch.randn((2, 6, *spatial), generator=generator, dtype=torch.float64)
    target = make_target(generator, 2, spatial, 3, labelled_fraction=0.4)
    loss = supervised_contrastive_loss(embeddings, target, temperature=0.2, max_samples=10_000)
    torch.testing.assert_close(loss, supcon_reference(embeddings, target, 0.2))


@pytest.mark.parametrize("seed", range(5))
def test_contrastive_is_lower_for_class_clustered_embeddings(seed):
    generator = torch.Generator().manual_seed(seed)
    batch, dim, spatial, num_classes = 2, 8, (12, 13), 3
    target = make_target(generator, batch, spatial, num_classes, labelled_fraction=0.5)
    centroids = torch.randn((num_classes, dim), generator=generator)
    noise = 0.3 * torch.randn((batch, *spatial, dim), generator=generator)
    clustered = (centroids[target.clamp_min(0)] + noise).movedim(-1, 1)  # (B, E, Y, X)
    permutation = torch.randperm(math.prod(spatial), generator=generator)
    shuffled = clustered.flatten(2)[:, :, permutation].reshape(clustered.shape)

    def loss(embeddings: torch.Tensor) -> torch.Tensor:
        return supervised_contrastive_loss(
            embeddings, target, max_samples=64, generator=torch.Generator().manual_seed(seed)
        )

    assert loss(clustered) < loss(shuffled)


def test_sampled_contrastive_loss_on_padded_batches_matches_the_reference():
    # Items with different numbers of labelled voxels (padding), one with a single class (no
    # sample) and one with nothing labelled: the batched loss is the per-item reference, and
    # its gradient is finite everywhere (no NaN from rows without pairs).
    generator = torch.Generator().manual_seed(11)
    embeddings = torch.randn((4, 5, 6, 7), generator=generator, dtype=torch.float64, requires_grad=True)
    target = make_target(generator, 4, (6, 7), 3, labelled_fraction=0.5)
    target[1, :4] = IGNORE_INDEX  # fewer labelled voxels than item 0
    target[2][target[2] != IGNORE_INDEX] = 1  # one class only
    target[3] = IGNORE_INDEX
    positions, classes = sample_labelled(target.flatten(1), 10_000, torch.Generator().manual_seed(0))
    assert torch.equal(classes[2], torch.full_like(classes[2], IGNORE_INDEX))
    assert torch.equal(classes[3], torch.full_like(classes[3], IGNORE_INDEX))
    assert (classes[1] == IGNORE_INDEX).any()  # padded up to the longest item
    flat = embeddings.flatten(2)
    sampled = torch.gather(flat, 2, positions[:, None].expand(-1, flat.shape[1], -1))
    loss = sampled_contrastive_loss(sampled, classes, temperature=0.2)
    torch.testing.assert_close(loss, supcon_reference(embeddings, target, 0.2))
    loss.backward()
    assert torch.isfinite(embeddings.grad).all()
    assert embeddings.grad[2:].abs().sum() == 0  # items without a sample get no gradient

    none = sampled_contrastive_loss(sampled[2:], classes[2:], temperature=0.2)
    assert none.item() == 0.0 and none.requires_grad


def testbalanced_sample_takes_an_equal_share_per_class():
    classes = torch.cat([torch.zeros(50), torch.ones(3), torch.full((40,), 2)]).long()
    classes = classes[torch.randperm(len(classes), generator=torch.Generator().manual_seed(5))]
    positions, sampled_classes = balanced_sample(classes, 12, torch.Generator().manual_seed(6))
    assert torch.equal(torch.bincount(sampled_classes), torch.tensor([4, 3, 4]))
    assert torch.equal(classes[positions], sampled_classes)
    assert len(positions.unique()) == len(positions)
    again, _ = balanced_sample(classes, 12, torch.Generator().manual_seed(6))
    assert torch.equal(positions, again)
    assert balanced_sample(torch.zeros(10, dtype=torch.long), 12, None) is None


def test_contrastive_under_autocast_computes_in_float32():
    generator = torch.Generator().manual_seed(7)
    embeddings = torch.randn((1, 8, 9, 10), generator=generator)
    target = make_target(generator, 1, (9, 10), 2, labelled_fraction=0.5)
    expected = supervised_contrastive_loss(embeddings, target, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = supervised_contrastive_loss(
            embeddings.bfloat16(), target, generator=torch.Generator().manual_seed(0)
        )
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected, rtol=2e-2, atol=0)


# ----------------------------------------------------------------------------------------------
# CRF: brute-force dense reference


def dense_crf_reference(
    probs: torch.Tensor,
    image: torch.Tensor,
    *,
    spacing,
    sigma_spatial,
    sigma_intensity,
    window_radius,
    features=None,
    sigma_features=None,
    mask=None,
) -> tuple[torch.Tensor, int]:
    """``sum_k S_kᵀ W (1 - S_k) / (B N)`` with the full N × N matrix W built from the definition.

    Applies the same SPATIAL_WEIGHT_CUTOFF rule as the implementations. Returns the loss and the
    number of in-window pairs removed by that rule.
    """
    batch, num_classes, *spatial = probs.shape
    n = math.prod(spatial)
    grids = torch.meshgrid(*(torch.arange(s, dtype=torch.float64) for s in spatial), indexing="ij")
    coords = torch.stack(grids, dim=-1).reshape(n, len(spatial))
    delta = coords[:, None, :] - coords[None, :, :]  # (N, N, D)
    in_window = (delta.abs() <= torch.tensor(window_radius, dtype=torch.float64)).all(-1)
    in_window &= ~torch.eye(n, dtype=torch.bool)
    physical = delta * torch.tensor(spacing, dtype=torch.float64)
    spatial_weight = torch.exp(-(physical**2).sum(-1) / (2 * sigma_spatial**2))
    cut = in_window & (spatial_weight < SPATIAL_WEIGHT_CUTOFF)
    total = probs.new_zeros(())
    for b in range(batch):
        intensities = image[b].reshape(image.shape[1], n).t()
        intensity_distance = ((intensities[:, None] - intensities[None]) ** 2).sum(-1)
        w = torch.exp(-intensity_distance / (2 * sigma_intensity**2)) * spatial_weight
        if features is not None:
            f = F.normalize(features[b].reshape(features.shape[1], n).t(), dim=1)
            w = w * torch.exp(-((f[:, None] - f[None]) ** 2).sum(-1) / (2 * sigma_features**2))
        w = w * (in_window & ~cut)
        if mask is not None:
            m = mask[b].reshape(n).double()
            w = w * m[:, None] * m[None, :]
        s = probs[b].reshape(num_classes, n)
        for k in range(num_classes):
            total = total + s[k] @ w @ (1 - s[k])
    return total / (batch * n), int(cut.sum())


@dataclass(frozen=True)
class CRFCase:
    batch: int
    classes: int
    channels: int
    spatial: tuple[int, ...]
    spacing: tuple[float, ...]
    window_radius: tuple[int, ...]
    sigma_spatial: float
    sigma_intensity: float = 0.7
    feature_channels: int = 0
    with_mask: bool = False
    expect_cut: bool = False


CRF_CASES = {
    "2d": CRFCase(2, 3, 2, (7, 9), (1.5, 1.0), (1, 2), sigma_spatial=2.0),
    "2d-features-mask": CRFCase(
        2, 3, 2, (7, 9), (1.5, 1.0), (1, 2), sigma_spatial=2.0, feature_channels=4, with_mask=True
    ),
    "2d-window-beyond-array": CRFCase(1, 2, 1, (3, 9), (1.0, 2.0), (3, 1), sigma_spatial=3.0),
    "3d": CRFCase(1, 2, 1, (5, 6, 7), (2.0, 1.0, 0.5), (1, 2, 3), sigma_spatial=1.5),
    "3d-features-mask": CRFCase(
        1, 2, 1, (5, 6, 7), (2.0, 1.0, 0.5), (1, 2, 3), sigma_spatial=1.5, feature_channels=3, with_mask=True
    ),
    "3d-cutoff": CRFCase(
        2,
        3,
        2,
        (5, 6, 7),
        (2.0, 1.0, 0.5),
        (1, 2, 3),
        sigma_spatial=0.5,
        sigma_intensity=1.0,
        expect_cut=True,
    ),
}


def make_crf_inputs(
    case: CRFCase, seed: int = 0, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, dict]:
    generator = torch.Generator().manual_seed(seed)
    shape = (case.batch, *case.spatial)
    logits = 2.0 * torch.randn((case.batch, case.classes, *case.spatial), generator=generator, dtype=dtype)
    kwargs = dict(
        image=torch.randn((case.batch, case.channels, *case.spatial), generator=generator, dtype=dtype),
        spacing=case.spacing,
        sigma_spatial=case.sigma_spatial,
        sigma_intensity=case.sigma_intensity,
        window_radius=case.window_radius,
    )
    if case.feature_channels:
        features = torch.randn(
            (case.batch, case.feature_channels, *case.spatial), generator=generator, dtype=dtype
        )
        kwargs.update(features=features, sigma_features=0.6)
    if case.with_mask:
        kwargs["mask"] = torch.rand(shape, generator=generator) > 0.3
    return logits, kwargs


def crf_value_and_grads(loss_fn, logits: torch.Tensor, kwargs: dict):
    """Loss, gradient wrt the probabilities, gradient wrt the logits through the softmax."""
    logits = logits.clone().requires_grad_(True)
    probs = torch.softmax(logits, dim=1)
    probs_leaf = probs.detach().requires_grad_(True)
    value = loss_fn(probs_leaf, **kwargs)
    (grad_probs,) = torch.autograd.grad(value, probs_leaf)
    (grad_logits,) = torch.autograd.grad(loss_fn(torch.softmax(logits, dim=1), **kwargs), logits)
    return value.detach(), grad_probs, grad_logits


@pytest.mark.parametrize("case", CRF_CASES.values(), ids=CRF_CASES.keys())
def test_crf_equals_dense_brute_force(case):
    logits, kwargs = make_crf_inputs(case)
    expected = crf_value_and_grads(lambda p, **kw: dense_crf_reference(p, **kw)[0], logits, kwargs)
    _, num_cut = dense_crf_reference(torch.softmax(logits, 1), **kwargs)
    assert (num_cut > 0) == case.expect_cut
    for loss_fn in (crf_loss, crf_loss_unfold):
        actual = crf_value_and_grads(loss_fn, logits, kwargs)
        assert actual[0] > 0
        for name, a, e in zip(("value", "grad wrt probs", "grad wrt logits"), actual, expected, strict=True):
            torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-13, msg=f"{loss_fn.__name__}: {name}")


@pytest.mark.parametrize("case", CRF_CASES.values(), ids=CRF_CASES.keys())
def test_crf_with_the_accelerator_kernel_exponent_equals_dense_brute_force(case, monkeypatch):
    """The GPU way of building each offset's kernel (one (G, N) difference) is checked here on the CPU."""
    import functools

    from scribbleseg.core.losses import crf

    logits, kwargs = make_crf_inputs(case)
    expected = crf_value_and_grads(lambda p, **kw: dense_crf_reference(p, **kw)[0], logits, kwargs)
    monkeypatch.setattr(crf, "_window_products", functools.partial(crf._window_products, per_channel=False))
    actual = crf_value_and_grads(crf_loss, logits, kwargs)
    for name, a, e in zip(("value", "grad wrt probs", "grad wrt logits"), actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-13, msg=name)


@pytest.mark.parametrize("case", CRF_CASES.values(), ids=CRF_CASES.keys())
def test_crf_unfold_equals_crf_in_float32(case):
    logits, kwargs = make_crf_inputs(case, seed=1, dtype=torch.float32)
    ours = crf_value_and_grads(crf_loss, logits, kwargs)
    reference = crf_value_and_grads(crf_loss_unfold, logits, kwargs)
    for a, e in zip(ours, reference, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-7)


def test_crf_is_zero_for_a_constant_labelling_and_passes_no_gradient_to_the_image():
    case = CRF_CASES["3d-features-mask"]
    _, kwargs = make_crf_inputs(case)
    probs = torch.zeros((1, 2, *case.spatial), dtype=torch.float64)
    probs[:, 1] = 1.0
    assert crf_loss(probs, **kwargs) == 0
    kwargs["image"].requires_grad_(True)
    kwargs["features"].requires_grad_(True)
    probs.requires_grad_(True)
    crf_loss(probs, **kwargs).backward()
    assert probs.grad is not None
    assert kwargs["image"].grad is None and kwargs["features"].grad is None


@pytest.mark.parametrize("loss_fn", [crf_loss, crf_loss_unfold])
def test_crf_leaves_its_inputs_unchanged(loss_fn):
    logits, kwargs = make_crf_inputs(CRF_CASES["3d-features-mask"], dtype=torch.float32)
    probs = torch.softmax(logits, 1).requires_grad_(True)
    before = {name: value.clone() for name, value in kwargs.items() if isinstance(value, torch.Tensor)}
    probs_before = probs.detach().clone()
    loss_fn(probs, **kwargs).backward()
    assert torch.equal(probs.detach(), probs_before)
    for name, value in before.items():
        assert torch.equal(kwargs[name], value), name


@pytest.mark.parametrize(
    "dtype, tolerance", [(torch.float16, 5e-3), (torch.bfloat16, 3e-2)], ids=["fp16", "bf16"]
)
@pytest.mark.parametrize("spatial", [(13, 11), (5, 9, 7)], ids=["2d", "3d"])
def test_crf_half_precision_probs_close_to_float32(dtype, tolerance, spatial):
    case = CRFCase(1, 3, 1, spatial, (1.0,) * (len(spatial) - 1) + (0.7,), (1,) * len(spatial), 1.5)
    logits, kwargs = make_crf_inputs(case, seed=2, dtype=torch.float32)
    value32, grad_probs32, grad_logits32 = crf_value_and_grads(crf_loss, logits, kwargs)
    kwargs_half = {**kwargs, "image": kwargs["image"].to(dtype)}
    value, grad_probs, grad_logits = crf_value_and_grads(crf_loss, logits.to(dtype), kwargs_half)
    assert value.dtype == torch.float32 and grad_probs.dtype == dtype and grad_logits.dtype == dtype
    for half, full in ((value, value32), (grad_probs, grad_probs32), (grad_logits, grad_logits32)):
        assert torch.isfinite(half).all()
        torch.testing.assert_close(
            half.float(), full, rtol=tolerance, atol=tolerance * full.abs().max().item()
        )


def test_crf_under_autocast_returns_float32():
    logits, kwargs = make_crf_inputs(CRF_CASES["2d"], dtype=torch.float32)
    expected = crf_loss(torch.softmax(logits, 1), **kwargs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = crf_loss(torch.softmax(logits, 1), **kwargs)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, expected)


_GOOD_CRF = dict(spacing=(1.0, 1.0), sigma_spatial=1.0, sigma_intensity=1.0, window_radius=(1, 1))


@pytest.mark.parametrize(
    "change, argument",
    [
        (dict(spacing=(1.0, 1.0, 1.0)), "spacing"),
        (dict(spacing=(1.0, 0.0)), "spacing"),
        (dict(window_radius=(1,)), "window_radius"),
        (dict(window_radius=(1, -1)), "window_radius"),
        (dict(sigma_spatial=0.0), "sigma_spatial"),
        (dict(sigma_intensity=-1.0), "sigma_intensity"),
        (dict(features=torch.zeros(1, 4, 6, 7)), "sigma_features"),
        (dict(features=torch.zeros(1, 4, 6, 6), sigma_features=1.0), "features"),
        (dict(mask=torch.ones(1, 6, 7)), "mask"),
        (dict(mask=torch.ones(2, 6, 7, dtype=torch.bool)), "mask"),
        (dict(image=torch.zeros(1, 1, 7, 6)), "image"),
    ],
)
def test_crf_rejects_bad_arguments(change, argument):
    kwargs = {"image": torch.zeros(1, 1, 6, 7), **_GOOD_CRF, **change}
    for loss_fn in (crf_loss, crf_loss_unfold):
        with pytest.raises(ValueError, match=argument):
            loss_fn(torch.full((1, 2, 6, 7), 0.5), **kwargs)


def test_crf_rejects_probs_that_are_not_2d_or_3d():
    with pytest.raises(ValueError, match="probs"):
        crf_loss(
            torch.zeros(1, 2, 5),
            torch.zeros(1, 1, 5),
            **{**_GOOD_CRF, "spacing": (1.0,), "window_radius": (1,)},
        )


@pytest.mark.parametrize(
    "loss_fn, kwargs, argument",
    [
        (partial_cross_entropy, dict(class_weights=torch.ones(2)), "class_weights"),
        (partial_cross_entropy, dict(class_weights=-torch.ones(3)), "class_weights"),
        (partial_dice_loss, dict(smooth=-1.0), "smooth"),
        (supervised_contrastive_loss, dict(temperature=0.0), "temperature"),
        (supervised_contrastive_loss, dict(max_samples=1), "max_samples"),
        (sampled_contrastive_loss, dict(temperature=-0.1), "temperature"),
    ],
)
def test_losses_reject_bad_options(loss_fn, kwargs, argument):
    target = torch.zeros(1, 4, 5, dtype=torch.long)
    with pytest.raises(ValueError, match=argument):
        loss_fn(torch.zeros(1, 3, 4, 5), target, **kwargs)


@pytest.mark.parametrize("loss_fn", [partial_cross_entropy, partial_dice_loss, supervised_contrastive_loss])
def test_losses_reject_mismatched_or_out_of_range_target(loss_fn):
    with pytest.raises(ValueError, match="target"):
        loss_fn(torch.zeros(1, 3, 4, 5), torch.zeros(1, 4, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="target"):
        loss_fn(torch.zeros(1, 3, 4, 5), torch.full((1, 4, 5), -2, dtype=torch.long))
    with pytest.raises(ValueError, match="target"):
        loss_fn(torch.zeros(1, 3, 4, 5), torch.zeros(1, 4, 5))


# ----------------------------------------------------------------------------------------------
# degenerate labels: one voxel per class, no labelled voxel


def all_terms(logits: torch.Tensor, target: torch.Tensor, embeddings: torch.Tensor, image: torch.Tensor):
    spatial_dims = target.ndim - 1
    probs = torch.softmax(logits, dim=1)
    crf_kwargs = dict(
        spacing=(1.0,) * spatial_dims,
        sigma_spatial=1.0,
        sigma_intensity=0.5,
        window_radius=(1,) * spatial_dims,
    )
    return {
        "cross_entropy": partial_cross_entropy(logits, target),
        "dice": partial_dice_loss(logits, target),
        "contrastive": supervised_contrastive_loss(embeddings, target),
        "crf": crf_loss(probs, image, **crf_kwargs),
        "crf_dynamic": crf_loss(probs, image, features=embeddings, sigma_features=0.5, **crf_kwargs),
    }


@pytest.mark.parametrize("spatial", [(5, 7), (3, 5, 7)], ids=["2d", "3d"])
def test_every_term_finite_with_one_labelled_voxel_per_class(spatial):
    generator = torch.Generator().manual_seed(8)
    logits = torch.randn((2, 3, *spatial), generator=generator, requires_grad=True)
    embeddings = torch.randn((2, 4, *spatial), generator=generator, requires_grad=True)
    image = torch.randn((2, 1, *spatial), generator=generator)
    target = one_voxel_per_class(2, spatial, 3)
    for name, value in all_terms(logits, target, embeddings, image).items():
        grads = torch.autograd.grad(value, (logits, embeddings), allow_unused=True, retain_graph=True)
        assert torch.isfinite(value), name
        assert all(g is None or torch.isfinite(g).all() for g in grads), name
    # no anchor has a positive: the contrastive loss is a zero that still keeps the graph
    contrastive = supervised_contrastive_loss(embeddings, target)
    assert contrastive == 0 and contrastive.requires_grad


@pytest.mark.parametrize("loss_fn", [partial_cross_entropy, partial_dice_loss, supervised_contrastive_loss])
def test_no_labelled_voxel_gives_a_graph_keeping_zero(loss_fn):
    prediction = torch.randn((2, 3, 4, 5), generator=torch.Generator().manual_seed(9), requires_grad=True)
    target = torch.full((2, 4, 5), IGNORE_INDEX, dtype=torch.long)
    value = loss_fn(prediction, target)
    assert value == 0 and value.requires_grad
    value.backward()
    assert prediction.grad is not None and torch.all(prediction.grad == 0)
