"""Whole-volume prediction of large synthetic 3D volumes: peak memory must not grow with the volume.

For each size (Z x Y x X) this script

1. writes a synthetic, structured 2-channel float32 volume to zarr on disk, slab by slab
   (channel 0: bright blobs ("nuclei"); channel 1: gyroid sheets ("membranes"); both with noise),
2. (once) draws scribbles on a few slices of the smallest volume, trains a model briefly on a crop
   around them (the training CLI loads the labels whole, so training uses a crop),
3. runs ``scribbleseg predict MODEL IMAGE.zarr -o OUT.zarr`` in a subprocess under a small wrapper
   that reports the OS's peak RSS of that subprocess (``getrusage(RUSAGE_CHILDREN)``),
4. checks the output is marked complete and scores a few slabs against the known ground truth.

It prints a table: volume size, peak RSS of the prediction process, wall time, voxels/s.

    python benchmarks/large_image.py --sizes 256x512x512,256x1024x1024
    python benchmarks/large_image.py --sizes 256x512x512,1024x1024x1024   # 8.6 GB, ~1.5 h on 2 cores

Each volume is written once and reused by later runs (``--workdir``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import time

import numpy as np

CLASSES = {1: "background", 2: "blob", 3: "membrane"}
BLOB_CELL = 24  # blob lattice period (voxels)
GYROID_PERIOD = 9.0  # membrane period (voxels)
MEMBRANE_HALF_WIDTH = 0.12  # |gyroid| below this is membrane
NOISE = 0.35


# --------------------------------------------------------------------------- synthetic volume
def _cell_random(cells: np.ndarray, salt: int) -> np.ndarray:
    """Deterministic pseudo-random numbers in [0, 1) per integer cell coordinate (hash)."""
    h = (
        (cells[..., 0] * 73856093)
        ^ (cells[..., 1] * 19349663)
        ^ (cells[..., 2] * 83492791)
        ^ (salt * 2654435761)
    )
    h = (h ^ (h >> 13)) * 1274126177
    return ((h ^ (h >> 16)) & 0xFFFFFF).astype(np.float64) / float(0x1000000)


def ground_truth_and_image(
    z0: int, z1: int, y0: int, y1: int, x0: int, x1: int, *, noise_seed: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Classes (Z, Y, X) uint8 and the 2-channel float32 image of a box, from global coordinates."""
    z = np.arange(z0, z1)[:, None, None]
    y = np.arange(y0, y1)[None, :, None]
    x = np.arange(x0, x1)[None, None, :]
    # Blobs: one sphere (or none) inside each lattice cell, so only the voxel's own cell matters.
    cz, cy, cx = z // BLOB_CELL, y // BLOB_CELL, x // BLOB_CELL
    cells = np.stack(np.broadcast_arrays(cz, cy, cx), axis=-1).astype(np.int64)
    radius = 4.0 + 6.0 * _cell_random(cells, 1)
    present = _cell_random(cells, 2) < 0.55
    dist2 = np.zeros(cells.shape[:-1])
    for axis, coordinate in enumerate((z, y, x)):
        centre = (
            cells[..., axis] * BLOB_CELL + radius + (BLOB_CELL - 2 * radius) * _cell_random(cells, 3 + axis)
        )
        dist2 = dist2 + (coordinate - centre) ** 2
    distance = np.sqrt(dist2)
    blob = present & (distance <= radius)
    blob_signal = np.where(present, np.clip(radius - distance + 0.5, 0.0, 1.0), 0.0)
    # Membranes: a gyroid, separable into products of 1D sines / cosines.
    w = 2 * np.pi / GYROID_PERIOD
    gyroid = np.sin(w * x) * np.cos(w * y) + np.sin(w * y) * np.cos(w * z) + np.sin(w * z) * np.cos(w * x)
    membrane_signal = np.exp(-((gyroid / MEMBRANE_HALF_WIDTH) ** 2) / 2)
    membrane = (np.abs(gyroid) < MEMBRANE_HALF_WIDTH) & ~blob
    truth = np.ones(blob.shape, dtype=np.uint8)
    truth[blob] = 2
    truth[membrane] = 3
    image = np.stack([blob_signal + 0.25 * membrane_signal, membrane_signal + 0.1 * blob_signal]).astype(
        np.float32
    )
    if noise_seed is not None:
        rng = np.random.default_rng(noise_seed)
        image += NOISE * rng.standard_normal(image.shape, dtype=np.float32)
    return truth, image


def write_volume(path: pathlib.Path, shape: tuple[int, int, int]) -> float:
    """Write the (2, Z, Y, X) float32 volume slab by slab (64 slices); returns seconds (0 if it exists)."""
    import zarr

    if (path / "zarr.json").exists() and json.loads((path / "zarr.json").read_text()).get(
        "attributes", {}
    ).get("complete_volume"):
        return 0.0
    start = time.perf_counter()
    array = zarr.create_array(
        store=str(path),
        shape=(2, *shape),
        chunks=(1, 64, 256, 256),
        dtype="float32",
        compressors=None,  # noise does not compress; raw chunks write faster
        dimension_names=("c", "z", "y", "x"),
        attributes={"scribbleseg": {"axes": "CZYX", "spacing": [1.0, 1.0, 1.0]}},
        overwrite=True,
    )
    nz, ny, nx = shape
    slab_rows = 256  # Y rows per piece: bounds memory for wide volumes
    for z0 in range(0, nz, 64):
        for y0 in range(0, ny, slab_rows):
            z1, y1 = min(z0 + 64, nz), min(y0 + slab_rows, ny)
            _, image = ground_truth_and_image(z0, z1, y0, y1, 0, nx, noise_seed=z0 * 100_003 + y0)
            array[:, z0:z1, y0:y1, :] = image
    array.attrs["complete_volume"] = True
    return time.perf_counter() - start


# --------------------------------------------------------------------------- training
def scribbles(truth: np.ndarray, slices: list[int], seed: int) -> np.ndarray:
    """Strokes on a few Z slices: skeletons of eroded class regions, a subset of them."""
    from scipy import ndimage as ndi
    from skimage.morphology import skeletonize

    rng = np.random.default_rng(seed)
    out = np.zeros_like(truth)
    for z in slices:
        for value in CLASSES:
            regions, n = ndi.label(truth[z] == value)
            sizes = ndi.sum_labels(np.ones_like(regions), regions, index=np.arange(1, n + 1))
            largest = int(np.argmax(sizes)) + 1 if n else 0
            for i in range(1, n + 1):
                if i != largest and rng.random() > 0.5:
                    continue
                region = regions == i
                if value != 3:  # membranes are thin: their skeleton is the stroke
                    region = ndi.binary_erosion(region, iterations=2)
                out[z][skeletonize(region) & region] = value
    return out


def train_model(workdir: pathlib.Path, steps: int, threads: int) -> pathlib.Path:
    """Train on a crop (48 x 256 x 256) with scribbles on 3 slices; save the model folder."""
    import torch

    from scribbleseg.core.annotations import labels_to_target
    from scribbleseg.core.config import ModelConfig, TrainConfig
    from scribbleseg.core.engine import Trainer
    from scribbleseg.core.volume import ImageSource
    from scribbleseg.io.checkpoint import save_model

    model_path = workdir / "model"
    if (model_path / "model.json").exists():
        return model_path
    torch.set_num_threads(threads)
    truth, image = ground_truth_and_image(0, 48, 0, 256, 0, 256, noise_seed=12345)
    labels = scribbles(truth, [8, 24, 40], seed=0)
    source = ImageSource(image, channel_axis=0)
    target = labels_to_target(labels, spacing=source.spacing)
    trainer = Trainer(
        source,
        target,
        model_config=ModelConfig(size="small"),
        train_config=TrainConfig(steps=steps, device="cpu", num_threads=threads, seed=0),
    )
    start = time.perf_counter()
    for _ in trainer.run():
        pass
    seconds = time.perf_counter() - start
    print(f"trained {steps} steps on {int((labels > 0).sum())} scribbled voxels in {seconds:.0f} s")
    save_model(model_path, trainer.model, trainer.metadata())
    return model_path


# --------------------------------------------------------------------------- measuring
def measured(command: list[str]) -> None:
    """Run ``command`` as the only child; print its peak RSS (kB) as the OS counts it, and its exit code."""
    result = subprocess.run(command)
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"peak_rss_kb": peak_kb, "returncode": result.returncode}))


def predict(
    model: pathlib.Path, image: pathlib.Path, out: pathlib.Path, extra: list[str], threads: int
) -> dict:
    command = [sys.executable, "-m", "scribbleseg.cli", "predict", str(model), str(image), "-o", str(out)]
    command += ["--device", "cpu", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    wrapper = subprocess.run(
        [sys.executable, __file__, "_measure", "--", *command], capture_output=True, text=True, env=env
    )
    seconds = time.perf_counter() - start
    sys.stderr.write(wrapper.stderr)
    facts = json.loads(wrapper.stdout.strip().splitlines()[-1])
    if facts["returncode"] != 0:
        raise SystemExit(f"prediction failed with exit {facts['returncode']}")
    return {"seconds": seconds, "peak_rss_mb": facts["peak_rss_kb"] / 1024}


def score(out: pathlib.Path, shape: tuple[int, int, int]) -> float:
    """Mean foreground Dice (blobs, membranes) on three 16-slice slabs against the ground truth."""
    import zarr

    from scribbleseg.core.metrics import dice_iou

    labels = zarr.open_array(str(out), mode="r")
    assert labels.attrs["scribbleseg"]["complete"] is True, "output not marked complete"
    nz, ny, nx = shape
    dices = []
    for z0 in (0, nz // 2, nz - 16):
        y0, x0 = ny // 3, nx // 3
        y1, x1 = min(ny, y0 + 256), min(nx, x0 + 256)
        truth, _ = ground_truth_and_image(z0, z0 + 16, y0, y1, x0, x1, noise_seed=None)
        scores = dice_iou(labels[z0 : z0 + 16, y0:y1, x0:x1], truth, ignore_value=0)
        dices += [scores[v]["dice"] for v in (2, 3) if v in scores]
    return float(np.mean(dices))


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "_measure":
        measured(sys.argv[3:])
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="256x512x512,256x1024x1024", help="ZxYxX,ZxYxX,...")
    parser.add_argument("--workdir", default="/tmp/scribbleseg-large-image")
    parser.add_argument("--steps", type=int, default=60, help="training steps")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch")
    parser.add_argument("--block-size", help="passed to 'scribbleseg predict --block-size'")
    parser.add_argument("--delete-volumes", action="store_true", help="remove each volume after its run")
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in text.split("x")) for text in args.sizes.split(",")]
    workdir = pathlib.Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    model = train_model(workdir, args.steps, args.threads)
    extra = ["--quiet"] + (["--block-size", args.block_size] if args.block_size else [])

    rows = []
    for shape in sizes:
        name = "x".join(map(str, shape))
        image = workdir / f"image_{name}.zarr"
        written = write_volume(image, shape)
        voxels = math.prod(shape)
        gigabytes = 2 * 4 * voxels / 1e9
        if written:
            print(f"wrote {name} ({gigabytes:.2f} GB) in {written:.0f} s")
        out = workdir / f"labels_{name}.zarr"
        shutil.rmtree(out, ignore_errors=True)  # measure a full prediction, not a resumed one
        facts = predict(model, image, out, extra, args.threads)
        row = {
            "shape": name,
            "voxels": voxels,
            "image_gb": round(gigabytes, 3),
            "peak_rss_mb": round(facts["peak_rss_mb"], 1),
            "seconds": round(facts["seconds"], 1),
            "voxels_per_s": round(voxels / facts["seconds"]),
            "dice": round(score(out, shape), 3),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.delete_volumes:
            shutil.rmtree(image, ignore_errors=True)
    (workdir / "results.json").write_text(json.dumps(rows, indent=2))

    print()
    header = ["volume (Z x Y x X, 2 ch f32)", "size GB", "peak RSS MB", "wall s", "voxels/s", "Dice"]
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, (30, 8, 12, 8, 10, 6), strict=True)))
    for row in rows:
        print(
            f"{row['shape']:>30} {row['image_gb']:>8.2f} {row['peak_rss_mb']:>12.0f} {row['seconds']:>8.0f} "
            f"{row['voxels_per_s']:>10.0f} {row['dice']:>6.3f}"
        )
    peaks = [r["peak_rss_mb"] for r in rows]
    if len(peaks) > 1:
        ratio = max(peaks) / min(peaks)
        print(
            f"peak RSS ratio largest/smallest: {ratio:.2f} (limit 1.20); max {max(peaks):.0f} MB (limit 3000)"
        )


if __name__ == "__main__":
    main()
