"""The forest teacher's own Dice, as fitted and after the CRF refinement (``LossConfig.teacher_refinement``).

For each set (``dataset/kind/density/seed``, the annotations of ``accuracy.py``) it fits the
teacher's forest on every label (``ForestTeacher``, as the trainer does), then refines its map with
the prediction's mean-field CRF (``MeanField.for_noise`` of the image's noise) at the given
intensity widths (multiples of the noise; 2 is the default) and weights ``λ``. It prints the Dice of
the forest, of each refinement, and of the forest's mean confidence against the refined map's
before and after :func:`~scribbleseg.core.pixel_classifier.temper` (the tempered map has the
refined map's labels, so the same Dice). No network is trained: a set takes a few seconds in 2D
and about 45 s in 3D on 2 CPU threads. With ``--self-training R`` it also fits the teacher as the
trainer does with ``LossConfig.teacher_self_training = R`` (refined as the trainer refines it,
R rounds of pseudo-labels, ``ForestTeacher.self_training``) and prints its soft labels' Dice (about
5 s more per set in 2D).

    python benchmarks/teacher_offline.py nuclei2d                 # all 12 nuclei sets, widths 2, 3, 4
    python benchmarks/teacher_offline.py mri3d --widths 2 --weights 1        # about 9 min
    python benchmarks/teacher_offline.py nuclei2d --sets scribbles/sparse/0 points/sparse/0
    python benchmarks/teacher_offline.py nuclei2d --widths 2 --weights 1 --self-training 8
    python benchmarks/teacher_offline.py nuclei2d --widths 2 --weights 1 --self-training 8 \
        --pseudo-boundary 0 2 3 4                                 # where the pseudo-labels are drawn
    python benchmarks/teacher_offline.py mri3d --sets scribbles/{sparse,dense}/{0,1,2} --widths 2 \
        --weights 1 --banks preview ilastik             # the plain forest on ilastik's bank too
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dataset", choices=["nuclei2d", "mri3d"])
    parser.add_argument(
        "--sets",
        nargs="+",
        metavar="KIND/DENSITY/SEED",
        help="default: scribbles and points, sparse and dense, seeds 0, 1, 2",
    )
    parser.add_argument("--widths", type=float, nargs="+", default=[2.0, 3.0, 4.0], help="× the noise")
    parser.add_argument("--weights", type=float, nargs="+", default=[1.0, 2.0], help="λ")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--self-training", type=int, default=0, metavar="R", help="also the teacher self-trained R rounds"
    )
    parser.add_argument(
        "--pseudo-boundary",
        type=float,
        nargs="+",
        metavar="W",
        help="self-training with each of these ForestTeacher.pseudo_boundary (default: the trainer's, "
        "LossConfig.teacher_pseudo_boundary; 0 = pseudo-labels spread evenly)",
    )
    parser.add_argument(
        "--pseudo-draws",
        type=int,
        nargs="+",
        default=[None],
        metavar="D",
        help="self-training with each of these ForestTeacher.pseudo_draws (default: its default)",
    )
    parser.add_argument(
        "--forest-seeds",
        type=int,
        nargs="+",
        metavar="S",
        help="self-training with each of these forest seeds (default: the annotation's seed)",
    )
    parser.add_argument(
        "--banks",
        nargs="+",
        choices=["preview", "ilastik"],
        default=["preview"],
        help="each filter bank: the teacher's (PREVIEW_FEATURES) or ilastik's; with --self-training the "
        "self-trained teacher on each, else also the plain forest on each bank other than the teacher's",
    )
    args = parser.parse_args(argv)

    import torch

    from scribbleseg.core.features import FeatureSpec
    from scribbleseg.core.inference import probabilities_to_labels
    from scribbleseg.core.pixel_classifier import ForestTeacher, temper
    from scribbleseg.core.refine import NOISE_WIDTHS, MeanField
    from scribbleseg.samples import load_sample

    torch.set_num_threads(args.threads)
    sample = load_sample(args.dataset)
    sets = args.sets or [
        f"{kind}/{density}/{seed}"
        for kind, density, seed in itertools.product(("scribbles", "points"), ("sparse", "dense"), (0, 1, 2))
    ]
    for spec in sets:
        try:
            kind, density, seed = spec.split("/")
        except ValueError:
            raise SystemExit(f"expected KIND/DENSITY/SEED, got {spec!r}") from None
        labels = accuracy.annotate(sample, kind, density, int(seed))
        source, target, trainer = accuracy.build_trainer(
            sample, labels, "defaults", seed=int(seed), threads=args.threads
        )
        teacher = ForestTeacher(source, target, seed=int(seed), threads=args.threads)
        start = time.perf_counter()
        if not teacher.fit():
            print(f"{args.dataset}/{spec}: the forest could not be fitted (fewer than two classes?)")
            continue
        fitted = time.perf_counter() - start
        forest = teacher.probabilities.astype(np.float32)
        values = target.class_map.values

        def dice(probabilities: np.ndarray, values: tuple[int, ...] = values) -> float:
            return accuracy.foreground_dice(probabilities_to_labels(probabilities, values), sample)

        default = trainer.refinement()
        assert default is not None
        noise = tuple(s / NOISE_WIDTHS for s in default.sigma_intensity)
        image = source.read(tuple(slice(0, n) for n in source.spatial_shape))
        cells, seconds = [], 0.0
        for width, weight in itertools.product(args.widths, args.weights):
            refinement = MeanField(
                tuple(width * n for n in noise), weight=weight, window_radius=default.window_radius
            )
            start = time.perf_counter()
            refined = refinement.apply(forest, image, source.spacing)
            seconds = time.perf_counter() - start
            tempered = temper(refined, forest)
            cells.append(
                f"k{width:g} λ{weight:g} {dice(refined):.3f} "
                f"(confidence {refined.max(axis=0).mean():.3f} → {tempered.max(axis=0).mean():.3f})"
            )
        if args.self_training:
            boundaries = args.pseudo_boundary or [trainer.loss_config.teacher_pseudo_boundary]
            for bank, draws, boundary in itertools.product(args.banks, args.pseudo_draws, boundaries):
                scores, start = [], time.perf_counter()
                for forest_seed in args.forest_seeds or [int(seed)]:
                    options = {"pseudo_boundary": boundary}
                    if draws is not None:
                        options["pseudo_draws"] = draws
                    trained = ForestTeacher(
                        source,
                        target,
                        seed=forest_seed,
                        threads=args.threads,
                        refinement=trainer.teacher_refinement(),
                        self_training=args.self_training,
                        spec=FeatureSpec() if bank == "ilastik" else None,
                        **options,
                    )
                    if trained.fit():
                        assert trained.soft_labels is not None
                        scores.append(dice(trained.soft_labels.astype(np.float32)))
                if scores:
                    each = ", ".join(f"{score:.3f}" for score in scores)
                    per_fit = (time.perf_counter() - start) / len(scores)
                    cells.append(
                        f"self-trained {args.self_training} {np.mean(scores):.3f} ({bank} bank, "
                        f"{trained.pseudo_draws} draws, boundary {boundary:g}; {each}; "
                        f"{per_fit:.1f} s per fit)"
                    )
        elif "ilastik" in args.banks:  # the teacher's own bank is the forest above
            start = time.perf_counter()
            other = ForestTeacher(source, target, seed=int(seed), threads=args.threads, spec=FeatureSpec())
            if other.fit():
                assert other.probabilities is not None
                score = dice(other.probabilities.astype(np.float32))
                cells.append(
                    f"forest on the ilastik bank {score:.4f} (fit {time.perf_counter() - start:.1f} s)"
                )
        print(
            f"{args.dataset}/{spec}: forest {dice(forest):.4f} (confidence {forest.max(axis=0).mean():.3f}, "
            f"fit {fitted:.1f} s, refinement {seconds:.1f} s); " + "; ".join(cells),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
