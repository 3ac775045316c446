"""Speed: training and inference throughput, loss cost, time to the first preview — one command.

Sections of the table (each also printed as it finishes):

1. **Training** steps/s and voxels/s for 2D (512 x 512 patches, batch 8, the ``nuclei2d`` sample)
   and 3D (96^3 patches, batch 2, the ``mri3d`` sample), pCE only vs the full loss (pCE +
   contrastive + CRF + dynamic CRF, all active from the first step). The ratio is the cost of the
   regularizers. FLOPs per step are counted with ``torch.utils.flop_counter``.
2. **CRF loss** forward + backward alone, ours vs the naive unfold implementation, 2D and 3D:
   time and peak memory, each in a fresh process (``benchmarks/crf_memory.py`` workers).
3. **Previews**: seconds from "train" (trainer construction included) to the first preview of a
   512 x 512 view of ``nuclei2d``, and from a new stroke (``Trainer.add_labels``) to the first
   preview computed after it was applied.
4. **Inference**: the network alone on one window (float32, bf16, bf16 + channels-last), and
   whole-image sliding-window prediction of a 3D volume in voxels/s, float32 vs mixed precision,
   for the default (``small``) and the ``large`` network. On a GPU: achieved TFLOP/s and an
   estimate of the memory traffic (GB/s) against the device's peak.

Every optimisation that is on by default is measured on and off in the same run (the "before /
after" rows). On CPU the script uses 2 torch threads; other processes on the same cores distort the
times (the load average is printed).

    python benchmarks/speed.py                      # CPU here, CUDA if present
    python benchmarks/speed.py --device cpu --markdown docs/benchmarks.md
    python benchmarks/speed.py --quick              # fewer steps and repeats (a smoke run)

With ``--markdown FILE`` the table replaces the block between ``<!-- speed:start -->`` and
``<!-- speed:end -->`` in FILE (appended when the markers are missing).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import crf_memory
from scribbleseg.core.annotations import labels_to_target
from scribbleseg.core.config import REGULARIZED_WEIGHTS, LossConfig, ModelConfig, TrainConfig
from scribbleseg.core.engine import Trainer
from scribbleseg.core.inference import (
    amp_dtype,
    autocast_context,
    predict_probabilities,
    resolve_device,
)
from scribbleseg.core.models import build_model
from scribbleseg.core.volume import ImageSource
from scribbleseg.samples import load_sample

# Step costs of the loss terms, without the forest teacher (a background fit that would make the
# step times depend on when it finishes).
PCE_ONLY = replace(LossConfig(), teacher_weight=0.0, **dict.fromkeys(REGULARIZED_WEIGHTS, 0.0))
FULL = replace(PCE_ONLY, warmup_steps=0, dynamic_start_step=0, **REGULARIZED_WEIGHTS)
#: Peak dense throughput (TFLOP/s, bf16 tensor cores) and memory bandwidth (GB/s) of GPUs we know.
GPU_PEAKS = {"H100": (989.0, 3350.0), "H200": (989.0, 4800.0), "A100": (312.0, 2039.0)}


@dataclass
class Report:
    """Markdown lines collected while the benchmark runs, and the pass/fail checks."""

    lines: list[str] = field(default_factory=list)
    checks: list[tuple[str, bool]] = field(default_factory=list)

    def add(self, *lines: str) -> None:
        for line in lines:
            print(line, flush=True)
            self.lines.append(line)

    def check(self, text: str, ok: bool) -> None:
        self.checks.append((text, ok))
        self.add(f"- {'PASS' if ok else 'FAIL'}: {text}")


# --------------------------------------------------------------------------- helpers
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _flops(function: Callable[[], object]) -> float:
    """Floating-point operations of one call, counted by ``torch.utils.flop_counter``."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        function()
    return float(counter.get_total_flops())


def _bytes_moved(model: torch.nn.Module, image: torch.Tensor, *, backward: bool) -> float:
    """Rough memory traffic of one forward (x3 with backward): inputs + outputs of every leaf module."""
    total = [0.0]

    def hook(_module, inputs, output) -> None:
        tensors = [t for t in inputs if isinstance(t, torch.Tensor)]
        tensors += [output] if isinstance(output, torch.Tensor) else []
        total[0] += sum(t.numel() * t.element_size() for t in tensors)

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(image)
    finally:
        for handle in handles:
            handle.remove()
    return total[0] * (3.0 if backward else 1.0)


def _gpu_peak(device: torch.device) -> tuple[float, float] | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in GPU_PEAKS.items():
        if key in name:
            return peak
    return None


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _sample_trainer(
    name: str, loss: LossConfig, *, patch: tuple[int, ...], batch: int, device: str, amp: bool = True
) -> Trainer:
    sample = load_sample(name)
    source = ImageSource(sample.image, spacing=sample.spacing)
    target = labels_to_target(sample.scribbles, spacing=sample.spacing, background=sample.background_class)
    # No forest blend either: with it the forest would still be fitted in the background.
    config = TrainConfig(patch_size=patch, batch_size=batch, device=device, seed=0, amp=amp, forest_blend=0.0)
    return Trainer(source, target, loss_config=loss, train_config=config)


# --------------------------------------------------------------------------- 1. training
def _project_whole_patch(trainer: Trainer) -> None:
    """Undo one optimisation for its "before" row: the projection head over the whole patch.

    Before, the head ran on every voxel of the patch and the contrastive loss gathered its
    sample from that; now only the sampled voxels go through the head. Gathering from the
    whole-patch embedding with an identity ``embed`` is exactly the old computation.
    """
    sampled = trainer._sampled_embeddings
    trainer.model.embed = lambda vectors: vectors  # type: ignore[method-assign]

    def from_the_whole_patch(features: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        # Under autocast as in training: on a GPU the features are bf16 (the head's weights fp32).
        with autocast_context(trainer.device, trainer._amp_dtype is not None):
            projected = trainer.model.projection_head(features)
        return sampled(projected, positions)

    trainer._sampled_embeddings = from_the_whole_patch  # type: ignore[method-assign]


def training(report: Report, device: str, steps: int) -> None:
    report.add(
        "",
        "### Training throughput",
        "",
        "| data | patch x batch | loss | s/step (median) | steps/s | voxels/s | GFLOP/step | "
        "achieved TFLOP/s | full / pCE |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    )
    ratios = {}
    for name, patch, batch in (("nuclei2d", (512, 512), 8), ("mri3d", (96, 96, 96), 2)):
        seconds = {}
        variants = (
            ("pCE only", PCE_ONLY),
            ("full", FULL),
            ("full, before: CRF at full resolution", replace(FULL, crf_downsample=1)),
            ("full, before: projection head on the whole patch", FULL),
        )
        for label, loss in variants:
            trainer = _sample_trainer(name, loss, patch=patch, batch=batch, device=device)
            if "whole patch" in label:
                _project_whole_patch(trainer)
            dev = trainer.device
            flops = _flops(trainer._train_step)
            times = []
            trainer.train_config = replace(trainer.train_config, steps=steps + 1)
            last = time.perf_counter()
            for update in trainer.run():
                _sync(dev)
                now = time.perf_counter()
                if not update.done:
                    times.append(now - last)
                last = now
            step_s = statistics.median(times[1:])  # the first step warms up caches and autotuning
            seconds[label] = step_s
            voxels = batch * int(np.prod(patch))
            report.add(
                f"| {name} | {'x'.join(map(str, patch))} x {batch} | {label} | {step_s:.3f} | "
                f"{1 / step_s:.2f} | {voxels / step_s:,.0f} | {flops / 1e9:.0f} | "
                f"{flops / step_s / 1e12:.3f} | {seconds[label] / seconds['pCE only']:.2f} |"
            )
            peak = _gpu_peak(dev)
            if peak is not None and label == "pCE only":
                image = torch.from_numpy(trainer.sampler.sample().image).to(dev)
                traffic = _bytes_moved(trainer.model, image, backward=True)
                report.add(
                    f"|  | roofline | {label} | | | | | {flops / step_s / 1e12:.1f} of {peak[0]:.0f} "
                    f"({100 * flops / step_s / 1e12 / peak[0]:.0f} %) | {traffic / step_s / 1e9:.0f} GB/s of "
                    f"{peak[1]:.0f} ({100 * traffic / step_s / 1e9 / peak[1]:.0f} %) |"
                )
        ratios[name] = seconds["full"] / seconds["pCE only"]
    for name, ratio in ratios.items():
        report.check(
            f"{name}: a full-loss step takes {ratio:.2f}x a pCE-only step (target <= 1.3x)", ratio <= 1.3
        )


# --------------------------------------------------------------------------- 2. CRF alone
def crf(report: Report, device: str, repeats: int) -> None:
    report.add(
        "",
        "### CRF loss alone (forward + backward, softmax included; fresh process each)",
        "",
        "| shape (B, K, spatial) | window | implementation | peak increment (MiB) | time median (s) |",
        "|---|---|---|---:|---:|",
    )
    for shape in ((8, 4, 512, 512), (1, 4, 64, 128, 128)):
        radius = crf_memory.WINDOW_RADIUS[-(len(shape) - 2) :]
        window = "x".join(str(2 * r + 1) for r in radius)
        results = {}
        for name in crf_memory.IMPLEMENTATIONS:
            result = crf_memory._measure(name, device, shape, False, repeats)
            results[name] = result
            if "error" in result:
                report.add(f"| {shape} | {window} | `{name}` | failed: {result['error']} | |")
                continue
            report.add(
                f"| {shape} | {window} | `{name}` | {result['increment'] / crf_memory.MIB:.0f} | "
                f"{result['time']:.3f} |"
            )
        ours, unfold = results["crf_loss"], results["crf_loss_unfold"]
        if "error" in ours or "error" in unfold:
            report.check(f"{shape}: both implementations ran", False)
            continue
        memory = unfold["increment"] / ours["increment"]
        speed = unfold["time"] / ours["time"]
        report.check(
            f"{len(shape) - 2}D {shape}: ours uses {memory:.1f}x less peak memory than unfold (target >= 3x) "
            f"and is {speed:.1f}x its speed (target >= 1x)",
            memory >= 3 and speed >= 1,
        )


# --------------------------------------------------------------------------- 3. previews
def previews(report: Report, device: str) -> None:
    report.add("", "### Previews (nuclei2d, default settings, 512 x 512 view)", "")
    sample = load_sample("nuclei2d")
    view = (slice(0, 512), slice(0, 512))
    started = time.perf_counter()
    source = ImageSource(sample.image, spacing=sample.spacing)
    target = labels_to_target(sample.scribbles, spacing=sample.spacing, background=sample.background_class)
    trainer = Trainer(source, target, train_config=TrainConfig(device=device, seed=0, time_budget=60))
    trainer.set_preview_region(view)
    first = None
    latencies: list[float] = []
    stroke_at = stroke_step = None
    next_stroke_step = 20
    for update in trainer.run():
        now = time.perf_counter()
        if update.preview is not None and first is None:
            first = now - started
        if stroke_at is not None and update.preview is not None and update.step > stroke_step:
            latencies.append(now - stroke_at)
            stroke_at, next_stroke_step = None, update.step + 5
            if len(latencies) == 3:
                trainer.stop()
        elif first is not None and stroke_at is None and update.step >= next_stroke_step:
            # A new stroke: a background line across one of the image's first rows.
            stroke = np.zeros((4, 512), dtype=np.uint8)
            stroke[1, 10 + 50 * len(latencies) : 200] = sample.background_class or 1
            stroke_at, stroke_step = time.perf_counter(), update.step
            trainer.add_labels((slice(4 * len(latencies), 4 * len(latencies) + 4), slice(0, 512)), stroke)
        if update.done:
            break
    stroke_latency = statistics.median(latencies)
    report.add(
        "| from | to the first preview (s) |",
        "|---|---:|",
        f"| Train (trainer built, normalisation sampled, network created) | {first:.2f} |",
        f"| a new stroke (`add_labels`), median of {len(latencies)} | {stroke_latency:.2f} "
        f"(max {max(latencies):.2f}) |",
        "",
        "The napari widget's own figures (Qt event loop included) are in `benchmarks/ui_latency.py`.",
    )
    report.check(f"first preview {first:.2f} s after Train (target < 5 s on CPU)", first < 5.0)


# --------------------------------------------------------------------------- 4. inference
def inference(report: Report, device: str, repeats: int) -> None:
    dev = resolve_device(device)
    report.add(
        "",
        f"### Inference ({dev.type}; mixed precision here = {amp_dtype(dev, True) or 'none (float32)'})",
        "",
        "| network | what | setting | time (s) | voxels/s | speed-up |",
        "|---|---|---|---:|---:|---:|",
    )
    rng = np.random.default_rng(0)
    volume = rng.random((96, 256, 256), dtype=np.float32)  # the speed does not depend on the values
    for size in ("small", "large"):
        config = ModelConfig(size=size)
        model = build_model(config, spatial_dims=3, in_channels=1, num_classes=3).to(dev).eval()
        window = torch.from_numpy(volume[None, None, :96, :96, :96].copy()).to(dev)
        last = window.contiguous(memory_format=torch.channels_last_3d)
        dtype = amp_dtype(dev, True)

        def forward(
            x: torch.Tensor, amp: bool, model: torch.nn.Module = model, dtype: torch.dtype | None = dtype
        ) -> object:
            autocast = torch.autocast(dev.type, dtype=dtype, enabled=amp and dtype is not None)
            with torch.inference_mode(), autocast:
                return model(x).logits

        variants: dict[str, Callable[[], object]] = {"float32": partial(forward, window, False)}
        if dtype is not None:
            variants[str(dtype).replace("torch.", "")] = partial(forward, window, True)
        if dev.type == "cpu":
            label = "bf16 + channels-last (default)" if dtype else "channels-last (default)"
            variants[label] = partial(forward, last, True)
        base = None
        for label, run in variants.items():
            run()
            _sync(dev)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                run()
                _sync(dev)
                times.append(time.perf_counter() - start)
            seconds = statistics.median(times)
            base = base or seconds
            report.add(
                f"| {size} | one 96^3 window | {label} | {seconds:.3f} | {96**3 / seconds:,.0f} | "
                f"{base / seconds:.2f}x |"
            )
        flops = _flops(partial(forward, window, False))
        source = ImageSource(volume)
        whole = {}
        for amp in (False, True):
            start = time.perf_counter()
            predict_probabilities(model, source, device=dev, amp=amp)
            _sync(dev)
            whole[amp] = time.perf_counter() - start
            report.add(
                f"| {size} | whole volume 96x256x256 | {'mixed precision (default)' if amp else 'float32'} | "
                f"{whole[amp]:.2f} | {volume.size / whole[amp]:,.0f} | {whole[False] / whole[amp]:.2f}x |"
            )
        report.add(f"|  | FLOPs | per 96^3 window | {flops / 1e9:.0f} GFLOP | | |")
        peak = _gpu_peak(dev)
        if peak is not None:
            traffic = _bytes_moved(model, window, backward=False)
            seconds = min(whole.values()) * 96**3 / volume.size
            report.add(
                f"|  | roofline | per window | {flops / seconds / 1e12:.1f} of {peak[0]:.0f} TFLOP/s "
                f"({100 * flops / seconds / 1e12 / peak[0]:.0f} %) | {traffic / seconds / 1e9:.0f} of "
                f"{peak[1]:.0f} GB/s | |"
            )
            if size == "small":
                rate = volume.size / min(whole.values())
                report.check(f"3D inference {rate:,.0f} voxels/s on the GPU (target >= 1e8)", rate >= 1e8)


# --------------------------------------------------------------------------- main
def _write_markdown(path: Path, lines: list[str]) -> None:
    start, end = "<!-- speed:start -->", "<!-- speed:end -->"
    block = "\n".join([start, *lines, end])
    text = path.read_text() if path.exists() else ""
    if start in text and end in text:
        before, rest = text.split(start, 1)
        after = rest.split(end, 1)[1]
        text = before + block + after
    else:
        text = text.rstrip("\n") + "\n\n## Speed (`benchmarks/speed.py`)\n\n" + block + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats (smoke run)")
    parser.add_argument(
        "--sections", default="training,crf,previews,inference", help="comma-separated subset to run"
    )
    parser.add_argument("--markdown", type=Path, help="write the table into this Markdown file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = str(resolve_device(args.device))
    steps, repeats = (3, 1) if args.quick else (6, 3)

    report = Report()
    cpu = platform.processor() or platform.machine()
    if device.startswith("cuda"):
        cpu = torch.cuda.get_device_name(0)
    report.add(
        f"Measured by `python benchmarks/speed.py{' --quick' if args.quick else ''}` on {device} ({cpu}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} threads); "
        f"{time.strftime('%Y-%m-%d')}."
    )
    sections = {
        "training": lambda: training(report, device, steps),
        "crf": lambda: crf(report, device, repeats),
    }
    sections["previews"] = lambda: previews(report, device)
    sections["inference"] = lambda: inference(report, device, repeats)
    for name in args.sections.split(","):
        sections[name.strip()]()
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    report.add("", f"Load average at the end (1, 5, 15 min): {load}.")
    failed = [text for text, ok in report.checks if not ok]
    report.add("", f"Targets: {len(report.checks) - len(failed)} of {len(report.checks)} met.")
    if args.markdown:
        _write_markdown(args.markdown, report.lines)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
