"""Loss ablation on a shipped sample: what each loss term adds under the same CPU time budget.

Trains the default network with pCE only, pCE + CRF, pCE + contrastive, pCE + dynamic CRF, and all
terms (weights from ``REGULARIZED_WEIGHTS``), each for the same wall-clock budget on the same
scribbles, predicts the whole image and reports the foreground Dice against the ground truth and
the number of steps done.

    python benchmarks/ablation.py                      # nuclei2d, 60 s per run, seed 0
    python benchmarks/ablation.py --budget 30 --seeds 0 1 2 --sample mri3d
    python benchmarks/ablation.py --markdown docs/ablation.md   # also write the table to a file
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from scribbleseg.core.annotations import labels_to_target
from scribbleseg.core.config import REGULARIZED_WEIGHTS, LossConfig, TrainConfig
from scribbleseg.core.engine import Trainer
from scribbleseg.core.inference import predict_probabilities, probabilities_to_labels
from scribbleseg.core.metrics import dice_iou
from scribbleseg.core.volume import ImageSource
from scribbleseg.samples import load_sample

DEFAULT = LossConfig()
ON = REGULARIZED_WEIGHTS
OFF = {name: 0.0 for name in ON} | {"teacher_weight": 0.0}  # the forest teacher off too
VARIANTS = {
    "pCE only": replace(DEFAULT, **OFF),
    "pCE + CRF": replace(DEFAULT, **{**OFF, "crf_weight": ON["crf_weight"]}),
    "pCE + contrastive": replace(DEFAULT, **{**OFF, "contrastive_weight": ON["contrastive_weight"]}),
    "pCE + dynamic CRF": replace(DEFAULT, **{**OFF, "dynamic_crf_weight": ON["dynamic_crf_weight"]}),
    "all": replace(DEFAULT, **{**OFF, **ON}),
}


def run_one(sample_name: str, loss: LossConfig, *, budget: float, seed: int) -> tuple[float, int]:
    sample = load_sample(sample_name)
    source = ImageSource(sample.image, spacing=sample.spacing)
    target = labels_to_target(sample.scribbles, spacing=sample.spacing, background=sample.background_class)
    trainer = Trainer(
        source,
        target,
        loss_config=loss,
        # No weight average or forest blend either: the rows isolate the loss terms.
        train_config=TrainConfig(
            time_budget=budget, seed=seed, device="cpu", weight_average=0.0, forest_blend=0.0
        ),
    )
    for _ in trainer.run():
        pass
    probabilities = predict_probabilities(trainer.model, source, device="cpu")
    labels = probabilities_to_labels(probabilities, target.class_map.values)
    scores = dice_iou(labels, sample.ground_truth)
    foreground = [s["dice"] for v, s in scores.items() if v != sample.background_class]
    return statistics.fmean(foreground), trainer.step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sample", default="nuclei2d", choices=["nuclei2d", "mri3d"])
    parser.add_argument("--budget", type=float, default=60.0, help="training seconds per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    lines = [
        f"Ablation on `{args.sample}`: {args.budget:g} s CPU training per run ({args.threads} threads), "
        f"seeds {args.seeds}; foreground Dice of the whole-image prediction.",
        "",
        "| loss | foreground Dice (mean ± sd) | steps done | per seed |",
        "|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    for name, loss in VARIANTS.items():
        dices, steps = [], []
        for seed in args.seeds:
            started = time.perf_counter()
            dice, n = run_one(args.sample, loss, budget=args.budget, seed=seed)
            dices.append(dice)
            steps.append(n)
            print(
                f"  {name} seed {seed}: Dice {dice:.4f}, {n} steps, {time.perf_counter() - started:.0f} s",
                file=sys.stderr,
                flush=True,
            )
        spread = statistics.stdev(dices) if len(dices) > 1 else 0.0
        row = (
            f"| {name} | {statistics.fmean(dices):.3f} ± {spread:.3f} | {statistics.fmean(steps):.0f} | "
            + ", ".join(f"{d:.3f}" for d in dices)
            + " |"
        )
        lines.append(row)
        print(row, flush=True)
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
