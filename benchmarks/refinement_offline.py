"""Offline refinements of the defaults' final probabilities: prevalence EM and mean-field CRF inference.

Trains the defaults on one simulated annotation per data set (seed, 180 s on 2 CPU threads, as
``accuracy.py``), saves the whole-image probabilities (the network's, and its mix with the forest
blend) to ``--cache`` (reused when there), and prints the mean foreground Dice of

* the probabilities as predicted;
* the prevalence correction of ``core/prevalence.py`` applied once to the mix (the built-in option
  ``TrainConfig.prevalence_correction`` corrects the forest and the network during training
  instead, see ``accuracy.py --methods prevalence``);
* mean-field inference of a Potts dense CRF on the mix, with the windowed kernel of the CRF loss
  (spatial Gaussian σ_s = 3 px, window radius 3, intensity Gaussian σ_i = k × the image's noise):
  ``Q ∝ P · exp(λ Σ_y W_xy Q(y))``, 5 iterations (:class:`scribbleseg.core.refine.MeanField`).
  This script chose its settings; k = 2, λ = 1 is now the built-in CRF refinement
  (``TrainConfig.crf_refinement``), measured in training by ``accuracy.py`` (``docs/benchmarks.md``).

And the same on synthetic blurred disks painted only in their cores (the forest's probabilities),
where the undecided band is the objects' rim.

    python benchmarks/refinement_offline.py                    # 8 sets + disks; about 30 min first
    python benchmarks/refinement_offline.py --sets nuclei2d/scribbles/sparse --k 2 --lam 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy

SETS = [f"{d}/{a}/{n}" for d in accuracy.DATASETS for a in accuracy.ANNOTATIONS for n in ("sparse", "dense")]


def trained_probabilities(
    dataset: str, kind: str, density: str, seed: int, budget: float, cache: Path
) -> dict:
    """Whole-image probabilities of the defaults after ``budget`` seconds (cached as .npz)."""
    path = cache / f"{dataset}_{kind}_{density}_{seed}_defaults.npz"
    if path.exists():
        return dict(np.load(path))
    from scribbleseg.core.inference import predict_probabilities
    from scribbleseg.samples import load_sample

    sample = load_sample(dataset)
    labels = accuracy.annotate(sample, kind, density, seed)
    source, target, trainer = accuracy.build_trainer(
        sample, labels, "defaults", seed=seed, threads=2, time_budget=budget
    )
    for _ in trainer.run():
        pass
    model = trainer.model
    model.refinement = None  # the probabilities before any refinement: this script applies its own
    blend = model.forest_blend
    mix = predict_probabilities(model, source, device="cpu")
    model.forest_blend = None
    network = predict_probabilities(model, source, device="cpu")
    result = {
        "net": network.astype(np.float32),
        "mix": mix.astype(np.float32),
        "labels": labels,
        "gt": sample.ground_truth,
        "values": np.array(target.class_map.values),
        "w": blend.weight if blend else 0.0,
    }
    cache.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **result)
    return result


def normalised(image: np.ndarray) -> np.ndarray:
    """The image as the trainer normalises it (:class:`~scribbleseg.core.volume.Normalisation`)."""
    from scribbleseg.core.volume import ImageSource, Normalisation

    return Normalisation.from_source(ImageSource(image)).apply(image[None])[0]


def noise(image: np.ndarray) -> float:
    """Noise sd of a one-channel image (:func:`scribbleseg.core.refine.noise_of`)."""
    from scribbleseg.core.refine import noise_of

    return noise_of(image[None])[0]


def mean_field(
    probabilities: np.ndarray, image: np.ndarray, spacing, *, lam: float, sigma_intensity: float
) -> np.ndarray:
    """Potts mean field with the built-in kernel, weight ``lam`` and width ``sigma_intensity``."""
    from scribbleseg.core.refine import MeanField

    return MeanField((sigma_intensity,), weight=lam).apply(probabilities, image[None], spacing)


def dice(probabilities: np.ndarray, values: np.ndarray, truth: np.ndarray) -> float:
    predicted = values[probabilities.argmax(0)]
    return float(
        np.mean(
            [
                2 * ((predicted == v) & (truth == v)).sum() / ((predicted == v).sum() + (truth == v).sum())
                for v in values[1:]
            ]
        )
    )


def disks() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(forest probabilities, normalised image, class values, truth) of the blurred-disks test case."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "core"))
    from test_prevalence import _disks

    from scribbleseg.core.annotations import labels_to_target
    from scribbleseg.core.pixel_classifier import ForestTeacher
    from scribbleseg.core.volume import ImageSource

    image, labels, truth = _disks()
    teacher = ForestTeacher(ImageSource(image), labels_to_target(labels), trees=20, threads=1)
    teacher.fit()
    return (
        teacher.probabilities.astype(np.float32),
        normalised(image),
        np.array([1, 2]),
        truth.astype(int) + 1,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sets", nargs="+", default=SETS, help="dataset/annotation/density")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", type=float, default=180.0)
    parser.add_argument("--k", nargs="+", type=float, default=[2.0, 3.0], help="σ_i = k × noise")
    parser.add_argument("--lam", nargs="+", type=float, default=[1.0, 2.0], help="mean-field weight λ")
    parser.add_argument("--no-disks", action="store_true")
    parser.add_argument("--cache", type=Path, default=accuracy.ROOT / "benchmarks" / "results" / "refinement")
    args = parser.parse_args(argv)

    from scribbleseg.core.prevalence import estimate_factors, reweight
    from scribbleseg.samples import load_sample

    header = ["set", "noise", "network", "mix", "mix + EM"] + [
        f"MF k={k:g} λ={lam:g}" for k in args.k for lam in args.lam
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    cases = []
    for name in args.sets:
        dataset, kind, density = name.split("/")
        data = trained_probabilities(dataset, kind, density, args.seed, args.budget, args.cache)
        sample = load_sample(dataset)
        cases.append(
            (
                name,
                data["net"],
                data["mix"],
                normalised(sample.image.astype(np.float32)),
                sample.spacing,
                data["values"],
                data["gt"],
            )
        )
    if not args.no_disks:
        probabilities, image, values, truth = disks()
        cases.append(("disks (forest)", None, probabilities, image, (1.0, 1.0), values, truth))
    for name, network, mix, image, spacing, values, truth in cases:
        sd = noise(image)
        row = [
            name,
            f"{sd:.4f}",
            "–" if network is None else f"{dice(network, values, truth):.3f}",
            f"{dice(mix, values, truth):.3f}",
        ]
        row.append(f"{dice(reweight(mix, estimate_factors(mix)), values, truth):.3f}")
        for k in args.k:
            for lam in args.lam:
                refined = mean_field(mix, image, spacing, lam=lam, sigma_intensity=k * sd)
                row.append(f"{dice(refined, values, truth):.3f}")
        print("| " + " | ".join(row) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
