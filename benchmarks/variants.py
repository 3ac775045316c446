"""Train one configuration variant on a few sets, as ``accuracy.py`` does, and print its Dice.

For trying a change of a default before building it in: the variant is given as fields of
``ModelConfig``, ``LossConfig`` and ``TrainConfig`` (``NAME=VALUE``, the value a Python literal),
on top of ``accuracy.py``'s method (``defaults`` unless ``--method``). Each set is
``DATASET/KIND/DENSITY/SEED`` (``mri3d/dense/dense/1`` for dense labels). Nothing is written to
``benchmarks/results/accuracy.jsonl``: compare against its runs of the same set and seed (the
same annotation), remembering that two runs of the same seed differ by a few thousandths on
scribbles and by up to 0.18 on five clicks per class (``docs/benchmarks.md``). The runs of
2026-11-22 there:

    python benchmarks/variants.py nuclei2d/scribbles/sparse/0 nuclei2d/scribbles/dense/0 \\
        --model size="'large'"                                           # the large 2D network
    python benchmarks/variants.py nuclei2d/scribbles/sparse/0 nuclei2d/scribbles/dense/0 \\
        nuclei2d/scribbles/sparse/1 --loss teacher_steps=1000000000      # a teacher that stays
    python benchmarks/variants.py mri3d/dense/dense/1 mri3d/dense/dense/0 mri3d/dense/dense/2 \\
        --method dense --train learning_rate=1e-3                        # a lower 3D learning rate

And of 2026-12-04 (fifth session): the defaults without the intensity jitter of training patches

    python benchmarks/variants.py mri3d/scribbles/sparse/0 mri3d/scribbles/dense/0 \\
        mri3d/scribbles/sparse/1 mri3d/scribbles/dense/1 --train intensity_augmentation=0.0
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy


def _fields(pairs: list[str]) -> dict[str, Any]:
    """``["a=1", "b='x'"]`` → ``{"a": 1, "b": "x"}`` (values are Python literals)."""
    fields = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.isidentifier():
            raise SystemExit(f"expected NAME=VALUE, got {pair!r}")
        try:
            fields[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise SystemExit(f"{pair!r}: the value is not a Python literal (quote strings: 'x')") from None
    return fields


def config_fields(config: type, pairs: list[str]) -> dict[str, Any]:
    """:func:`_fields` of ``pairs``, each a field of the dataclass ``config``."""
    given = _fields(pairs)
    unknown = sorted(set(given) - {field.name for field in fields(config)})
    if unknown:
        raise SystemExit(f"{config.__name__} has no field {', '.join(unknown)}")
    return given


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sets", nargs="+", metavar="DATASET/KIND/DENSITY/SEED")
    parser.add_argument(
        "--method",
        default="defaults",
        choices=[m for m in (*accuracy.NETWORK_METHODS, "dense") if m != "norefine"],
    )
    parser.add_argument("--model", nargs="*", default=[], metavar="NAME=VALUE", help="ModelConfig fields")
    parser.add_argument("--loss", nargs="*", default=[], metavar="NAME=VALUE", help="LossConfig fields")
    parser.add_argument("--train", nargs="*", default=[], metavar="NAME=VALUE", help="TrainConfig fields")
    parser.add_argument("--budgets", type=float, nargs="+", default=[60.0, 180.0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    from scribbleseg.core.config import LossConfig, ModelConfig, TrainConfig
    from scribbleseg.samples import load_sample

    model, loss = config_fields(ModelConfig, args.model), config_fields(LossConfig, args.loss)
    overrides = {"model": model, "loss": loss, **config_fields(TrainConfig, args.train)}

    for spec in args.sets:
        try:
            dataset, kind, density, seed = spec.split("/")
        except ValueError:
            raise SystemExit(f"expected DATASET/KIND/DENSITY/SEED, got {spec!r}") from None
        sample = load_sample(dataset)
        labels = accuracy.annotate(sample, kind, density, int(seed))
        outcome = accuracy.run_network(
            sample,
            labels,
            args.method,
            seed=int(seed),
            budgets=args.budgets,
            threads=args.threads,
            **overrides,
        )
        dice = ", ".join(f"{budget} s: {value:.4f}" for budget, value in outcome["dice"].items())
        print(f"{spec}: Dice {dice}; steps {json.dumps(outcome['steps'])}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
