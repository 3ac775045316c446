"""How much forest the final prediction should mix in, once the network has trained a while.

Two measurements behind ``TrainConfig.forest_blend_steps`` (the blend's hand-over to the network,
by default after 1500 steps in 2D and never in 3D; ``docs/benchmarks.md``):

* ``sets``: trains the defaults once per set (``dataset/kind/density/seed``, 180 s on 2 CPU
  threads, as ``accuracy.py``; the forest blend as it was before the hand-over, fading with the
  teacher only), caches the network's probabilities (plain and averaged over flips), the forest's,
  and prints the Dice of the refined mix ``(1 − a)·network + a·forest`` for several ``a``, with and
  without flip test-time augmentation, at refinement weights 1 and 2;
* ``steps``: trains the defaults on one 3D set for 500, 1000, 1500 steps and prints, at each, the
  network alone, the forest alone and the refined mixes: does a longer-trained 3D network still
  need the forest?

And one of the CRF refinement: ``widths`` refines the cached predictions of ``sets`` at several
intensity widths (multiples of the image noise; 2 is the default). ``ceiling`` asks how far any
mix of the cached network and forest can go: the Dice of the mix at several weights up to the
forest alone, refined or not, with the network's class prevalence matched to the forest's or not,
beside the ilastik-equivalent forest of ``accuracy.py`` on the same annotation. ``recalibration``
trains one set and re-estimates the network's batch-norm statistics several times
(``Trainer.recalibrate_batch_norm``, each time on other patches): how much do the network and the
mix depend on which patches that draws? ``prevalence`` re-weights the cached mix to the class
shares it implies (``core/prevalence.py``) before the refinement: does it move the MRI's
background / grey-matter split to where the truth has it? ``classifiers`` fits other per-voxel
classifiers on the ilastik-equivalent forest's features: is the forest the best of its kind here?

    python benchmarks/blend_offline.py sets nuclei2d/points/dense/0 nuclei2d/points/sparse/0 \\
        nuclei2d/points/sparse/1 nuclei2d/scribbles/dense/0 nuclei2d/scribbles/sparse/0 \\
        mri3d/points/dense/0 mri3d/points/sparse/0 mri3d/scribbles/dense/0 \\
        mri3d/scribbles/sparse/0                                    # about 60 min, 10 with the cache
    python benchmarks/blend_offline.py steps mri3d/scribbles/sparse/0           # about 17 min
    python benchmarks/blend_offline.py widths nuclei2d/points/dense/0 nuclei2d/points/sparse/0 \\
        nuclei2d/points/sparse/1 nuclei2d/scribbles/dense/0 nuclei2d/scribbles/sparse/0
                                            # the refinement's intensity width, from the cache
    python benchmarks/blend_offline.py ceiling mri3d/scribbles/sparse/{0,1,2} \\
        mri3d/scribbles/dense/{0,1,2}       # the best any mix reaches, from the cache (6 min)
    python benchmarks/blend_offline.py ceiling --forest rf \\
        mri3d/scribbles/sparse/{0,1,2} mri3d/scribbles/dense/{0,1,2} --weights 0.5 0.8 0.9 0.95
                                            # the network mixed with the RF itself (10 min)
    python benchmarks/blend_offline.py classifiers mri3d/scribbles/sparse/{0,1,2} \\
        mri3d/scribbles/dense/{0,1,2}       # other classifiers on ilastik's bank (8 min, no cache)
    python benchmarks/blend_offline.py recalibration mri3d/scribbles/dense/0      # about 6 min
    python benchmarks/blend_offline.py prevalence mri3d/scribbles/sparse/{0,1,2} \\
        mri3d/scribbles/dense/{0,1,2}       # the mix re-weighted to its class shares (6 min)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy

CACHE = Path(__file__).resolve().parent / "results" / "blend"
MIXES = (0.0, 0.2, 0.4, 0.6, 0.8)


def _trainer(dataset: str, kind: str, density: str, seed: int, **train: Any) -> tuple[Any, Any, Any, Any]:
    from scribbleseg.samples import load_sample

    sample = load_sample(dataset)
    labels = accuracy.annotate(sample, kind, density, seed)
    # The defaults as they were before the 2D hand-over (nohandover), on 2 threads as accuracy.py.
    source, target, trainer = accuracy.build_trainer(
        sample, labels, "nohandover", seed=seed, threads=2, **train
    )
    return sample, source, target, trainer


def _parts(trainer: Any, source: Any, *, tta: bool) -> dict[str, Any]:
    """The network's and the forest's probabilities, without the blend and the refinement."""
    from scribbleseg.core.inference import predict_probabilities

    model = trainer.model
    refinement, blend = model.refinement, model.forest_blend
    model.refinement = model.forest_blend = None
    try:
        parts = {"net": predict_probabilities(model, source, device="cpu")}
        if tta:
            parts["net_tta"] = predict_probabilities(model, source, device="cpu", tta=True)
    finally:
        model.refinement, model.forest_blend = refinement, blend
    region = tuple(slice(0, s) for s in source.spatial_shape)
    if blend is None:  # the forest was not fitted yet (a very short run): the network alone
        parts["forest"], parts["w"] = np.zeros_like(parts["net"]), 0.0
    else:
        parts["forest"], parts["w"] = blend.probabilities(source, region), blend.weight
    parts["sigma"] = np.array(refinement.sigma_intensity)
    return parts


def _dice(probabilities: np.ndarray, values: Any, sample: Any) -> float:
    from scribbleseg.core.inference import probabilities_to_labels

    return accuracy.foreground_dice(probabilities_to_labels(probabilities, values), sample)


def _refine(
    probabilities: np.ndarray, image: np.ndarray, source: Any, sigma: Any, weight: float
) -> np.ndarray:
    from scribbleseg.core.refine import WINDOW_RADIUS, MeanField

    refinement = MeanField(tuple(sigma), weight=weight, window_radius=WINDOW_RADIUS[source.spatial_dims])
    return refinement.apply(probabilities, image, source.spacing)


def _cues(probabilities: np.ndarray, values: Any, labels: np.ndarray, image: np.ndarray, sigma: Any) -> str:
    """Label-free cues of a classifier's quality: confidence off the labels, image-edge energy.

    ``confidence``: the mean top probability on unlabelled voxels. ``energy``: the Potts energy of
    its labels, the sum over neighbour pairs with different labels of ``exp(-Δ² / 2σ²)`` (Δ the
    first channel's difference, σ the refinement's intensity width): low when its boundaries run
    along the image's edges and are few.
    """
    from scribbleseg.core.inference import probabilities_to_labels

    hard = probabilities_to_labels(probabilities, values)
    energy = 0.0
    for axis in range(hard.ndim):
        ahead = tuple(slice(1, None) if a == axis else slice(None) for a in range(hard.ndim))
        behind = tuple(slice(None, -1) if a == axis else slice(None) for a in range(hard.ndim))
        affinity = np.exp(-((image[0][ahead] - image[0][behind]) ** 2) / (2 * float(sigma[0]) ** 2))
        energy += float(((hard[ahead] != hard[behind]) * affinity).sum())
    confidence = float(probabilities.max(0)[labels == 0].mean())
    return f"confidence {confidence:.3f}, energy {energy:.0f}"


def sets(specs: list[str], budget: float) -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        dataset, kind, density, seed = spec.split("/")
        path = CACHE / f"{dataset}_{kind}_{density}_{seed}.npz"
        sample, source, target, trainer = _trainer(dataset, kind, density, int(seed), time_budget=budget)
        if path.exists():
            data = dict(np.load(path))
        else:
            for _ in trainer.run():
                pass
            data = _parts(trainer, source, tta=True) | {"steps": trainer.step}
            np.savez_compressed(path, **data)
        image = source.read(tuple(slice(0, s) for s in source.spatial_shape))
        values = target.class_map.values
        w = float(data["w"])
        alone = {name: _dice(data[name], values, sample) for name in ("net", "net_tta", "forest")}
        print(
            f"{spec}: {int(data['steps'])} steps, blend weight then {w:.2f}; network {alone['net']:.3f}, "
            f"with flips {alone['net_tta']:.3f}, forest {alone['forest']:.3f}"
        )
        labels = accuracy.annotate(sample, kind, density, int(seed))
        for name in ("net", "forest"):
            print(f"  {name}: " + _cues(data[name], values, labels, image, data["sigma"]))
        for name in ("net", "net_tta"):
            for weight in (1.0, 2.0):
                cells = []
                for a in sorted({*MIXES, round(w, 2)}):
                    mix = (1 - a) * data[name] + a * data["forest"]
                    dice = _dice(_refine(mix, image, source, data["sigma"], weight), values, sample)
                    cells.append(f"a={a:.2f} {dice:.3f}")
                flips = "with flips" if name == "net_tta" else "no flips"
                print(f"  refined λ={weight:g}, {flips}: " + ", ".join(cells), flush=True)


def _cached(spec: str) -> tuple[dict[str, Any], Any, Any, np.ndarray, np.ndarray, tuple[int, ...]]:
    """The cache of ``sets`` for ``spec``, its sample, image source, image, annotation and classes."""
    from scribbleseg.core.volume import ImageSource
    from scribbleseg.samples import load_sample

    dataset, kind, density, seed = spec.split("/")
    path = CACHE / f"{dataset}_{kind}_{density}_{seed}.npz"
    if not path.exists():
        raise SystemExit(f"{path} is missing: run `blend_offline.py sets {spec}` first")
    data = dict(np.load(path))
    sample = load_sample(dataset)
    source = ImageSource(sample.image, spacing=sample.spacing)
    image = source.read(tuple(slice(0, s) for s in source.spatial_shape))
    labels = accuracy.annotate(sample, kind, density, int(seed))
    values = tuple(int(v) for v in np.unique(labels[labels > 0]))
    return data, sample, source, image, labels, values


def widths(specs: list[str], multiples: list[float]) -> None:
    """The refined prediction at several intensity widths (multiples of the noise), from the cache.

    2D sets: the network alone (the blend has handed over by 180 s); 3D sets: the mix at the
    weight it had then.
    """
    from scribbleseg.core.refine import NOISE_WIDTHS

    for spec in specs:
        data, sample, source, image, _, values = _cached(spec)
        a = 0.0 if source.spatial_dims == 2 else float(data["w"])
        mix = (1 - a) * data["net"] + a * data["forest"]
        noise = np.asarray(data["sigma"], dtype=float) / NOISE_WIDTHS
        cells = []
        for multiple in multiples:
            refined = _refine(mix, image, source, tuple(noise * multiple), 1.0)
            cells.append(f"{multiple:g}× {_dice(refined, values, sample):.3f}")
        print(f"{spec} (a = {a:.2f}): " + ", ".join(cells), flush=True)


def _matched(network: np.ndarray, reference: np.ndarray, iterations: int = 100) -> np.ndarray:
    """``network`` re-weighted (:func:`~scribbleseg.core.prevalence.reweight`) to ``reference``'s prevalence.

    The factors are found by fixed-point iteration on every second voxel per axis: the mean of the
    re-weighted probabilities over the image equals the mean of ``reference``'s.
    """
    from scribbleseg.core.prevalence import reweight

    classes = len(network)
    target = reference.reshape(classes, -1).mean(1)
    sample = network[(slice(None), *[slice(None, None, 2)] * (network.ndim - 1))]
    factors = np.ones(classes)
    for _ in range(iterations):
        current = reweight(sample, factors).reshape(classes, -1).mean(1)
        factors = factors * target / np.maximum(current, 1e-12)
        factors = factors / factors.mean()
    return reweight(network, factors)


def _print_means(rows: dict[str, list[float]]) -> None:
    """Each row's mean Dice over the sets, and its per-set figures."""
    print("mean over the sets:")
    for key, dice in rows.items():
        print(f"  {key}: {np.mean(dice):.4f}  ({', '.join(f'{d:.4f}' for d in dice)})", flush=True)


def ceiling(specs: list[str], weights: list[float], forest_kind: str = "teacher") -> None:
    """The Dice of every mix of the cached network and forest, against the ilastik-equivalent forest.

    For each mix weight ``a`` (1 = the forest alone), without and with the CRF refinement, with the
    network as it is and with its class prevalence matched to the forest's (:func:`_matched`). The
    last lines give each row's mean over the sets beside the ilastik-equivalent forest's.
    ``forest_kind`` "rf" mixes the network with the ilastik-equivalent forest itself (fitted on all
    labelled voxels, ilastik's whole filter bank) instead of the cached teacher forest.
    """
    rows: dict[str, list[float]] = {}
    for spec in specs:
        data, sample, source, image, labels, values = _cached(spec)
        seed = int(spec.split("/")[3])
        network, forest = data["net"].astype(np.float32), data["forest"].astype(np.float32)
        if forest_kind == "rf":
            forest = accuracy.rf_probabilities(sample, labels, seed=seed, threads=2)
            if len(forest) != len(network):
                raise SystemExit(f"{spec}: the RF saw {len(forest)} classes, the network {len(network)}")
            rf = _dice(forest, values, sample)  # the forest's argmax is its prediction
        else:
            rf = accuracy.run_rf(sample, labels, seed=seed, threads=2)["dice"]["any"]
        matched = _matched(network, forest)
        rows.setdefault("ilastik-equivalent RF", []).append(rf)
        rows.setdefault("network alone", []).append(_dice(network, values, sample))
        cells = [f"RF {rf:.4f}", f"network {rows['network alone'][-1]:.4f}"]
        default = float(data["w"])
        mixes = [(default, "a = the default's")] + [(a, f"a = {a:.2f}") for a in sorted({*weights, 1.0})]
        for a, label in mixes:
            for name, net in (("", network), (", matched", matched)):
                if a == 1.0 and name:
                    continue
                mix = (1 - a) * net + a * forest
                for refined in (False, True):
                    probabilities = _refine(mix, image, source, data["sigma"], 1.0) if refined else mix
                    key = f"{label}{name}{', refined' if refined else ''}"
                    rows.setdefault(key, []).append(_dice(probabilities, values, sample))
                    cells.append(f"{key} {rows[key][-1]:.4f}")
        print(f"{spec} ({int(data['steps'])} steps, the default's a = {default:.2f}): " + "; ".join(cells))
    _print_means(rows)


def prevalence(specs: list[str]) -> None:
    """The refined mix at the default's weight, re-weighted to the prevalence it implies, from the cache.

    Rows: the mix as the defaults make it; each of network and forest re-weighted by its own
    estimate first (:func:`~scribbleseg.core.prevalence.estimate_factors`, as
    ``TrainConfig.prevalence_correction`` does); the mix re-weighted by its estimate; the same with
    the factors' square roots (half the correction in log terms). Every row refined as prediction
    does. The last lines give each row's mean over the sets.
    """
    from scribbleseg.core.prevalence import estimate_factors, reweight

    rows: dict[str, list[float]] = {}
    for spec in specs:
        data, sample, source, image, _, values = _cached(spec)
        network, forest = data["net"].astype(np.float32), data["forest"].astype(np.float32)
        a = float(data["w"])
        mix = (1 - a) * network + a * forest
        factors = estimate_factors(mix)
        variants = {
            "the defaults' mix": mix,
            "each corrected, then mixed": (1 - a) * reweight(network, estimate_factors(network))
            + a * reweight(forest, estimate_factors(forest)),
            "the mix corrected": reweight(mix, factors),
            "the mix half corrected": reweight(mix, np.sqrt(factors)),
        }
        cells = []
        for key, probabilities in variants.items():
            refined = _refine(probabilities, image, source, data["sigma"], 1.0)
            rows.setdefault(key, []).append(_dice(refined, values, sample))
            cells.append(f"{key} {rows[key][-1]:.4f}")
        shares = ", ".join(f"{f / len(factors):.3f}" for f in factors)
        print(f"{spec} (a = {a:.2f}, the mix's estimated shares {shares}): " + "; ".join(cells), flush=True)
    _print_means(rows)


def _classifiers(seed: int, threads: int) -> dict[str, Any]:
    """The per-voxel classifiers of ``classifiers``, unfitted: the ilastik-equivalent forest first."""
    from sklearn.ensemble import ExtraTreesClassifier, HistGradientBoostingClassifier

    def forest(**options: Any) -> Any:
        return accuracy.ilastik_forest(seed=seed, threads=threads, **options)

    return {
        "rf": forest(),
        "rf, balanced class weights": forest(class_weight="balanced"),
        "rf, at least 5 voxels a leaf": forest(min_samples_leaf=5),
        "rf, half the features a split": forest(max_features=0.5),
        "extra trees": ExtraTreesClassifier(n_estimators=100, n_jobs=threads, random_state=seed),
        "histogram gradient boosting": HistGradientBoostingClassifier(random_state=seed),
    }


def classifiers(specs: list[str], threads: int = 2) -> None:
    """Other per-voxel classifiers on ilastik's filter bank (:func:`_classifiers`), beside its forest.

    The same features and labelled voxels as ``accuracy.run_rf`` (the image's bank computed once:
    every set must be of one data set); each classifier's hard prediction of the whole image.
    """
    from scribbleseg.samples import load_sample

    datasets = {spec.split("/")[0] for spec in specs}
    if len(datasets) != 1:
        raise SystemExit(f"classifiers takes the sets of one data set, got {sorted(datasets)}")
    sample = load_sample(datasets.pop())
    table = np.ascontiguousarray(accuracy.feature_table(sample))
    rows: dict[str, list[float]] = {}
    for spec in specs:
        _, kind, density, seed_text = spec.split("/")
        seed = int(seed_text)
        labels = accuracy.annotate(sample, kind, density, seed)
        labelled = labels.ravel() > 0
        cells = []
        for name, model in _classifiers(seed, threads).items():
            start = time.perf_counter()
            model.fit(table[labelled], labels.ravel()[labelled])
            prediction = model.predict(table).reshape(labels.shape)
            rows.setdefault(name, []).append(accuracy.foreground_dice(prediction, sample))
            cells.append(f"{name} {rows[name][-1]:.4f} ({time.perf_counter() - start:.0f} s)")
        print(f"{spec}: " + "; ".join(cells), flush=True)
    _print_means(rows)


def recalibration(spec: str, draws: int, batches: int, budget: float = 180.0) -> None:
    """The network and the refined mix after each of ``draws`` batch-norm recalibrations.

    First with the training sampler as the trainer uses it (patches near labels, augmented), then
    with patches drawn evenly over the image without augmentation (what prediction sees).
    """
    dataset, kind, density, seed = spec.split("/")
    sample, source, target, trainer = _trainer(dataset, kind, density, int(seed), time_budget=budget)
    for _ in trainer.run():
        pass
    values = target.class_map.values
    image = source.read(tuple(slice(0, s) for s in source.spatial_shape))
    print(f"{spec}: {trainer.step} steps", flush=True)

    def report(what: str) -> None:
        data = _parts(trainer, source, tta=False)
        w = float(data["w"])
        mix = _refine((1 - w) * data["net"] + w * data["forest"], image, source, data["sigma"], 1.0)
        network = _dice(data["net"], values, sample)
        print(f"  {what}: network {network:.4f}, refined mix {_dice(mix, values, sample):.4f}", flush=True)

    report("as trained (recalibrated once at the end of the run)")
    sampler = trainer.sampler
    kept = sampler.label_probability, sampler.augment
    for label_probability, augment, name in (
        (kept[0], kept[1], "the training sampler"),
        (0.0, False, "even patches, no augmentation"),
    ):
        sampler.label_probability, sampler.augment = label_probability, augment
        for draw in range(draws):
            trainer.recalibrate_batch_norm(batches=batches)
            report(f"recalibrated on {batches} batches of {name}, draw {draw + 1}")
    sampler.label_probability, sampler.augment = kept


def steps(spec: str, chunk: int, chunks: int) -> None:
    dataset, kind, density, seed = spec.split("/")
    sample, source, target, trainer = _trainer(dataset, kind, density, int(seed), steps=chunk)
    image = source.read(tuple(slice(0, s) for s in source.spatial_shape))
    values = target.class_map.values
    started = time.perf_counter()
    for _ in range(chunks):
        for _ in trainer.run():
            pass
        data = _parts(trainer, source, tta=False)
        cells = []
        for a in (0.0, 0.3, 0.5, 0.7):
            mix = (1 - a) * data["net"] + a * data["forest"]
            refined = _refine(mix, image, source, data["sigma"], 1.0)
            cells.append(f"a={a:.1f} {_dice(refined, values, sample):.3f}")
        print(
            f"{spec} step {trainer.step} ({time.perf_counter() - started:.0f} s): network "
            f"{_dice(data['net'], values, sample):.3f}, forest {_dice(data['forest'], values, sample):.3f}; "
            f"refined mixes " + ", ".join(cells),
            flush=True,
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="what", required=True)
    one = sub.add_parser("sets", help="the mix at 180 s on several sets")
    one.add_argument("specs", nargs="+", metavar="DATASET/KIND/DENSITY/SEED")
    one.add_argument("--budget", type=float, default=180.0)
    two = sub.add_parser("steps", help="a 3D set at growing step counts")
    two.add_argument("spec", metavar="DATASET/KIND/DENSITY/SEED")
    two.add_argument("--chunk", type=int, default=500)
    two.add_argument("--chunks", type=int, default=3)
    three = sub.add_parser("widths", help="the refinement's intensity width, on cached sets")
    three.add_argument("specs", nargs="+", metavar="DATASET/KIND/DENSITY/SEED")
    three.add_argument("--multiples", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0, 4.0])
    four = sub.add_parser("ceiling", help="every mix of the cached network and forest, against the RF")
    four.add_argument("specs", nargs="+", metavar="DATASET/KIND/DENSITY/SEED")
    four.add_argument("--weights", type=float, nargs="+", default=[0.8, 0.9])
    four.add_argument(
        "--forest",
        choices=("teacher", "rf"),
        default="teacher",
        help="mix the network with the cached teacher forest or with the ilastik-equivalent RF",
    )
    five = sub.add_parser("recalibration", help="a trained set's batch-norm statistics, drawn again")
    five.add_argument("spec", metavar="DATASET/KIND/DENSITY/SEED")
    five.add_argument("--draws", type=int, default=3)
    five.add_argument("--batches", type=int, default=8)
    five.add_argument("--budget", type=float, default=180.0)
    six = sub.add_parser("prevalence", help="the refined mix re-weighted to its estimated class shares")
    six.add_argument("specs", nargs="+", metavar="DATASET/KIND/DENSITY/SEED")
    seven = sub.add_parser("classifiers", help="other per-voxel classifiers on ilastik's bank, beside its RF")
    seven.add_argument("specs", nargs="+", metavar="DATASET/KIND/DENSITY/SEED")
    args = parser.parse_args()
    if args.what == "classifiers":
        classifiers(args.specs)
    elif args.what == "prevalence":
        prevalence(args.specs)
    elif args.what == "recalibration":
        recalibration(args.spec, args.draws, args.batches, args.budget)
    elif args.what == "ceiling":
        ceiling(args.specs, args.weights, args.forest)
    elif args.what == "sets":
        sets(args.specs, args.budget)
    elif args.what == "widths":
        widths(args.specs, args.multiples)
    else:
        steps(args.spec, args.chunk, args.chunks)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
