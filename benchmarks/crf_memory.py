"""Peak memory and time of the CRF loss: windowed ``crf_loss`` vs the naive ``crf_loss_unfold``.

What it measures
----------------
Forward + backward of the dense-CRF loss (softmax of the logits included, as in training) on a
3D patch of 1 × 4 × 64 × 128 × 128 (B, K, Z, Y, X) with a one-channel image, a 5 × 7 × 7 window
(radius (2, 3, 3) in (z, y, x)) and spacing (2.0, 1.0, 1.0), for

- ``crf_loss``: loops over half of the window's offsets, memory O((K + C + F) × N);
- ``crf_loss_unfold``: materialises the (B, K, *S, *window) stack, memory O(window × K × N).

With ``--features`` it also runs the dynamic variant (16-channel decoder features in the kernel).

Each implementation runs in a fresh subprocess (this script with a hidden ``--worker`` flag), so
one run's peak cannot hide in another's. On CPU the peak is ``getrusage(RUSAGE_SELF).ru_maxrss``
after the runs minus the resident set size once the inputs are allocated: the increment caused
by forward + backward (the absolute peak RSS is printed too). On CUDA it is
``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` minus the memory allocated
by the inputs. Time is the median (and the best) wall time of ``--repeats`` forward + backward
passes; on a CPU shared with other work the times vary a lot (the load average is printed).

How to run
----------
::

    PYTHONPATH=src python benchmarks/crf_memory.py                 # CPU here, CUDA if present
    PYTHONPATH=src python benchmarks/crf_memory.py --device cpu --repeats 3 --features

The unfold run needs about 5.5 GB on CPU; the script shrinks Z, and says so, when the
machine has less memory available than its estimate.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

SHAPE = (1, 4, 64, 128, 128)  # (B, K, Z, Y, X)
SPACING = (2.0, 1.0, 1.0)
WINDOW_RADIUS = (2, 3, 3)
SIGMA_SPATIAL = 3.0  # physical units: keeps all 244 offsets above the 1e-4 cutoff
SIGMA_INTENSITY = 0.5
SIGMA_FEATURES = 0.5
FEATURE_CHANNELS = 16
IMPLEMENTATIONS = ("crf_loss", "crf_loss_unfold")
MIB = 1024.0 * 1024.0
# Bytes per (class × voxel × window position) that crf_loss_unfold keeps alive at its peak,
# measured on CPU float32 (about 5.2 bytes, i.e. 1.3 window stacks of 4 bytes), with margin.
UNFOLD_BYTES_PER_ENTRY = 10.0


def _current_rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        resident_pages = int(statm.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def _max_rss_bytes() -> int:
    """Peak RSS of this process: ``VmHWM`` (resettable, see :func:`_reset_peak`), else getrusage."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _reset_peak() -> None:
    """Reset the peak RSS to the current RSS (Linux ``clear_refs`` 5).

    A process started by fork + exec from a large parent inherits the parent's peak RSS in
    ``getrusage`` (e.g. when ``benchmarks/speed.py`` runs this worker after training); resetting
    ``VmHWM`` makes the peak this worker's own.
    """
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        pass


def _available_bytes() -> int:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _run_worker(
    implementation: str, device_name: str, shape: tuple[int, ...], features: bool, repeats: int
) -> None:
    """Measure one implementation in this (fresh) process and print one JSON line."""
    import torch

    from scribbleseg.core import losses

    torch.set_num_threads(2)
    device = torch.device(device_name)
    loss_fn = getattr(losses, implementation)
    generator = torch.Generator().manual_seed(0)
    batch, _, *spatial = shape
    logits = torch.randn(shape, generator=generator).to(device).requires_grad_(True)
    image = torch.randn((batch, 1, *spatial), generator=generator).to(device)
    kwargs: dict[str, Any] = dict(  # a 2D shape takes the (y, x) entries
        spacing=SPACING[-len(spatial) :],
        sigma_spatial=SIGMA_SPATIAL,
        sigma_intensity=SIGMA_INTENSITY,
        window_radius=WINDOW_RADIUS[-len(spatial) :],
    )
    if features:
        kwargs["features"] = torch.randn((batch, FEATURE_CHANNELS, *spatial), generator=generator).to(device)
        kwargs["sigma_features"] = SIGMA_FEATURES

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
    else:
        _reset_peak()
        baseline = _current_rss_bytes()
        max_rss_before = _max_rss_bytes()

    times = []
    value = float("nan")
    for _ in range(repeats):
        start = time.perf_counter()
        loss = loss_fn(torch.softmax(logits, dim=1), image, **kwargs)
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
        value = float(loss.detach())
        logits.grad = None
        del loss

    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        result = dict(absolute=peak, increment=peak - baseline, note="")
    else:
        peak = _max_rss_bytes()
        note = ""
        if max_rss_before > baseline:  # an earlier transient peak could mask part of the increment
            note = f"max RSS before the runs already {max_rss_before / MIB:.0f} MiB"
        result = dict(absolute=peak, increment=peak - baseline, note=note)
    result.update(time=statistics.median(times), times=times, loss=value)
    print(json.dumps(result))


def _measure(
    implementation: str, device: str, shape: tuple[int, ...], features: bool, repeats: int
) -> dict[str, Any]:
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        implementation,
        "--device",
        device,
        "--repeats",
        str(repeats),
        "--shape",
        ",".join(map(str, shape)),
    ]
    if features:
        command.append("--features")
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        reason = completed.stderr.strip().splitlines()[-1:] or [
            f"killed (exit status {completed.returncode})"
        ]
        return dict(error=reason[0])
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _half_window_offsets() -> int:
    import math

    size = math.prod(2 * r + 1 for r in WINDOW_RADIUS)
    return (size - 1) // 2


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--repeats", type=int, default=3, help="forward + backward passes timed per run")
    parser.add_argument("--features", action="store_true", help="also run the dynamic (feature) variant")
    parser.add_argument("--worker", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    if args.worker:
        shape = tuple(int(s) for s in args.shape.split(","))
        _run_worker(args.worker, args.device, shape, args.features, args.repeats)
        return

    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")

    shape = SHAPE
    window = 2 * _half_window_offsets() + 1
    if device == "cpu":
        available = _available_bytes()
        batch, classes, z, y, x = shape
        while z > 8 and UNFOLD_BYTES_PER_ENTRY * batch * classes * z * y * x * window > 0.8 * available:
            z //= 2
        if z != shape[2]:
            print(
                f"NOTE: only {available / 2**30:.1f} GiB available; crf_loss_unfold would not fit at "
                f"Z={shape[2]}, so this run uses Z={z} (not the requested {shape})."
            )
            shape = (batch, classes, z, y, x)

    print(
        f"CRF loss, forward + backward on {device} (torch {torch.__version__}, 2 threads): "
        f"(B, K, Z, Y, X) = {shape}, image 1 channel, window radius {WINDOW_RADIUS} "
        f"(window {window}, {_half_window_offsets()} offset pairs), spacing {SPACING}, "
        f"sigma_spatial {SIGMA_SPATIAL}, repeats {args.repeats}"
    )
    print()
    print(
        "| variant | implementation | peak increment (MiB) | absolute peak (MiB) "
        "| time, median (s) | time, best (s) | loss |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    variants = [("static", False)] + ([("dynamic (16 features)", True)] if args.features else [])
    ratios = []
    notes = []
    for variant, features in variants:
        results = {name: _measure(name, device, shape, features, args.repeats) for name in IMPLEMENTATIONS}
        for name, result in results.items():
            if "error" in result:
                print(f"| {variant} | `{name}` | failed: {result['error']} | | | | |")
                continue
            print(
                f"| {variant} | `{name}` | {result['increment'] / MIB:.0f} | {result['absolute'] / MIB:.0f} "
                f"| {result['time']:.2f} | {min(result['times']):.2f} | {result['loss']:.6g} |"
            )
            if result["note"]:
                notes.append(f"{variant} / {name}: {result['note']}")
        ours, unfold = results["crf_loss"], results["crf_loss_unfold"]
        if "error" not in ours and "error" not in unfold:
            ratios.append((variant, unfold["increment"] / ours["increment"], unfold["time"] / ours["time"]))
    print()
    print("| variant | memory ratio (unfold / ours) | time ratio, median (unfold / ours) |")
    print("|---|---:|---:|")
    for variant, memory_ratio, time_ratio in ratios:
        print(f"| {variant} | {memory_ratio:.1f}× | {time_ratio:.1f}× |")
    for note in notes:
        print(f"\nNOTE: {note}")
    if device == "cpu":
        # Other processes on the same cores make the 2 OpenMP threads wait for each other at every
        # operation; the times are only comparable on an otherwise idle machine.
        load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
        print(f"\nLoad average at the end (1, 5, 15 min): {load} on {os.cpu_count()} CPUs.")


if __name__ == "__main__":
    main()
