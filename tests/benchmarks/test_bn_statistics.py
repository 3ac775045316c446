"""``benchmarks/bn_statistics.py``: batch-norm statistics pooled over batches, on a real sample."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import accuracy
import bn_statistics
from scribbleseg.samples import load_sample


def _norms(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def test_pooled_statistics_are_those_of_all_batches_together():
    sample = load_sample("nuclei2d")
    labels = accuracy.annotate(sample, "scribbles", "sparse", 0)
    _, _, trainer = accuracy.build_trainer(sample, labels, "pce", seed=0, threads=1, forest_blend=0.0)
    drawn, draw = [], trainer.sampler.sample

    def remember(*args, **kwargs):
        batch = draw(*args, **kwargs)
        drawn.append(torch.from_numpy(batch.image))
        return batch

    trainer.sampler.sample = remember
    pooled = bn_statistics.pooled_statistics(trainer.model, trainer.sampler, batches=3)
    assert not pooled.training and len(drawn) == 3
    # The first batch norm's input depends on no batch norm: its statistics over the three
    # batches at once are what pooling must give.
    first, inputs = _norms(trainer.model)[0], []
    handle = first.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
    with torch.no_grad():
        trainer.model.train()(torch.cat(drawn))
    handle.remove()
    var, mean = torch.var_mean(inputs[0], dim=[0, 2, 3], correction=0)
    got = _norms(pooled)[0]
    torch.testing.assert_close(got.running_mean, mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got.running_var, var, rtol=1e-4, atol=1e-5)
    # More than the mean of the batches' own variances (what averaging batch statistics gives).
    batches = inputs[0].split(len(drawn[0]))
    per_batch = torch.stack([torch.var(x, dim=[0, 2, 3], correction=0) for x in batches])
    assert (got.running_var > per_batch.mean(0)).any()


def test_a_short_run_prints_every_estimate(capsys):
    argv = ["nuclei2d/scribbles/sparse/0", "--steps", "2", "--every", "2", "--batches", "1"]
    assert bn_statistics.main(argv) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(
        r"step 2 \(\d+ s\): recalibrated 0\.\d{4}; pooled 0\.\d{4}, again 0\.\d{4}; "
        r"whole image 0\.\d{4}",
        line,
    ), line
