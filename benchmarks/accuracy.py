"""Accuracy from sparse labels: ScribbleSeg against an ilastik-equivalent classifier and partial CE.

For every data set with a dense ground truth, annotations are simulated as a person paints them
(``benchmarks/_annotate.py``): scribbles (strokes along the skeletons of eroded regions on a random
subset of objects; in 3D on every n-th axial slice) and point clicks, each at two densities. Every
method gets the same annotations and the same CPU threads:

``rf``
    ilastik-equivalent pixel classifier: ilastik's default filter bank (``core/features.py``) and a
    scikit-learn random forest of 100 trees. Its time is features + fit + prediction.
``pce``, ``pce+teacher``, ``pce+crf``, ``pce+contrastive``, ``pce+dynamic``, ``all``
    The default network trained with partial CE only, plus the forest teacher alone, plus one
    regularizer each, and all three regularizers (weights from ``config.REGULARIZED_WEIGHTS``,
    no teacher): the loss ablation.
``defaults``
    ScribbleSeg as it ships: ``ModelConfig()``, ``LossConfig()``, ``TrainConfig()``.
``noaverage``
    The defaults without the moving average of the weights (``TrainConfig.weight_average=0``).
``noblend``
    The defaults without the forest mixed into the prediction (``TrainConfig.forest_blend=0``).
``nohandover``
    The defaults with the forest blend fading with the teacher only, also in 2D
    (``TrainConfig.forest_blend_steps`` past the teacher's steps; by default the blend hands over
    to the network after 1500 steps in 2D).
``prevalence``
    The defaults with the prevalence correction (``TrainConfig.prevalence_correction=True``,
    off by default).
``norefine``
    The defaults' own networks predicting without the CRF refinement (``TrainConfig.crf_refinement``;
    the same training, the refinement switched off at prediction): not trained separately, every
    ``defaults`` run records it.
``dense``
    The default network trained with every voxel labelled (upper bound; independent of the
    annotation, so run once per seed).

The other network methods train without the weight average, the forest blend and the CRF
refinement: ``pce`` and ``dense`` are the plain baselines the issue defines, and the loss ablation
isolates the loss terms; ``noaverage``, ``noblend``, ``nohandover``, ``prevalence`` and ``norefine``
against ``defaults`` show what the average, the blend, its hand-over, the prevalence correction and
the refinement add.

Each network trains once per seed and is evaluated at every budget in ``--budgets`` (the clock
stops while it is evaluated): the mean foreground Dice of the whole-image prediction. Results are
appended to a JSON-lines file as they come, so an interrupted run resumes where it stopped.

    python benchmarks/accuracy.py                                  # everything: about 13 h on 2 CPU threads
    python benchmarks/accuracy.py --datasets nuclei2d --seeds 0 --methods rf pce defaults dense
    python benchmarks/accuracy.py --report-only                    # tables and plot from saved results
    python benchmarks/accuracy.py --device cuda --jobs 7           # the GPU table (budgets 10 and 30 s)
    bash benchmarks/gpu_accuracy.sh                                # the GPU table with its ablation rows

On ``--device cuda`` the networks train and predict on the GPU (the forest and the teacher still
on ``--threads`` CPU threads); its results go to ``accuracy_gpu.jsonl``, its tables to their own
block of ``docs/benchmarks.md`` and its plot to ``docs/accuracy_gpu.png``. ``--jobs N`` runs N
runs at once, each in its own process (they share the GPU); ``--stop-after`` bounds the whole.

Output: the tables between ``<!-- accuracy:start -->`` and ``<!-- accuracy:end -->`` in
``docs/benchmarks.md`` (``--markdown``) and a plot of Dice against the time budget (``--plot``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _annotate import DENSITIES, simulate_points, simulate_scribbles

ROOT = Path(__file__).resolve().parent.parent
DATASETS = ("nuclei2d", "mri3d")
ANNOTATIONS = ("scribbles", "points")
NETWORK_METHODS = (
    "pce",
    "pce+teacher",
    "pce+crf",
    "pce+contrastive",
    "pce+dynamic",
    "all",
    "noaverage",
    "noblend",
    "nohandover",
    "prevalence",
    "norefine",
    "defaults",
)
METHODS = ("rf", *NETWORK_METHODS, "dense")
LABELS = {
    "rf": "ilastik-equivalent RF",
    "pce": "partial CE only",
    "pce+teacher": "pCE + forest teacher",
    "pce+crf": "pCE + CRF",
    "pce+contrastive": "pCE + contrastive",
    "pce+dynamic": "pCE + dynamic CRF",
    "all": "pCE + all three regularizers",
    "noaverage": "defaults without weight averaging",
    "noblend": "defaults without the forest blend",
    "nohandover": "defaults without the 2D hand-over of the forest blend",
    "prevalence": "defaults with the prevalence correction",
    "norefine": "defaults without the CRF refinement",
    "defaults": "**ScribbleSeg defaults**",
    "dense": "dense labels (upper bound)",
}
MARKERS = ("<!-- accuracy:start -->", "<!-- accuracy:end -->")
GPU_MARKERS = ("<!-- accuracy-gpu:start -->", "<!-- accuracy-gpu:end -->")


def hardware_of(results: Mapping[str, Mapping[str, Any]]) -> str:
    """What the network runs in ``results`` trained on (records before ``--device``: 2 CPU threads)."""
    seen = sorted({r.get("hardware", "2 CPU threads") for r in results.values() if r["method"] != "rf"})
    return " / ".join(seen) if seen else "2 CPU threads"


# ----------------------------------------------------------------------------- annotations
def annotate(sample: Any, kind: str, density: str, seed: int) -> np.ndarray:
    """The simulated annotation of ``kind`` and ``density`` for ``seed`` (class values, 0 = none).

    ``kind`` ``"dense"``: the ground truth itself (the upper bound's labels).
    """
    if kind == "dense":
        return sample.ground_truth
    classes = sorted(sample.class_names)
    if kind == "scribbles":
        return simulate_scribbles(sample.ground_truth, classes, DENSITIES[density], seed=seed)
    return simulate_points(
        sample.ground_truth, classes, DENSITIES[density], seed=seed, spacing=sample.spacing
    )


def foreground_dice(labels: np.ndarray, sample: Any) -> float:
    from scribbleseg.core.metrics import dice_iou

    scores = dice_iou(labels, sample.ground_truth)
    return statistics.fmean(s["dice"] for v, s in scores.items() if v != sample.background_class)


# ----------------------------------------------------------------------------- methods
def feature_table(sample: Any) -> np.ndarray:
    """ilastik's filter bank of the sample's image as a table (voxels, features)."""
    from scribbleseg.core.features import filter_bank

    features = filter_bank(sample.image[None].astype(np.float32), spacing=sample.spacing)
    return features.reshape(len(features), -1).T


def ilastik_forest(*, seed: int, threads: int, **options: Any) -> Any:
    """The ilastik-equivalent random forest, unfitted (``options``: other scikit-learn settings)."""
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=100, n_jobs=threads, random_state=seed, **options)


def _fit_rf(sample: Any, labels: np.ndarray, *, seed: int, threads: int) -> tuple[Any, np.ndarray]:
    """The ilastik-equivalent forest fitted on ``labels``, and the image's feature table (voxels, F)."""
    table = feature_table(sample)
    labelled = labels.ravel() > 0
    forest = ilastik_forest(seed=seed, threads=threads)
    forest.fit(table[labelled], labels.ravel()[labelled])
    return forest, table


def run_rf(sample: Any, labels: np.ndarray, *, seed: int, threads: int) -> dict[str, Any]:
    start = time.perf_counter()
    forest, table = _fit_rf(sample, labels, seed=seed, threads=threads)
    prediction = forest.predict(table).reshape(labels.shape)
    seconds = time.perf_counter() - start
    return {"dice": {"any": foreground_dice(prediction, sample)}, "seconds": seconds}


def rf_probabilities(sample: Any, labels: np.ndarray, *, seed: int, threads: int) -> np.ndarray:
    """The ilastik-equivalent forest's class probabilities (C, *spatial), classes in ascending order."""
    forest, table = _fit_rf(sample, labels, seed=seed, threads=threads)
    return forest.predict_proba(table).T.reshape(-1, *labels.shape).astype(np.float32)


def loss_for(method: str) -> Any:
    from scribbleseg.core.config import REGULARIZED_WEIGHTS, LossConfig

    default = LossConfig()
    # The ablation rows are without the forest teacher; "pce+teacher" adds it alone.
    off = {name: 0.0 for name in REGULARIZED_WEIGHTS} | {"teacher_weight": 0.0}
    one = {
        "pce+crf": "crf_weight",
        "pce+contrastive": "contrastive_weight",
        "pce+dynamic": "dynamic_crf_weight",
    }
    if method in ("pce", "dense"):
        return replace(default, **off)
    if method == "pce+teacher":
        return replace(default, **{**off, "teacher_weight": default.teacher_weight})
    if method in one:
        return replace(default, **{**off, one[method]: REGULARIZED_WEIGHTS[one[method]]})
    if method == "all":
        return replace(default, **{**off, **REGULARIZED_WEIGHTS})
    return default


def train_for(method: str, *, seed: int, threads: int, device: str = "cpu") -> Any:
    """The training configuration of ``method``: averaging and forest blend only for the defaults."""
    from scribbleseg.core.config import TrainConfig

    config = TrainConfig(seed=seed, device=device, num_threads=threads)
    if method == "defaults":
        return config
    if method == "prevalence":
        return replace(config, prevalence_correction=True)
    if method == "noaverage":
        return replace(config, weight_average=0.0)
    if method == "noblend":
        return replace(config, forest_blend=0.0)
    if method == "nohandover":
        return replace(config, forest_blend_steps=10**9)
    return replace(config, weight_average=0.0, forest_blend=0.0, crf_refinement=0.0)


def build_trainer(
    sample: Any,
    labels: np.ndarray,
    method: str,
    *,
    seed: int,
    threads: int,
    device: str = "cpu",
    model: Mapping[str, Any] | None = None,
    loss: Mapping[str, Any] | None = None,
    **train: Any,
) -> tuple[Any, Any, Any]:
    """``(source, target, trainer)`` of ``method`` on ``labels``, on ``threads`` CPU threads and ``device``.

    ``train`` overrides fields of :func:`train_for`'s configuration (e.g. ``time_budget``),
    ``loss`` fields of :func:`loss_for`'s and ``model`` fields of ``ModelConfig()``
    (``benchmarks/variants.py``).
    """
    import torch

    from scribbleseg.core.annotations import labels_to_target
    from scribbleseg.core.config import ModelConfig
    from scribbleseg.core.engine import Trainer
    from scribbleseg.core.volume import ImageSource

    torch.set_num_threads(threads)
    source = ImageSource(sample.image, spacing=sample.spacing)
    target = labels_to_target(labels, spacing=sample.spacing, background=sample.background_class)
    config = replace(train_for(method, seed=seed, threads=threads, device=device), **train)
    trainer = Trainer(
        source,
        target,
        model_config=ModelConfig(**(model or {})),
        loss_config=replace(loss_for(method), **(loss or {})),
        train_config=config,
    )
    return source, target, trainer


def run_network(
    sample: Any,
    labels: np.ndarray,
    method: str,
    *,
    seed: int,
    budgets: list[float],
    threads: int,
    device: str = "cpu",
    **overrides: Any,
) -> dict[str, Any]:
    """Train ``method`` up to each of ``budgets`` seconds and score its whole-image prediction.

    ``overrides`` go to :func:`build_trainer` (``model``, ``loss`` and training fields).
    """
    from scribbleseg.core.inference import predict_probabilities, probabilities_to_labels

    source, target, trainer = build_trainer(
        sample, labels, method, seed=seed, threads=threads, device=device, **overrides
    )
    dice: dict[str, float] = {}
    unrefined: dict[str, float] = {}
    kept: dict[str, float] = {}
    steps: dict[str, int] = {}
    trained = 0.0
    for i, budget in enumerate(sorted(budgets)):
        # The end of a run (batch-norm re-estimation) can take the clock past the next budget.
        trainer.train_config = replace(trainer.train_config, time_budget=max(budget - trained, 1e-6))
        # Every budget but the last is a checkpoint: a forest teacher still being fitted goes on
        # (through the scoring, which it may gain a few seconds from) instead of starting again.
        for update in trainer.run(checkpoint=i < len(budgets) - 1):
            if update.done:
                trained += update.elapsed
        probabilities = predict_probabilities(trainer.model, source, device=device)
        prediction = probabilities_to_labels(probabilities, target.class_map.values)
        dice[f"{budget:g}"] = foreground_dice(prediction, sample)
        steps[f"{budget:g}"] = trainer.step
        refinement = trainer.model.refinement
        if method == "defaults" and refinement is not None:
            trainer.model.refinement = None
            probabilities = predict_probabilities(trainer.model, source, device=device)
            prediction = probabilities_to_labels(probabilities, target.class_map.values)
            unrefined[f"{budget:g}"] = foreground_dice(prediction, sample)
            trainer.model.refinement = refinement
        if method == "defaults" and source.spatial_dims == 2:
            # The same network with the blend the defaults had before the 2D hand-over.
            config = trainer.train_config
            trainer.train_config = replace(config, forest_blend_steps=10**9)
            trainer._attach_forest()  # the blend of this step under that schedule
            probabilities = predict_probabilities(trainer.model, source, device=device)
            prediction = probabilities_to_labels(probabilities, target.class_map.values)
            kept[f"{budget:g}"] = foreground_dice(prediction, sample)
            trainer.train_config = config
            trainer._attach_forest()
    outcome: dict[str, Any] = {"dice": dice, "steps": steps, "seconds": trained}
    outcome["refinement"] = trainer.model.refinement.to_dict() if trainer.model.refinement else None
    if unrefined:
        outcome["dice_norefine"] = unrefined
    if kept:
        outcome["dice_nohandover"] = kept
    return outcome


# ----------------------------------------------------------------------------- running
MUST_SHOW_METHODS = ("rf", "pce", "defaults", "dense")
_SAMPLES: dict[str, Any] = {}


def run_job(job: tuple[str, str, str, int], options: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Run one ``(dataset, annotation, method, seed)``: its record, then the records derived from it.

    ``options``: ``budgets``, ``threads``, ``device`` and ``hardware`` (a description kept in the
    record). Samples are loaded once per process.
    """
    from scribbleseg.samples import load_sample

    dataset, annotation, method, seed = job
    if dataset not in _SAMPLES:
        _SAMPLES[dataset] = load_sample(dataset)
    sample = _SAMPLES[dataset]
    kind, _, density = annotation.partition("/")
    labels = annotate(sample, kind, density, seed)
    started = time.perf_counter()
    if method == "rf":
        outcome = run_rf(sample, labels, seed=seed, threads=options["threads"])
    else:
        outcome = run_network(
            sample,
            labels,
            method,
            seed=seed,
            budgets=options["budgets"],
            threads=options["threads"],
            device=options["device"],
        )
    record = {
        "key": run_key(dataset, annotation, method, seed),
        "dataset": dataset,
        "annotation": annotation,
        "method": method,
        "seed": seed,
        "labelled_percent": 100.0 * float(np.mean(labels > 0)),
        "threads": options["threads"],
        "hardware": options["hardware"],
        "wall": time.perf_counter() - started,
        **outcome,
    }
    derived = []
    if "dice_norefine" in record:
        unrefined = record.pop("dice_norefine")
        derived.append(
            record
            | {
                "key": run_key(dataset, annotation, "norefine", seed),
                "method": "norefine",
                "dice": unrefined,
                "refinement": None,
                "derived_from": record["key"],
            }
        )
    if "dice_nohandover" in record:
        derived.append(
            record
            | {
                "key": run_key(dataset, annotation, "nohandover", seed),
                "method": "nohandover",
                "dice": record.pop("dice_nohandover"),
                "derived_from": record["key"],
            }
        )
    return [record, *derived]


def run_jobs(
    todo: list[tuple[str, str, str, int]],
    options: Mapping[str, Any],
    jobs: int = 1,
    stop_after: float | None = None,
) -> Iterable[list[dict[str, Any]]]:
    """The entries of every job in ``todo``, as each finishes.

    ``jobs`` > 1 runs that many at once, each in its own process with ``options["threads"]`` CPU
    threads (on a GPU they share it). ``stop_after`` seconds: no job starts after that; the ones
    running finish.
    """
    started = time.perf_counter()

    def may_start() -> bool:
        return stop_after is None or time.perf_counter() - started < stop_after

    if jobs <= 1:
        for i, job in enumerate(todo):
            if not may_start():
                print(f"--stop-after {stop_after:g} s: {len(todo) - i} jobs not started", flush=True)
                return
            yield run_job(job, options)
        return
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    queue = list(reversed(todo))
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        running = set()
        while queue or running:
            while queue and len(running) < jobs and may_start():
                running.add(pool.submit(run_job, queue.pop(), options))
            if not running:
                print(f"--stop-after {stop_after:g} s: {len(queue)} jobs not started", flush=True)
                return
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                try:
                    yield future.result()
                except Exception:  # one failed run does not end the others
                    traceback.print_exc()
                    print("a run failed (above); the others go on", flush=True)


# ----------------------------------------------------------------------------- bookkeeping
def run_key(dataset: str, annotation: str, method: str, seed: int) -> str:
    return f"{dataset}|{annotation}|{method}|{seed}"


def load_results(path: Path) -> dict[str, dict[str, Any]]:
    results = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                results[record["key"]] = record
    return results


def same_as_defaults(method: str) -> bool:
    """Whether ``method`` trains exactly what ``defaults`` trains (then only ``defaults`` runs)."""
    from scribbleseg.core.config import LossConfig

    return (
        method in NETWORK_METHODS
        and method != "defaults"
        and loss_for(method) == LossConfig()
        and train_for(method, seed=0, threads=1) == train_for("defaults", seed=0, threads=1)
    )


def plan(args: argparse.Namespace) -> Iterable[tuple[str, str, str, int]]:
    for dataset in args.datasets:
        for seed in args.seeds:
            if "dense" in args.methods:
                yield dataset, "dense", "dense", seed
            for kind in args.annotations:
                for density in args.densities:
                    for method in args.methods:
                        if method not in ("dense", "norefine") and not same_as_defaults(method):
                            yield dataset, f"{kind}/{density}", method, seed


def mean_sd(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def dice_at(record: dict[str, Any], budget: str) -> float | None:
    """Dice of a run at ``budget`` (the forest's at any budget); None if it was not evaluated then."""
    dice = record["dice"]
    return dice.get(budget, dice.get("any"))


def values_at(records: list[dict[str, Any]], budget: str) -> list[float]:
    return [v for v in (dice_at(r, budget) for r in records) if v is not None]


def report(results: dict[str, dict[str, Any]], budgets: list[str]) -> str:
    """Markdown: one table per data set and annotation, then the must-show summary."""
    hardware = hardware_of(results)
    by_cell: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in results.values():
        by_cell[(record["dataset"], record["annotation"], record["method"])].append(record)
    datasets = [d for d in DATASETS if any(k[0] == d for k in by_cell)]
    lines = [
        "Mean foreground Dice of the whole-image prediction (mean ± sd over seeds; each seed draws its "
        "own annotation and trains its own network). Budgets are seconds of training on "
        f"{hardware}; the random forest's column is its whole time (features + fit + prediction) on "
        "the same CPU threads.",
        "",
    ]
    summary = [
        "",
        f"**Must-show check at {budgets[-1]} s** (`best` = better of RF and partial CE, "
        "`goal` = best + 0.7 × (dense − best) where dense > best):",
        "",
        "| data set | annotation | RF | pCE | best | dense | goal | ScribbleSeg | ≥ best | ≥ goal |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for dataset in datasets:
        dense = values_at(by_cell.get((dataset, "dense", "dense"), []), budgets[-1])
        annotations = sorted({k[1] for k in by_cell if k[0] == dataset and k[1] != "dense"})
        for annotation in annotations:
            labelled = [r["labelled_percent"] for r in by_cell.get((dataset, annotation, "rf"), [])]
            note = f", {statistics.fmean(labelled):.2f} % of voxels labelled" if labelled else ""
            lines += [
                f"#### {dataset}, {annotation.replace('/', ', ')}{note}",
                "",
                "| method | " + " | ".join(f"Dice @ {b} s" for b in budgets) + " | seeds |",
                "|---|" + "---|" * (len(budgets) + 1),
            ]
            for method in METHODS:
                key = (dataset, "dense" if method == "dense" else annotation, method)
                records = by_cell.get(key, [])
                if not records:
                    continue
                label = LABELS[method]
                if method in ("noaverage", "noblend", "prevalence") and not all(
                    "refinement" in r for r in records
                ):
                    label += " (measured before the CRF refinement)"
                if method == "defaults" and same_as_defaults("all"):
                    label += " (= pCE + all three)"
                cells = []
                for budget in budgets:
                    cells.append(mean_sd(values_at(records, budget)))
                if method == "rf":
                    seconds = statistics.fmean(r["seconds"] for r in records)
                    cells = [f"{c} ({seconds:.0f} s)" for c in cells]
                seeds = ", ".join(str(r["seed"]) for r in sorted(records, key=lambda r: r["seed"]))
                lines.append(f"| {label} | " + " | ".join(cells) + f" | {seeds} |")
            lines.append("")

            def final(method: str, cell: tuple[str, str] = (dataset, annotation)) -> float | None:
                values = values_at(by_cell.get((*cell, method), []), budgets[-1])
                return statistics.fmean(values) if values else None

            rf, pce, ours = final("rf"), final("pce"), final("defaults")
            if rf is None or pce is None or ours is None:
                continue
            best = max(rf, pce)
            dense_mean = statistics.fmean(dense) if dense else None
            goal = best + 0.7 * (dense_mean - best) if dense_mean is not None and dense_mean > best else best
            summary.append(
                f"| {dataset} | {annotation} | {rf:.3f} | {pce:.3f} | {best:.3f} | "
                f"{'–' if dense_mean is None else f'{dense_mean:.3f}'} | {goal:.3f} | {ours:.3f} | "
                f"{'yes' if ours >= best else f'no ({ours - best:+.3f})'} | "
                f"{'yes' if ours >= goal else f'no ({ours - goal:+.3f})'} |"
            )
    return "\n".join(lines + summary) + "\n"


def plot(results: dict[str, dict[str, Any]], budgets: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["dataset"], r["annotation"]) for r in results.values() if r["annotation"] != "dense"})
    if not panels:
        return
    columns = min(4, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.2 * rows + 0.6), squeeze=False)
    tab20 = plt.get_cmap("tab20").colors
    colours = [c for i, c in enumerate(tab20) if i not in (6, 7)]  # red is the defaults; one per method
    handles: dict[str, Any] = {}  # one legend entry per method, from whichever panel has it
    for ax, (dataset, annotation) in zip(axes.flat, panels, strict=False):
        for method in METHODS:
            cell = "dense" if method == "dense" else annotation
            records = [
                r
                for r in results.values()
                if (r["dataset"], r["annotation"], r["method"]) == (dataset, cell, method)
            ]
            if not records:
                continue
            points = [(float(b), values_at(records, b)) for b in budgets]
            points = [(x, statistics.fmean(v)) for x, v in points if v]
            if not points:
                continue
            style = {"rf": "k--", "dense": "k:", "defaults": "r-o"}.get(method, "-o")
            colour = {} if style[0] in "kr" else {"color": colours[METHODS.index(method) % len(colours)]}
            (line,) = ax.plot(
                *zip(*points, strict=True), style, label=LABELS[method].strip("*"), markersize=3, **colour
            )
            handles.setdefault(method, line)
        ax.set_title(f"{dataset}, {annotation}", fontsize=9)
        ax.set_xlabel(f"training budget (s, {hardware_of(results)})", fontsize=7)
        ax.set_ylabel("foreground Dice", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    ordered = [handles[m] for m in METHODS if m in handles]
    figure.legend(handles=ordered, loc="lower center", ncol=min(len(ordered), 6), fontsize=7, frameon=False)
    figure.tight_layout(rect=(0, 0.6 / (3.2 * rows + 0.6), 1, 1))
    figure.savefig(path, dpi=110)


def write_markdown(
    path: Path, text: str, markers: tuple[str, str] = MARKERS, title: str = "Accuracy"
) -> None:
    old = path.read_text() if path.exists() else ""
    start, end = markers
    block = f"{start}\n{text}{end}"
    if start in old and end in old:
        new = old[: old.index(start)] + block + old[old.index(end) + len(end) :]
    else:
        new = old.rstrip() + f"\n\n## {title} (`benchmarks/accuracy.py`)\n\n" + block + "\n"
    path.write_text(new)


def _path_or_none(value: str) -> Path | None:
    return Path(value) if value else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--annotations", nargs="+", default=list(ANNOTATIONS), choices=ANNOTATIONS)
    parser.add_argument("--densities", nargs="+", default=list(DENSITIES), choices=list(DENSITIES))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="where the networks train and predict (the forest always runs on the CPU threads); "
        "cuda: the GPU table, with its own defaults for --budgets, --results, --plot and its own "
        "block in docs/benchmarks.md",
    )
    parser.add_argument(
        "--budgets", nargs="+", type=float, help="seconds of training (default 60 180 on cpu, 10 30 on cuda)"
    )
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for every method")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at once, each in its own process on --threads threads (sharing the GPU on cuda); "
        "with more than one, the runs of rf, pce, defaults and dense go first, seed by seed",
    )
    parser.add_argument(
        "--stop-after", type=float, help="start no run after this many seconds (the ones running finish)"
    )
    parser.add_argument(
        "--results",
        type=Path,
        help="JSON-lines results (default benchmarks/results/accuracy.jsonl, accuracy_gpu.jsonl on cuda)",
    )
    parser.add_argument("--rerun", action="store_true", help="run again what the results file already has")
    parser.add_argument("--report-only", action="store_true", help="only write the tables and the plot")
    parser.add_argument(
        "--markdown", type=_path_or_none, default=ROOT / "docs" / "benchmarks.md", help="'' = do not write"
    )
    parser.add_argument(
        "--plot",
        help="'' = no plot (default docs/accuracy.png, docs/accuracy_gpu.png on cuda)",
    )
    args = parser.parse_args(argv)
    gpu = args.device == "cuda"
    if args.budgets is None:
        args.budgets = [10.0, 30.0] if gpu else [60.0, 180.0]
    if args.results is None:
        args.results = ROOT / "benchmarks" / "results" / ("accuracy_gpu.jsonl" if gpu else "accuracy.jsonl")
    if args.plot is None:  # not given ('' = no plot)
        args.plot = ROOT / "docs" / ("accuracy_gpu.png" if gpu else "accuracy.png")
    args.plot = _path_or_none(str(args.plot))
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    hardware = f"{args.threads} CPU threads"
    if gpu and not args.report_only:
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: torch sees no CUDA device here")
        hardware = f"one {torch.cuda.get_device_name()} and {args.threads} CPU threads"

    args.results.parent.mkdir(parents=True, exist_ok=True)
    results = load_results(args.results)
    budgets = [f"{b:g}" for b in sorted(args.budgets)]
    if not args.report_only:
        todo = [job for job in plan(args) if args.rerun or run_key(*job) not in results]
        print(f"{len(todo)} runs to do ({len(results)} already in {args.results})", flush=True)
        options = {
            "budgets": args.budgets,
            "threads": args.threads,
            "device": args.device,
            "hardware": hardware,
        }
        if args.jobs > 1:
            todo.sort(key=lambda job: (job[2] not in MUST_SHOW_METHODS, job[3]))
        for i, entries in enumerate(run_jobs(todo, options, args.jobs, args.stop_after), 1):
            for entry in entries:
                results[entry["key"]] = entry
                with args.results.open("a") as f:
                    f.write(json.dumps(entry) + "\n")
            record = entries[0]
            dice = ", ".join(f"{k}: {v:.3f}" for k, v in record["dice"].items())
            print(f"[{i}/{len(todo)}] {record['key']}: Dice {dice} ({record['wall']:.0f} s)", flush=True)
    text = report(results, budgets)
    print(text)
    if args.markdown:
        if gpu:
            write_markdown(args.markdown, text, GPU_MARKERS, "Accuracy on a GPU")
        else:
            write_markdown(args.markdown, text)
    if args.plot:
        plot(results, budgets, args.plot)
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
