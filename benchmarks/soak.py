"""Soak test: train with live previews for a long time and watch the process memory.

Drives the :class:`~scribbleseg.core.engine.Trainer` the way the napari widget does, without Qt:
the generator runs in a worker thread and hands its records to the main thread through a queue;
the main thread writes every preview into a persistent prediction array (keeping "user edits",
as :class:`~scribbleseg.napari._model.PredictionRecord` does) with its uncertainty, moves the
preview region now and then (the user pans), and paints / erases a stroke now and then
(``Trainer.add_labels``). The resident set size (RSS) of the process is sampled every
``--interval`` seconds and printed as a table; at the end the growth is reported against the RSS
after the warm-up (default: the first minute) and against the start.

Exit status 1 when RSS grew by ``--limit`` percent (default 10) or more after the warm-up.

    python benchmarks/soak.py                    # 30 minutes, 1 torch thread
    python benchmarks/soak.py --minutes 2 --json out/soak.json
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

from scribbleseg.core.annotations import labels_to_target
from scribbleseg.core.config import ModelConfig, TrainConfig
from scribbleseg.core.engine import Trainer, TrainUpdate
from scribbleseg.core.volume import ImageSource
from scribbleseg.napari._model import PredictionRecord, normalised_entropy
from scribbleseg.samples import load_sample

MIB = 2**20
#: Preview regions visited in turn (the user pans over the image).
VIEWS = [
    (slice(0, 256), slice(0, 256)),
    (slice(128, 384), slice(200, 456)),
    (slice(256, 512), slice(0, 256)),
    (slice(100, 356), slice(256, 512)),
]


def _rss() -> int:
    return psutil.Process().memory_info().rss


def _worker(trainer: Trainer, records: queue.Queue[Any]) -> None:
    """The widget's worker: run the generator, hand every record to the main thread."""
    try:
        for update in trainer.run():
            preview = update.preview
            uncertainty = normalised_entropy(preview.probabilities) if preview is not None else None
            records.put((update, uncertainty))
    except BaseException as exc:  # reported by the main thread
        records.put(exc)
    finally:
        records.put(None)


def soak(
    *, minutes: float, interval: float, warmup: float, threads: int, patch: int, batch: int
) -> dict[str, Any]:
    torch.set_num_threads(threads)
    sample = load_sample("nuclei2d")
    source = ImageSource(sample.image, spacing=sample.spacing)
    target = labels_to_target(sample.scribbles, spacing=sample.spacing, background=sample.background_class)
    trainer = Trainer(
        source,
        target,
        model_config=ModelConfig(size="small"),
        train_config=TrainConfig(
            time_budget=minutes * 60.0,
            patch_size=(patch, patch),
            batch_size=batch,
            device="cpu",
            num_threads=threads,
            preview_interval=1.0,
            seed=0,
        ),
    )
    prediction = np.zeros(source.spatial_shape, dtype=np.uint8)
    uncertainty_layer = np.zeros(source.spatial_shape, dtype=np.float32)
    record = PredictionRecord(source.spatial_shape, prediction.dtype)
    stroke_region = (slice(300, 303), slice(40, 90))
    stroke = np.full((3, 50), sample.background_class, dtype=np.uint8)
    trainer.set_preview_region(VIEWS[0])

    records: queue.Queue[Any] = queue.Queue(maxsize=64)  # bounded, like a busy event loop
    worker = threading.Thread(target=_worker, args=(trainer, records), name="soak-trainer", daemon=True)
    started = time.perf_counter()
    samples: list[dict[str, float]] = [{"seconds": 0.0, "steps": 0, "rss_mib": _rss() / MIB}]
    print(f"{'time (s)':>9} {'steps':>7} {'RSS (MiB)':>10} {'previews':>9}", flush=True)
    print(f"{0.0:9.1f} {0:7d} {samples[0]['rss_mib']:10.1f} {0:9d}", flush=True)
    worker.start()
    previews = strokes = 0
    next_sample = interval
    next_view, next_stroke = 15.0, 20.0
    last: TrainUpdate | None = None
    while True:
        item = records.get()
        if item is None:
            break
        if isinstance(item, BaseException):
            raise item
        update, uncertainty = item
        last = update
        if update.preview is not None:  # what OutputLayers.write does with a preview
            region = update.preview.region
            prediction[region] = record.merge(prediction[region], region, update.preview.labels)
            uncertainty_layer[region] = uncertainty
            previews += 1
        now = time.perf_counter() - started
        if now >= next_view:  # the user pans: the preview follows
            trainer.set_preview_region(VIEWS[int(now // 15) % len(VIEWS)])
            next_view += 15.0
        if now >= next_stroke:  # the user paints a stroke, then erases it
            strokes += 1
            trainer.add_labels(stroke_region, stroke if strokes % 2 else np.zeros_like(stroke))
            next_stroke += 20.0
        if now >= next_sample:
            samples.append({"seconds": now, "steps": update.step, "rss_mib": _rss() / MIB})
            print(f"{now:9.1f} {update.step:7d} {samples[-1]['rss_mib']:10.1f} {previews:9d}", flush=True)
            next_sample += interval
    worker.join()
    end = {
        "seconds": time.perf_counter() - started,
        "steps": last.step if last else 0,
        "rss_mib": _rss() / MIB,
    }
    samples.append(end)
    print(f"{end['seconds']:9.1f} {end['steps']:7d} {end['rss_mib']:10.1f} {previews:9d}  (end)", flush=True)

    after_warmup = next((s for s in samples if s["seconds"] >= warmup), samples[-1])
    start_rss, warm_rss, end_rss = samples[0]["rss_mib"], after_warmup["rss_mib"], end["rss_mib"]
    return {
        "minutes": minutes,
        "threads": threads,
        "patch": patch,
        "batch": batch,
        "steps": end["steps"],
        "previews": previews,
        "strokes": strokes,
        "rss_start_mib": round(start_rss, 1),
        "rss_after_warmup_mib": round(warm_rss, 1),
        "warmup_seconds": round(after_warmup["seconds"], 1),
        "rss_end_mib": round(end_rss, 1),
        "rss_peak_mib": round(max(s["rss_mib"] for s in samples), 1),
        "growth_after_warmup_percent": round(100.0 * (end_rss - warm_rss) / warm_rss, 2),
        "growth_from_start_percent": round(100.0 * (end_rss - start_rss) / start_rss, 2),
        "samples": samples,
        "cpu_count": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=30.0, help="training time (default 30)")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between RSS samples")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before the reference RSS")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--patch", type=int, default=32, help="training patch side (multiple of 16)")
    parser.add_argument("--batch", type=int, default=2, help="patches per step")
    parser.add_argument("--limit", type=float, default=10.0, help="failing growth after warm-up, percent")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)
    result = soak(
        minutes=args.minutes,
        interval=args.interval,
        warmup=args.warmup,
        threads=args.threads,
        patch=args.patch,
        batch=args.batch,
    )
    print(
        f"\n{result['steps']} steps, {result['previews']} previews, {result['strokes']} strokes in "
        f"{args.minutes:g} min ({args.threads} thread(s), patch {args.patch}, batch {args.batch})\n"
        f"RSS: start {result['rss_start_mib']} MiB, after warm-up ({result['warmup_seconds']} s) "
        f"{result['rss_after_warmup_mib']} MiB, end {result['rss_end_mib']} MiB, "
        f"peak {result['rss_peak_mib']} MiB\n"
        f"growth: {result['growth_after_warmup_percent']:+.2f} % after warm-up, "
        f"{result['growth_from_start_percent']:+.2f} % from start (limit {args.limit:g} % after warm-up)"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    ok = result["growth_after_warmup_percent"] < args.limit
    print("PASS" if ok else "FAIL: memory grew after the warm-up", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
