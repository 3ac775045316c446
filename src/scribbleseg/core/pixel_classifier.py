"""Instant feature-based preview: a random forest on filter features, fitted on the labels in view.

In the first seconds of a session the network has not learnt anything yet, while a pixel classifier
on ilastik's filter features (``core/features.py``) is right almost at once: on the shipped nuclei
sample such a forest reaches a nucleus Dice of 0.84–0.91 from a few strokes in about a second
(``benchmarks/accuracy.py``). The trainer therefore shows this forest's prediction of the viewed
region until the network has trained for ``TrainConfig.feature_preview_steps`` steps, and the
network's from then on (docs/benchmarks.md: it overtakes the forest within the 180 s budget).

The forest is fitted only on labelled voxels in and around the previewed region (the strokes the
user just painted are there), so its cost is bounded by the view, not by the image.

The same kind of forest, fitted on all labels, teaches the network (:class:`ForestTeacher`) and is
mixed into its predictions (:class:`ForestBlend`) with a weight that falls as the network trains.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from scribbleseg.core.annotations import IGNORE_INDEX, SparseTarget
from scribbleseg.core.features import FeatureSpec, filter_bank, filter_halo
from scribbleseg.core.prevalence import check_factors, estimate_factors, reweight
from scribbleseg.core.volume import ImageSource, block_regions, clip_region

if TYPE_CHECKING:
    from scribbleseg.core.refine import MeanField

__all__ = ["PREVIEW_FEATURES", "ForestBlend", "ForestTeacher", "feature_preview", "temper"]

#: Smaller banks than ilastik's default, for previews only: they need less context around the view
#: (scales up to 5 in 2D, 3.5 in 3D, not 10) and take a fraction of the time. Keyed by spatial dims.
PREVIEW_FEATURES = {
    2: FeatureSpec(sigmas=(0.3, 1.0, 1.6, 3.5, 5.0)),
    3: FeatureSpec(sigmas=(0.7, 1.6, 3.5)),
}

#: Most labelled voxels the forest is fitted on (class-balanced sample beyond that).
_MAX_TRAINING_VOXELS = 20_000


def default_block_shape(spatial_dims: int) -> tuple[int, ...]:
    """Blocks of 1 to 2 s of features on 2 CPU threads (a stop is noticed within about that)."""
    return (512, 512) if spatial_dims == 2 else (48, 192, 192)


def feature_preview(
    source: ImageSource,
    target: SparseTarget,
    region: Sequence[slice],
    *,
    spec: FeatureSpec | None = None,
    trees: int = 50,
    seed: int = 0,
    threads: int | None = None,
) -> np.ndarray | None:
    """Class probabilities of ``region`` from a random forest on filter features.

    Parameters
    ----------
    source : ImageSource
    target : SparseTarget
        The labels; only those within the region and its feature context are used.
    region : tuple of slice
        Spatial region (clipped to the image).
    spec : FeatureSpec, optional
        Filters and scales; default ``PREVIEW_FEATURES[spatial dims]``.
    trees : int
        Trees in the forest.
    seed : int
    threads : int, optional
        Threads for the forest (default: all cores).

    Returns
    -------
    (K, *region) float32 ndarray or None
        None when fewer than two classes are labelled near the region: then there is nothing to
        learn from yet.
    """
    from sklearn.ensemble import RandomForestClassifier

    shape = source.spatial_shape
    spec = spec or PREVIEW_FEATURES[len(shape)]
    region = clip_region(region, shape)
    context, crop = _context(region, filter_halo(spec, source.spacing), shape)
    labels = target.read(context)
    labelled = labels != IGNORE_INDEX
    present = np.unique(labels[labelled])
    if len(present) < 2:
        return None
    features = filter_bank(source.read(context), spacing=source.spacing, spec=spec)
    rng = np.random.default_rng(seed)
    coords = np.flatnonzero(labelled)
    if len(coords) > _MAX_TRAINING_VOXELS:
        coords = rng.choice(coords, _MAX_TRAINING_VOXELS, replace=False)
    table = features.reshape(len(features), -1)
    forest = RandomForestClassifier(n_estimators=trees, n_jobs=threads, random_state=seed)
    forest.fit(table[:, coords].T, labels.ravel()[coords])
    inside = features[(slice(None), *crop)].reshape(len(features), -1).T
    probabilities = np.zeros((target.num_classes, inside.shape[0]), dtype=np.float32)
    probabilities[forest.classes_] = forest.predict_proba(inside).T
    return probabilities.reshape(target.num_classes, *(s.stop - s.start for s in region))


def temper(refined: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``refined`` class probabilities made no more confident than ``reference``, voxel by voxel.

    Each voxel's distribution is moved towards uniform, ``1/K + s (p - 1/K)``, with ``s`` the
    largest factor up to 1 that keeps its top probability at most ``reference``'s: the classes'
    order is ``refined``'s, the confidence (``max p``) at most ``reference``'s.

    Parameters
    ----------
    refined, reference : (K, ...) float32 ndarray
        Probabilities over the first axis.

    Returns
    -------
    (K, ...) float32 ndarray
        Sums to 1 over the first axis.
    """
    uniform = 1.0 / len(refined)
    excess = refined.max(axis=0) - uniform
    allowed = np.maximum(reference.max(axis=0) - uniform, 0.0)
    scale = np.minimum(1.0, allowed / np.maximum(excess, 1e-6))
    tempered = uniform + (refined - uniform) * scale
    # With more than two classes a shrunk class can dip below 0 by rounding only; keep a distribution.
    np.clip(tempered, 0.0, None, out=tempered)
    tempered /= np.maximum(tempered.sum(axis=0, keepdims=True), 1e-12)
    return tempered.astype(np.float32, copy=False)


def _context(
    region: Sequence[slice], halo: Sequence[int], shape: Sequence[int]
) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Grow ``region`` by ``halo`` within the image; return it and where ``region`` lies inside it.

    The context stays inside the image: the filters reflect at its border themselves.
    """
    context = tuple(
        slice(max(0, s.start - h), min(n, s.stop + h)) for s, h, n in zip(region, halo, shape, strict=True)
    )
    crop = tuple(slice(s.start - c.start, s.stop - c.start) for s, c in zip(region, context, strict=True))
    return context, crop


def _key(block: tuple[slice, ...]) -> tuple[tuple[int, int], ...]:
    return tuple((s.start, s.stop) for s in block)  # slices are not hashable before Python 3.12


def _blocks(region: Sequence[slice], block_shape: Sequence[int]) -> list[tuple[slice, ...]]:
    """Tile ``region`` with blocks of at most ``block_shape``, in C order."""
    sizes = [s.stop - s.start for s in region]
    return [
        tuple(slice(b.start + r.start, b.stop + r.start) for b, r in zip(block, region, strict=True))
        for block in block_regions(sizes, block_shape)
    ]


def _block_features(source: ImageSource, spec: FeatureSpec, block: tuple[slice, ...]) -> np.ndarray:
    """Filter features ``(F, *block)`` of a block inside the image, computed with their halo."""
    halo = filter_halo(spec, source.spacing)
    context, crop = _context(block, halo, source.spatial_shape)
    features = filter_bank(source.read(context), spacing=source.spacing, spec=spec)
    return features[(slice(None), *crop)]


def _predict_block(forest: Any, features: np.ndarray, num_classes: int) -> np.ndarray:
    """Class probabilities ``(num_classes, *block)`` of a block's features; absent classes get 0."""
    predicted = forest.predict_proba(features.reshape(len(features), -1).T).T
    out = np.zeros((num_classes, *features.shape[1:]), dtype=np.float32)
    out[forest.classes_] = predicted.reshape(len(forest.classes_), *features.shape[1:])
    return out


class _FeatureCache:
    """Filter features of a teacher's blocks: all of them (``whole``) or the last one computed."""

    def __init__(self, teacher: ForestTeacher, *, whole: bool) -> None:
        self._teacher, self._whole = teacher, whole
        self._stored: dict[tuple[tuple[int, int], ...], np.ndarray] = {}

    def get(self, block: tuple[slice, ...]) -> np.ndarray:
        key = _key(block)
        features = self._stored.get(key)
        if features is None:
            features = self._teacher._features(block)
            if not self._whole:
                self._stored.clear()  # the last block is reused next (often the only one)
            self._stored[key] = features
        return features


def _hash_priority(positions: np.ndarray, salt: int) -> np.ndarray:
    """Return a pseudo-random uint64 per flat position (splitmix64 of position and salt), stateless."""
    with np.errstate(over="ignore"):
        x = positions.astype(np.uint64) + np.uint64((salt * 0x9E3779B97F4A7C15) % 2**64)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _accumulate(total: np.ndarray | None, probabilities: np.ndarray) -> np.ndarray:
    """``total + probabilities`` (float32; a new array on the first call)."""
    if total is None:
        return probabilities.astype(np.float32)
    total += probabilities
    return total


def _mean_of(total: np.ndarray, count: int) -> np.ndarray:
    """Return the mean of ``count`` accumulated maps, float16 as the teacher stores its maps."""
    return (total / count).astype(np.float16)


def _tempered(refined: np.ndarray, forest: np.ndarray) -> np.ndarray:
    """:func:`temper` of whole maps, in slices along the first spatial axis (bounded memory)."""
    out = np.empty_like(refined, dtype=np.float16)
    step = max(1, 2**22 // max(1, int(np.prod(refined.shape[2:])) * len(refined)))
    for start in range(0, refined.shape[1], step):
        index = (slice(None), slice(start, start + step))
        out[index] = temper(refined[index].astype(np.float32), forest[index].astype(np.float32))
    return out


class ForestTeacher:
    """Dense soft labels for training: a random forest on filter features, fitted on all labels.

    The network is taught, besides the user's labels, the forest's class probabilities on the
    unlabelled voxels (``LossConfig.teacher_weight``), weighted by the forest's confidence and
    fading out over training: it starts where the forest is (right after a second on simple data)
    and the regularized losses take it further. The forest is computed block by block (features
    with their halo), so memory is bounded by a block plus the stored probabilities (float16).

    Parameters
    ----------
    source : ImageSource
    target : SparseTarget
    spec : FeatureSpec, optional
        Default ``PREVIEW_FEATURES[spatial dims]``.
    trees : int
    seed : int
    threads : int, optional
    block_shape : tuple of int, optional
        Default 512² in 2D, 48 × 192 × 192 in 3D.
    max_voxels : int
        Larger images get no teacher (:attr:`available` is False): its probabilities would take
        too much memory and time.
    should_stop : callable, optional
        Polled between blocks; when it returns True the computation is abandoned.
    prevalence_correction : bool
        Re-weight the probabilities to the class prevalence they imply over the image
        (:mod:`scribbleseg.core.prevalence`); the factors are kept in :attr:`factors`.
    refinement : MeanField, optional
        Refine the soft labels the network is taught (:meth:`read`) with this mean-field CRF
        (``LossConfig.teacher_refinement``): it moves the forest's boundaries onto the image's
        edges. The refined map is then tempered to be nowhere more confident than the forest
        (:func:`temper`), so the teacher's weight in the loss stays the forest's own.
        :attr:`probabilities`, which the forest blend mixes into previews, stay the forest's.
    self_training : int
        Rounds of self-training (``LossConfig.teacher_self_training``). Each round samples
        pseudo-labels where the (refined) map of the previous round is confident, fits a new
        forest on them and the user's labels, and predicts and refines again: the forest learns
        where the refinement put the boundaries, and the next refinement starts from there, as
        GrabCut alternates its colour model and its graph cut. The soft labels are the mean of the
        refined maps of the last half of the rounds (a round's map moves by about ±0.01 Dice);
        :attr:`probabilities` and :attr:`forest` are the last round's. 0: none.
    pseudo_labels : int
        Pseudo-labels per class and round: at most this many voxels, an even spread over the
        confident voxels of the class (chosen by a hash of their position, so the same for any
        block shape). A few hundred are better than thousands on the nuclei sample (300: mean
        soft-label Dice 0.861 from five clicks per class, 1000: 0.855; 4000 below 500 on one annotation; the
        user's labels keep their weight), and less noisy than 100.
    pseudo_confidence : float
        A voxel is a pseudo-label of its top class where that class's probability is above this.
    pseudo_boundary : float
        Draw the pseudo-labels mostly near the map's class boundaries: a confident voxel at
        distance ``d`` (in units of the finest voxel spacing, within its block) from the nearest
        voxel of another top class is drawn with relative intensity ``exp(-d / pseudo_boundary)``
        (a weighted draw without replacement, ordered by the hash of its position as before).
        The forest then learns where the boundary lies rather than what the interiors look
        like, which clicks already tell it. On the nuclei sample from five or twenty clicks per
        class (4, the trainer's default ``LossConfig.teacher_pseudo_boundary``) it lifted the
        self-trained soft labels' mean Dice by about 0.03 and 0.05 (``docs/benchmarks.md``).
        0 (the default here) = an even spread over the confident voxels.
    pseudo_draws : int
        Independent draws of pseudo-labels per round (at most one per tree), each fitting
        ``trees / pseudo_draws`` of the trees (with the user's labels); the round's forest is all
        of them, so its map is the mean of theirs at the cost of one forest. On the nuclei sample
        two forest seeds' soft labels differed by 0.017 Dice on average with one draw and 0.006
        with four, and four were 0.003 better in the mean from five or twenty clicks per class
        (``docs/benchmarks.md``).
    max_training_voxels : int
        The forest is fitted on at most this many labelled voxels (a uniform draw when there are
        more), as the instant preview's forest. 20 000 (the default; 80 000 before 2026-12-04): on
        the three dense MRI scribble sets (62 000 labelled voxels) the forest's Dice was 0.9701,
        0.9671, 0.9698 against 0.9707, 0.9671, 0.9694 with 80 000, and it was fitted in about
        half the time (``docs/benchmarks.md``).
    cache_bytes : int
        Filter features of the whole image are kept between the rounds when they take at most
        this many bytes (else each round computes them again, block by block).
    """

    def __init__(
        self,
        source: ImageSource,
        target: SparseTarget,
        *,
        spec: FeatureSpec | None = None,
        trees: int = 100,
        seed: int = 0,
        threads: int | None = None,
        block_shape: Sequence[int] | None = None,
        max_voxels: int = 2**25,
        should_stop: Callable[[], bool] | None = None,
        prevalence_correction: bool = False,
        refinement: MeanField | None = None,
        self_training: int = 0,
        pseudo_labels: int = 300,
        pseudo_confidence: float = 0.9,
        pseudo_draws: int = 4,
        pseudo_boundary: float = 0.0,
        max_training_voxels: int = _MAX_TRAINING_VOXELS,
        cache_bytes: int = 2**29,
    ) -> None:
        if (
            int(self_training) < 0
            or int(pseudo_labels) < 1
            or not 0.0 <= float(pseudo_confidence) < 1.0
            or int(pseudo_draws) < 1
            or int(max_training_voxels) < 2
            or not (math.isfinite(float(pseudo_boundary)) and float(pseudo_boundary) >= 0)
        ):
            raise ValueError(
                "self_training must be >= 0, pseudo_labels >= 1, pseudo_confidence in [0, 1), "
                "pseudo_draws >= 1, pseudo_boundary a finite number >= 0 and max_training_voxels >= 2, "
                f"got {self_training}, {pseudo_labels}, {pseudo_confidence}, {pseudo_draws}, "
                f"{pseudo_boundary}, {max_training_voxels}"
            )
        self.source = source
        self.target = target
        shape = tuple(source.spatial_shape)
        self.spec = spec or PREVIEW_FEATURES[len(shape)]
        self.trees, self.seed, self.threads = trees, seed, threads
        self.block_shape = tuple(block_shape or default_block_shape(len(shape)))
        self.max_voxels = max_voxels
        self._should_stop = should_stop or (lambda: False)
        self.prevalence_correction = prevalence_correction
        self.refinement = refinement
        self.self_training, self.pseudo_labels = int(self_training), int(pseudo_labels)
        self.pseudo_confidence, self.cache_bytes = float(pseudo_confidence), int(cache_bytes)
        self.pseudo_draws = int(pseudo_draws)
        self.pseudo_boundary = float(pseudo_boundary)
        self.max_training_voxels = int(max_training_voxels)
        self.probabilities: np.ndarray | None = None  # (K, *shape) float16 once fitted
        #: The soft labels taught: :attr:`probabilities` refined and tempered (``refinement``), or
        #: the same array.
        self.soft_labels: np.ndarray | None = None
        self.factors: tuple[float, ...] | None = None  # prevalence factors applied to them
        self.forest: Any = None  # the fitted RandomForestClassifier
        self.abandoned = False  # True when should_stop ended a fit
        self.error: BaseException | None = None  # set by fit_in_background

    def fit_in_background(self) -> None:
        """Run :meth:`fit` keeping any exception in :attr:`error` (a thread's target)."""
        try:
            self.fit()
        except BaseException as exc:  # reported by the trainer, which goes on without a teacher
            self.error = exc

    @property
    def available(self) -> bool:
        """Whether the image is small enough for a teacher."""
        return int(np.prod(self.source.spatial_shape)) <= self.max_voxels

    def _blocks(self) -> list[tuple[slice, ...]]:
        return _blocks(tuple(slice(0, n) for n in self.source.spatial_shape), self.block_shape)

    def _features(self, block: tuple[slice, ...]) -> np.ndarray:
        return _block_features(self.source, self.spec, block)

    def fit(self) -> bool:
        """Fit the forest on every labelled voxel and predict the image; False if abandoned or impossible."""
        if not self.available:
            return False
        rng = np.random.default_rng(self.seed)
        cache = _FeatureCache(self, whole=self._cache_whole())
        tables, classes, positions = [], [], []
        for block in self._blocks():
            labels = self.target.read(block)
            labelled = np.flatnonzero(labels != IGNORE_INDEX)
            if len(labelled) == 0:
                continue
            if self._should_stop():
                self.abandoned = True
                return False
            features = cache.get(block)
            tables.append(features.reshape(len(features), -1)[:, labelled].T)
            classes.append(labels.ravel()[labelled])
            grid = np.unravel_index(labelled, labels.shape)
            where = tuple(g + s.start for g, s in zip(grid, block, strict=True))
            positions.append(np.ravel_multi_index(where, self.source.spatial_shape))
        if not tables:
            return False
        # In image order, so the forest does not depend on the block shape.
        order = np.argsort(np.concatenate(positions), kind="stable")
        table, values = np.concatenate(tables)[order], np.concatenate(classes)[order]
        if len(np.unique(values)) < 2:
            return False
        if len(values) > self.max_training_voxels:
            keep = rng.choice(len(values), self.max_training_voxels, replace=False)
            table, values = table[keep], values[keep]
        forest = self._fit_forest(table, values)
        probabilities = self._predict(forest, cache)
        if probabilities is None:
            return False
        soft_labels = probabilities
        if self.refinement is not None or self.self_training:
            refined = self._refine(probabilities)
            total, counted = None, 0
            for round_ in range(1, self.self_training + 1):
                if refined is None:
                    break
                fitted = self._fit_on_draws(table, values, refined, round_, cache)
                if fitted is None:  # stopped, or nothing confident: keep the last map
                    break
                forest = fitted
                probabilities = self._predict(forest, cache)
                refined = None if probabilities is None else self._refine(probabilities)
                if refined is not None and round_ > self.self_training // 2:
                    total, counted = _accumulate(total, refined), counted + 1
            if refined is None or probabilities is None or self._should_stop():
                self.abandoned = True
                return False
            if total is not None:
                refined = _mean_of(total, counted)
            # Refined maps are tempered to the forest's confidence; without a refinement the
            # soft labels are the forests' own maps (their mean over the last rounds).
            soft_labels = refined if self.refinement is None else _tempered(refined, probabilities)
        self.probabilities, self.soft_labels = probabilities, soft_labels
        self.forest = forest
        return True

    def _cache_whole(self) -> bool:
        """Whether the features of the whole image are kept (self-training computes them each round)."""
        if not self.self_training:
            return False
        dims = self.source.spatial_dims
        channels = self.spec.num_features(dims) * self.source.n_channels
        return channels * int(np.prod(self.source.spatial_shape)) * 4 <= self.cache_bytes

    def _fit_forest(
        self, table: np.ndarray, values: np.ndarray, *, trees: int | None = None, seed: int | None = None
    ) -> Any:
        from sklearn.ensemble import RandomForestClassifier

        forest = RandomForestClassifier(
            n_estimators=trees or self.trees,
            n_jobs=self.threads,
            random_state=self.seed if seed is None else seed,
        )
        forest.fit(table, values)
        return forest

    def _fit_on_draws(
        self, table: np.ndarray, values: np.ndarray, refined: np.ndarray, round_: int, cache: _FeatureCache
    ) -> Any:
        """Fit a self-training round's forest: ``pseudo_draws`` draws of pseudo-labels, a sub-forest each.

        The sub-forests (``trees // pseudo_draws`` trees each, the user's labels in every one) are
        merged into one forest of their trees, whose probabilities are the mean of theirs. None if
        stopped or nothing is confident.
        """
        draws = min(self.pseudo_draws, self.trees)
        distance = self._boundary_distance(refined)  # one map for all the round's draws
        merged = None
        for draw in range(draws):
            salt = round_ * draws + draw if draws > 1 else round_
            pseudo = self._pseudo_labels(refined, salt, cache, distance)
            if pseudo is None:
                return None
            rows, pseudo_values = pseudo
            forest = self._fit_forest(
                np.concatenate([table, rows]),
                np.concatenate([values, pseudo_values.astype(values.dtype)]),
                trees=self.trees // draws + (draw < self.trees % draws),
                seed=self.seed if draws == 1 else (self.seed * 1_000_003 + draw) % 2**32,
            )
            if merged is None:
                merged = forest
            elif not np.array_equal(merged.classes_, forest.classes_):
                return None  # a class absent from a draw: cannot merge (the user's labels have all)
            else:
                merged.estimators_ += forest.estimators_
                merged.n_estimators = len(merged.estimators_)
        return merged

    def _predict(self, forest: Any, cache: _FeatureCache) -> np.ndarray | None:
        """Return the forest's map of the image (prevalence-corrected when asked); None if stopped."""
        num_classes = self.target.num_classes
        probabilities = np.zeros((num_classes, *self.source.spatial_shape), dtype=np.float16)
        for block in self._blocks():
            if self._should_stop():
                self.abandoned = True
                return None
            probabilities[(slice(None), *block)] = _predict_block(forest, cache.get(block), num_classes)
        if self.prevalence_correction:
            factors = estimate_factors(probabilities)
            for block in self._blocks():
                index = (slice(None), *block)
                probabilities[index] = reweight(probabilities[index].astype(np.float32), factors)
            self.factors = tuple(float(f) for f in factors)
        return probabilities

    def _refine(self, probabilities: np.ndarray) -> np.ndarray | None:
        """``probabilities`` refined block by block (each with the refinement's halo), not tempered.

        Without a refinement: ``probabilities`` themselves. None if stopped.
        """
        if self.refinement is None:
            return probabilities
        spacing, shape = self.source.spacing, self.source.spatial_shape
        halo = self.refinement.halo(spacing)
        refined = np.empty_like(probabilities)
        for block in self._blocks():
            if self._should_stop():
                return None
            grown, crop = _context(block, halo, shape)
            forest = probabilities[(slice(None), *grown)].astype(np.float32)
            refined[(slice(None), *block)] = self.refinement.apply(
                forest, self.source.read(grown), spacing, region=crop
            )
        return refined

    def _boundary_distance(self, refined: np.ndarray) -> np.ndarray | None:
        """Distance of each voxel to the nearest voxel of another top class in ``refined``.

        In units of the finest voxel spacing, measured within each block; None without
        ``pseudo_boundary`` (the even draw needs none).
        """
        if self.pseudo_boundary <= 0:
            return None
        unit = min(self.source.spacing)
        distance = np.empty(self.source.spatial_shape, dtype=np.float32)
        for block in self._blocks():
            top = refined[(slice(None), *block)].argmax(axis=0)
            inside = distance[block]
            for k in np.unique(top):
                mask = top == k
                inside[mask] = ndimage.distance_transform_edt(mask, sampling=self.source.spacing)[mask] / unit
        return distance

    def _pseudo_labels(
        self, refined: np.ndarray, round_: int, cache: _FeatureCache, distance: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Features and class indices of this round's pseudo-labels; None if stopped or there are none.

        Per class, the ``pseudo_labels`` unlabelled voxels of lowest priority among those where
        the class is on top with a probability above ``pseudo_confidence``: the hash of their
        position, or with ``pseudo_boundary`` a weighted draw favouring voxels near the class's
        boundary in the map (``-log(u) * exp(d / pseudo_boundary)``, ``u`` uniform from the hash;
        ``d`` from ``distance``, :meth:`_boundary_distance` of ``refined``, None for the even draw).
        """
        shape, limit = self.source.spatial_shape, self.pseudo_labels
        best: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # class -> (priorities, positions)
        for block in self._blocks():
            if self._should_stop():
                return None
            block_map = refined[(slice(None), *block)].astype(np.float32)
            top, confidence = block_map.argmax(axis=0), block_map.max(axis=0)
            candidate = (confidence > self.pseudo_confidence) & (self.target.read(block) == IGNORE_INDEX)
            for k in np.unique(top[candidate]):
                local = np.flatnonzero(candidate & (top == k))
                grid = np.unravel_index(local, top.shape)
                where = np.ravel_multi_index(
                    tuple(g + s.start for g, s in zip(grid, block, strict=True)), shape
                )
                priority = _hash_priority(where, self.seed * 1_000_003 + round_)
                if distance is not None:
                    uniform = ((priority >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53
                    near = distance[block].ravel()[local].astype(np.float64)
                    priority = -np.log(uniform) * np.exp(near / self.pseudo_boundary)
                if int(k) in best:
                    priority = np.concatenate([best[int(k)][0], priority])
                    where = np.concatenate([best[int(k)][1], where])
                if len(where) > limit:
                    keep = np.argpartition(priority, limit - 1)[:limit]
                    priority, where = priority[keep], where[keep]
                best[int(k)] = (priority, where)
        if not best:
            return None
        positions = np.concatenate([best[k][1] for k in sorted(best)])
        classes = np.concatenate([np.full(len(best[k][1]), k, dtype=np.int64) for k in sorted(best)])
        order = np.argsort(positions, kind="stable")  # in image order, as the user's labels
        positions, classes = positions[order], classes[order]
        tables, found = [], []
        grid = np.unravel_index(positions, shape)
        for block in self._blocks():
            inside = np.ones(len(positions), dtype=bool)
            for g, s in zip(grid, block, strict=True):
                inside &= (g >= s.start) & (g < s.stop)
            if not inside.any():
                continue
            if self._should_stop():
                return None
            features = cache.get(block)
            local = tuple(g[inside] - s.start for g, s in zip(grid, block, strict=True))
            tables.append(features[(slice(None), *local)].T)
            found.append(np.flatnonzero(inside))
        rows = np.concatenate(tables)[np.argsort(np.concatenate(found), kind="stable")]
        return rows, classes

    def read(self, region: Sequence[slice]) -> np.ndarray:
        """Return the soft labels taught, ``(K, *region)`` float32: 0 outside the image or before a fit."""
        return self._read(self.soft_labels, region)

    def read_forest(self, region: Sequence[slice]) -> np.ndarray:
        """Return the forest's own probabilities, which the blend mixes in (as :meth:`read`)."""
        return self._read(self.probabilities, region)

    def _read(self, array: np.ndarray | None, region: Sequence[slice]) -> np.ndarray:
        size = tuple(s.stop - s.start for s in region)
        out = np.zeros((self.target.num_classes, *size), dtype=np.float32)
        if array is None:
            return out
        shape = self.source.spatial_shape
        inside = tuple(slice(max(0, s.start), min(n, s.stop)) for s, n in zip(region, shape, strict=True))
        if any(s.stop <= s.start for s in inside):
            return out
        where = tuple(slice(i.start - s.start, i.stop - s.start) for i, s in zip(inside, region, strict=True))
        out[(slice(None), *where)] = array[(slice(None), *inside)]
        return out


@dataclass(frozen=True, eq=False)
class ForestBlend:
    """A forest on filter features whose probabilities are mixed into the network's.

    On a CPU the network of a 3D image gets a few hundred steps in minutes, while the forest
    teacher (:class:`ForestTeacher`) is right after seconds; mixing the two,
    ``(1 - weight) * network + weight * forest``, is close to or above the better of the two
    there, far above the network alone (``docs/benchmarks.md``). The trainer lowers ``weight`` as
    the network trains, to 0 when the teacher has faded out (``TrainConfig.forest_blend``), so a
    well-trained network stands alone.

    Parameters
    ----------
    forest : sklearn.ensemble.RandomForestClassifier
        Fitted on :func:`~scribbleseg.core.features.filter_bank` features of ``spec``; its classes
        are class indices ``0 .. num_classes - 1``.
    spec : FeatureSpec
    weight : float
        In [0, 1].
    num_classes : int
    factors : tuple of float, optional
        Prevalence factors applied to the forest's probabilities
        (:func:`~scribbleseg.core.prevalence.reweight`), as :class:`ForestTeacher` estimated them.
    """

    forest: Any
    spec: FeatureSpec
    weight: float
    num_classes: int
    factors: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.weight) <= 1.0:
            raise ValueError(f"forest blend weight must be in [0, 1], got {self.weight}")
        classes = np.asarray(getattr(self.forest, "classes_", []))
        if classes.size == 0 or classes.min() < 0 or classes.max() >= self.num_classes:
            raise ValueError(
                f"the forest's classes {classes.tolist()} are not class indices below {self.num_classes}"
            )
        object.__setattr__(self, "weight", float(self.weight))
        if self.factors is not None:
            object.__setattr__(self, "factors", check_factors(self.factors, self.num_classes))

    def probabilities(
        self, source: ImageSource, region: Sequence[slice], *, block_shape: Sequence[int] | None = None
    ) -> np.ndarray:
        """Return the forest's probabilities ``(K, *region)`` float32 of a region inside the image.

        Features are computed block by block with their halo, so memory is bounded by a block
        and the numbers do not depend on the region's bounds.
        """
        region = tuple(region)
        block_shape = tuple(block_shape or default_block_shape(len(region)))
        out = np.empty((self.num_classes, *(s.stop - s.start for s in region)), dtype=np.float32)
        for block in _blocks(region, block_shape):
            where = tuple(
                slice(b.start - r.start, b.stop - r.start) for b, r in zip(block, region, strict=True)
            )
            features = _block_features(source, self.spec, block)
            predicted = _predict_block(self.forest, features, self.num_classes)
            out[(slice(None), *where)] = reweight(predicted, self.factors)
        return out

    def mix(self, network: np.ndarray, forest: np.ndarray) -> np.ndarray:
        """``(1 - weight) * network + weight * forest`` (``network`` is returned when the weight is 0)."""
        if self.weight == 0.0:
            return network
        return (1.0 - self.weight) * network + self.weight * forest

    def fingerprint(self) -> str:
        """SHA-256 of the weight, the features and every tree (identifies the blend for resuming)."""
        digest = hashlib.sha256(f"{self.weight!r}:{self.spec!r}:{self.num_classes}:{self.factors!r}".encode())
        for tree in self.forest.estimators_:
            state = tree.tree_
            arrays = (state.feature, state.threshold, state.children_left, state.children_right, state.value)
            for array in arrays:
                digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()
