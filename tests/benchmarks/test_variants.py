"""``benchmarks/variants.py``: a configuration variant reaches the trainer and is scored."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import accuracy
import variants
from scribbleseg.samples import load_sample


def test_fields_are_python_literals():
    assert variants._fields(["size='large'", "teacher_steps=1000", "features=(4, 4, 8, 8, 8, 4)"]) == {
        "size": "large",
        "teacher_steps": 1000,
        "features": (4, 4, 8, 8, 8, 4),
    }
    with pytest.raises(SystemExit, match="NAME=VALUE"):
        variants._fields(["teacher_steps"])
    with pytest.raises(SystemExit, match="not a Python literal"):
        variants._fields(["size=large"])


def test_an_unknown_field_is_named():
    with pytest.raises(SystemExit, match="LossConfig has no field teacher_step"):
        variants.main(["nuclei2d/points/sparse/0", "--loss", "teacher_step=7"])


def test_overrides_reach_the_trainer():
    sample = load_sample("nuclei2d")
    labels = accuracy.annotate(sample, "points", "sparse", 0)
    _, _, trainer = accuracy.build_trainer(
        sample,
        labels,
        "defaults",
        seed=0,
        threads=1,
        model={"size": "large"},
        loss={"teacher_steps": 7},
        learning_rate=1e-3,
    )
    assert trainer.model_config.size == "large"
    assert trainer.loss_config.teacher_steps == 7
    assert trainer.train_config.learning_rate == 1e-3
    assert trainer.loss_config.crf_weight == accuracy.loss_for("defaults").crf_weight  # the rest as before


def test_a_short_variant_run_prints_its_dice(capsys):
    args = ["nuclei2d/points/sparse/0", "--budgets", "2", "--threads", "1"]
    assert (
        variants.main([*args, "--model", "features=(4, 4, 8, 8, 8, 4)", "--loss", "teacher_weight=0.0"]) == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("nuclei2d/points/sparse/0: Dice 2 s: 0.")
    assert "steps" in out
