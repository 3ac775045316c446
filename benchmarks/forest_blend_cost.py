"""What the forest blend and the CRF refinement cost at prediction: time, and the saved forest's size.

What it measures
----------------
For each shipped sample: train the defaults for ``--seconds`` on the shipped scribbles (long enough
for the forest teacher to come in), then predict the whole image as the model is (forest blend and
CRF refinement), without the refinement (``ScribbleNet.refinement = None``), and without either
(``forest_blend = None`` too), and save the model to see the size of each file (``forest.skops``
is the forest). The differences of the prediction times are the refinement (5 mean-field
iterations over the image) and the forest (its filter bank, computed block by block with its halo,
and 100 trees).

How to run
----------
::

    python benchmarks/forest_blend_cost.py                 # both samples, 2 threads, CPU
    python benchmarks/forest_blend_cost.py --samples mri3d --threads 4
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path


def measure(name: str, *, seconds: float, threads: int) -> str:
    import torch

    from scribbleseg.core.annotations import labels_to_target
    from scribbleseg.core.config import TrainConfig
    from scribbleseg.core.engine import Trainer
    from scribbleseg.core.inference import predict_probabilities
    from scribbleseg.core.volume import ImageSource
    from scribbleseg.io.checkpoint import save_model
    from scribbleseg.samples import load_sample

    torch.set_num_threads(threads)
    sample = load_sample(name)
    source = ImageSource(sample.image, spacing=sample.spacing)
    target = labels_to_target(sample.scribbles, spacing=sample.spacing, background=sample.background_class)
    config = TrainConfig(seed=0, device="cpu", num_threads=threads, time_budget=seconds)
    trainer = Trainer(source, target, train_config=config)
    for _ in trainer.run():
        pass
    blend = trainer.model.forest_blend
    if blend is None:
        return f"{name}: the forest did not come in within {seconds:g} s — run longer (--seconds)"
    refinement = trainer.model.refinement
    started = time.perf_counter()
    predict_probabilities(trainer.model, source, device="cpu")
    everything = time.perf_counter() - started
    trainer.model.refinement = None
    started = time.perf_counter()
    predict_probabilities(trainer.model, source, device="cpu")
    with_blend = time.perf_counter() - started
    trainer.model.forest_blend = None
    started = time.perf_counter()
    predict_probabilities(trainer.model, source, device="cpu")
    without = time.perf_counter() - started
    trainer.model.forest_blend, trainer.model.refinement = blend, refinement
    with tempfile.TemporaryDirectory() as folder:
        path = save_model(Path(folder) / "model", trainer.model, trainer.metadata())
        sizes = ", ".join(f"{f} {os.path.getsize(path / f) / 1e6:.1f} MB" for f in sorted(os.listdir(path)))
    voxels = math.prod(source.spatial_shape)
    refined = (
        f"{everything:.1f} s with the blend and the CRF refinement "
        f"({(everything - with_blend) / voxels * 1e6:.1f} µs per voxel for the refinement), "
        if refinement is not None
        else "(no CRF refinement: TrainConfig.crf_refinement is 0) "
    )
    return (
        f"{name} {tuple(source.spatial_shape)}, {len(trainer.class_map.values)} classes: prediction "
        f"{refined}{with_blend:.1f} s with the blend (weight {blend.weight:.2f}), {without:.1f} s with "
        f"neither ({(with_blend - without) / voxels * 1e6:.1f} µs per voxel for the forest); files: {sizes}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", nargs="+", default=["nuclei2d", "mri3d"])
    parser.add_argument("--seconds", type=float, default=25.0, help="training time before measuring")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    for name in args.samples:
        print(measure(name, seconds=args.seconds, threads=args.threads), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
