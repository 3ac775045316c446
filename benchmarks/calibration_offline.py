"""An edge calibration of the decision threshold, measured on cached probabilities (not kept).

The idea: with two classes, pick the threshold (0.1 … 0.9) whose boundary has the largest mean
image gradient, and let the CRF refinement start from the probabilities shifted to it. It was
built (commit 788f0ce) and reverted: in ``accuracy.py``'s paired runs it lost on four of six
(``docs/benchmarks.md``). This script shows, on the probabilities ``blend_offline.py sets`` cached under
``benchmarks/results/blend/`` (180 s of the defaults as they were before the 2D hand-over, seed 0
unless named), the mix of the current defaults at 180 s (the network alone in 2D, ``(1 − w)·network
+ w·forest`` in 3D) refined:

* at the threshold 0.5, at the calibrated one, and at the best one in hindsight (2D);
* calibrated over the wider range ±4 (log-odds), where the mean gradient also rewards weak objects
  vanishing;
* for three classes, a search per class (coordinate ascent of one offset per class over the same
  range), which removes the MRI's low-contrast grey matter.

    python benchmarks/blend_offline.py sets ...                  # the caches (its docstring)
    python benchmarks/calibration_offline.py                     # about 3 min on 2 CPU threads
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import blend_offline

SETS = (
    "nuclei2d/points/dense/0",
    "nuclei2d/points/sparse/0",
    "nuclei2d/points/sparse/1",
    "nuclei2d/scribbles/dense/0",
    "nuclei2d/scribbles/sparse/0",
    "mri3d/points/dense/0",
    "mri3d/points/sparse/0",
    "mri3d/scribbles/dense/0",
    "mri3d/scribbles/sparse/0",
)
#: Thresholds 0.1 … 0.9 as log-odds offsets of the second class, and a wider range.
OFFSETS = tuple(round(-2.2 + 0.2 * i, 1) for i in range(23))
WIDE = tuple(round(-4.0 + 0.4 * i, 1) for i in range(21))


def _boundary(labels: np.ndarray) -> np.ndarray:
    """Voxels with a face neighbour of another label (both sides of every boundary)."""
    mask = np.zeros(labels.shape, dtype=bool)
    for axis in range(labels.ndim):
        ahead = tuple(slice(1, None) if a == axis else slice(None) for a in range(labels.ndim))
        behind = tuple(slice(None, -1) if a == axis else slice(None) for a in range(labels.ndim))
        differs = labels[ahead] != labels[behind]
        mask[ahead] |= differs
        mask[behind] |= differs
    return mask


def edge_strength(image: np.ndarray, spacing: tuple[float, ...], sigma: float = 1.0) -> np.ndarray:
    """Gradient magnitude of a (C, *S) image at ``sigma`` finest-axis voxels, over its channels."""
    from scipy import ndimage

    finest = min(spacing)
    sigmas = [sigma * finest / s for s in spacing]
    return np.sqrt(sum(ndimage.gaussian_gradient_magnitude(c, sigmas) ** 2 for c in image))


def edge_offsets(
    probabilities: np.ndarray, strength: np.ndarray, candidates: tuple[float, ...] = OFFSETS
) -> tuple[float, float]:
    """``(0, b)``: the two-class offset whose boundary has the largest mean gradient (ties: nearest 0)."""
    p = np.clip(probabilities, 1e-6, 1.0)
    log_odds = np.log(p[1]) - np.log(p[0])
    best = (-1.0, 0.0)
    for offset in sorted(candidates, key=abs):
        boundary = _boundary(log_odds + offset > 0)
        if boundary.any() and float(strength[boundary].mean()) > best[0]:
            best = (float(strength[boundary].mean()), float(offset))
    return 0.0, best[1]


def _shifted(probabilities: np.ndarray, offsets: tuple[float, ...] | None) -> np.ndarray:
    """``P · exp(offset)`` renormalised: the prior the refinement starts from."""
    if offsets is None:
        return probabilities
    shifted = probabilities * np.exp(np.asarray(offsets, np.float32)).reshape(
        -1, *[1] * (probabilities.ndim - 1)
    )
    return shifted / shifted.sum(0)


def _refined_dice(
    mix: np.ndarray,
    image: np.ndarray,
    source: Any,
    sigma: Any,
    values: Any,
    sample: Any,
    offsets: tuple[float, ...] | None,
) -> float:
    refined = blend_offline._refine(_shifted(mix, offsets), image, source, sigma, 1.0)
    return blend_offline._dice(refined, values, sample)


def _per_class_offsets(probabilities: np.ndarray, strength: np.ndarray) -> tuple[float, ...]:
    """Coordinate ascent of one offset per class (class 0 fixed) on the boundary's mean gradient."""
    log_p = np.log(np.clip(probabilities, 1e-6, 1.0))
    offsets = np.zeros(len(log_p), dtype=np.float32)
    shape = (-1,) + (1,) * (log_p.ndim - 1)
    for _ in range(2):
        for k in range(1, len(log_p)):
            scores = []
            for value in OFFSETS:
                trial = offsets.copy()
                trial[k] = value
                boundary = _boundary(np.argmax(log_p + trial.reshape(shape), axis=0))
                scores.append(float(strength[boundary].mean()) if boundary.any() else 0.0)
            offsets[k] = OFFSETS[int(np.argmax(scores))]
    return tuple(float(v) for v in offsets)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sets", nargs="*", default=list(SETS), help="dataset/kind/density/seed")
    args = parser.parse_args()

    print(
        "| set (seed) | threshold 0.5 | calibrated (offset) | best in hindsight (offset) | over ±4 (offset) |"
    )
    print("|---|---|---|---|---|")
    for spec in args.sets:
        dataset, kind, density, seed = spec.split("/")
        path = blend_offline.CACHE / f"{dataset}_{kind}_{density}_{seed}.npz"
        if not path.exists():
            print(f"{spec}: no cache at {path}; run blend_offline.py sets {spec} first")
            continue
        data = dict(np.load(path))
        sample, source, target, _ = blend_offline._trainer(dataset, kind, density, int(seed))
        image = source.read(tuple(slice(0, s) for s in source.spatial_shape))
        values = target.class_map.values
        dims = source.spatial_dims
        weight = float(data["w"]) if dims == 3 else 0.0  # the 2D blend has handed over by 180 s
        mix = (1 - weight) * data["net"].astype(np.float32) + weight * data["forest"].astype(np.float32)
        dice = functools.partial(_refined_dice, mix, image, source, data["sigma"], values, sample)
        plain = dice(None)
        strength = edge_strength(image, source.spacing)
        if len(mix) == 2:
            chosen = edge_offsets(mix, strength)
            wide = edge_offsets(mix, strength, WIDE)
            sweep = {v: dice((0.0, v)) for v in OFFSETS[::2]}
            best = max(sweep, key=sweep.get)
            print(
                f"| {spec} | {plain:.3f} | {dice(chosen):.3f} ({chosen[1]:+.1f}) | {sweep[best]:.3f} "
                f"({best:+.1f}) | {dice(wide):.3f} ({wide[1]:+.1f}) |",
                flush=True,
            )
        else:
            offsets = _per_class_offsets(mix, strength)
            shown = ", ".join(f"{v:+.1f}" for v in offsets[1:])
            print(
                f"| {spec} | {plain:.3f} | per class: {dice(offsets):.3f} ({shown}) | – | – |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
