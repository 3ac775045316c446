"""Which batch-norm statistics the trained network predicts best with: a diagnosis.

Trains one ``accuracy.py`` method on one annotation, step by step, without the forest blend, and
every ``--every`` steps scores the network's whole-image prediction with three sets of
batch-norm statistics for the same weights:

- *recalibrated*: ``Trainer.recalibrate_batch_norm`` (train-mode passes over ``--batches``
  batches of the training sampler, the batches' statistics averaged: what the trainer uses);
- *pooled* (twice, two draws): the same passes, the statistics pooled over every voxel of every
  batch, so that the variance includes how much the batches' means differ;
- *whole image*: one train-mode pass over the whole image, each layer normalised with the whole
  image's statistics (not blockwise; small images only).

    python benchmarks/bn_statistics.py mri3d/dense/dense/0              # dense labels, 300 steps
    python benchmarks/bn_statistics.py mri3d/scribbles/sparse/0 --method defaults
    python benchmarks/bn_statistics.py mri3d/dense/dense/0 --train intensity_augmentation=0.0

Sets are ``DATASET/KIND/DENSITY/SEED`` as in ``variants.py``. Nothing is written; the figures
and what they led to are in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy
import variants


def pooled_statistics(model: Any, sampler: Any, batches: int) -> Any:
    """A copy of ``model`` whose batch norms hold statistics pooled over ``batches`` batches."""
    import torch

    model = copy.deepcopy(model)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    seen: dict[Any, list[tuple[int, Any, Any]]] = {m: [] for m in norms}

    def record(module: Any, inputs: tuple[Any, ...]) -> None:
        x = inputs[0]
        var, mean = torch.var_mean(x.double(), dim=[0, *range(2, x.ndim)], correction=0)
        seen[module].append((x.numel() // x.shape[1], mean, var))

    handles = [m.register_forward_pre_hook(record) for m in norms]
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.from_numpy(sampler.sample().image))
    for handle in handles:
        handle.remove()
    for m in norms:
        counts = torch.tensor([n for n, _, _ in seen[m]], dtype=torch.float64)[:, None]
        means = torch.stack([mean for _, mean, _ in seen[m]])
        variances = torch.stack([var for _, _, var in seen[m]])
        mean = (counts * means).sum(0) / counts.sum()
        variance = (counts * (variances + (means - mean) ** 2)).sum(0) / counts.sum()
        m.running_mean.copy_(mean.float())
        m.running_var.copy_(variance.float())
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("set", metavar="DATASET/KIND/DENSITY/SEED")
    parser.add_argument("--method", default="dense", choices=[*accuracy.NETWORK_METHODS, "dense"])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--batches", type=int, default=8, help="batches per estimate")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--train", nargs="*", default=[], metavar="NAME=VALUE", help="TrainConfig fields (as variants.py)"
    )
    args = parser.parse_args(argv)

    import torch

    from scribbleseg.core.config import TrainConfig
    from scribbleseg.core.inference import predict_probabilities, probabilities_to_labels
    from scribbleseg.samples import load_sample

    train = {"forest_blend": 0.0, **variants.config_fields(TrainConfig, args.train)}

    try:
        dataset, kind, density, seed = args.set.split("/")
    except ValueError:
        raise SystemExit(f"expected DATASET/KIND/DENSITY/SEED, got {args.set!r}") from None
    sample = load_sample(dataset)
    labels = accuracy.annotate(sample, kind, density, int(seed))
    source, target, trainer = accuracy.build_trainer(
        sample, labels, args.method, seed=int(seed), threads=args.threads, **train
    )
    values = target.class_map.values
    shape = source.spatial_shape
    padded = tuple(-(-n // 16) * 16 for n in shape)
    whole = torch.from_numpy(np.ascontiguousarray(source.read(None, pad_to=padded), dtype=np.float32))[None]
    crop = (slice(None), *(slice(0, n) for n in shape))

    def dice(model: Any) -> float:
        probabilities = predict_probabilities(model, source, device="cpu")
        return accuracy.foreground_dice(probabilities_to_labels(probabilities, values), sample)

    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        trainer.model.train()
        trainer._train_step()
        trainer.step += 1
        if step % args.every:
            continue
        network = trainer.model
        saved = [buffer.clone() for buffer in network.buffers()]
        trainer.recalibrate_batch_norm(args.batches)
        network.eval()
        recalibrated = dice(network)
        with torch.no_grad():
            for buffer, value in zip(network.buffers(), saved, strict=True):
                buffer.copy_(value)
        pooled = [dice(pooled_statistics(network, trainer.sampler, args.batches)) for _ in range(2)]
        batch_statistics = copy.deepcopy(network).train()
        with torch.no_grad():
            logits = batch_statistics(whole).logits[0][crop]
        whole_image = accuracy.foreground_dice(np.asarray(values)[logits.argmax(0).numpy()], sample)
        print(
            f"step {step} ({time.perf_counter() - start:.0f} s): recalibrated {recalibrated:.4f}; "
            f"pooled {pooled[0]:.4f}, again {pooled[1]:.4f}; whole image {whole_image:.4f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
