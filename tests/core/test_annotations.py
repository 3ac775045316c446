from __future__ import annotations

import threading

import dask.array as da
import numpy as np
import pytest
import zarr

from scribbleseg.core.annotations import (
    IGNORE_INDEX,
    ClassMap,
    LabelledVoxelIndex,
    SparseTarget,
    check_labels,
    labels_to_target,
    points_to_labels,
)
from scribbleseg.errors import AnnotationError, InputError


def scribbles(shape: tuple[int, ...], values: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A few short straight strokes per class value, 0 elsewhere."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, dtype=np.uint8)
    for value in values:
        for _ in range(3):
            start = [int(rng.integers(0, s)) for s in shape]
            axis = int(rng.integers(0, len(shape)))
            stop = min(shape[axis], start[axis] + int(rng.integers(2, 8)))
            index = list(start)
            index[axis] = slice(start[axis], stop)
            labels[tuple(index)] = value
    return labels


def as_set(coords: np.ndarray, classes: np.ndarray) -> set[tuple[int, ...]]:
    return {(*map(int, c), int(k)) for c, k in zip(coords, classes, strict=True)}


# -- ClassMap -----------------------------------------------------------------


def test_class_map_keeps_user_values_and_round_trips() -> None:
    class_map = ClassMap.from_values([5, 1, 2, 5])
    assert class_map.values == (1, 2, 5)
    assert class_map.names == ("class 1", "class 2", "class 5")
    labels = np.array([[0, 1, 2], [5, 5, 0]], dtype=np.uint16)
    index = class_map.to_index(labels)
    assert index.dtype == np.int64
    np.testing.assert_array_equal(index, [[IGNORE_INDEX, 0, 1], [2, 2, IGNORE_INDEX]])
    back = class_map.to_values(index)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, labels)
    assert labels.dtype == np.uint16  # input untouched


def test_class_map_names_follow_their_values_and_background() -> None:
    class_map = ClassMap.from_values([5, 1], names=["cell", "background"], background=1)
    assert class_map.values == (1, 5)
    assert class_map.names == ("background", "cell")
    assert class_map.background_index == 0
    np.testing.assert_array_equal(
        class_map.to_values(np.array([0, 1, -1]), background_as_zero=True), [0, 5, 0]
    )
    assert ClassMap.from_dict(class_map.to_dict()) == class_map


def test_class_map_to_values_dtype_grows_with_values() -> None:
    assert ClassMap.from_values([1, 300]).to_values(np.array([1])).dtype == np.uint16


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"values": (0, 1)}, "must be >= 1"),
        ({"values": (2, 1)}, "sorted and unique"),
        ({"values": ()}, "at least one"),
        ({"values": (1, 2), "names": ("a",)}, "1 class names for 2"),
        ({"values": (1, 2), "background": 3}, "background class 3"),
        ({"values": (1.5, 2)}, "must be integers"),
    ],
)
def test_class_map_rejects_bad_fields(kwargs: dict, message: str) -> None:
    with pytest.raises(AnnotationError, match=message):
        ClassMap(**kwargs)


def test_class_map_to_index_rejects_unknown_values() -> None:
    with pytest.raises(AnnotationError, match=r"value\(s\) 3, 7 .* classes \(1, 2\)"):
        ClassMap.from_values([1, 2]).to_index(np.array([0, 1, 3, 7]))


# -- check_labels -------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "expected_kind"),
    [(np.uint8, "u"), (np.int32, "i"), (np.uint64, "u"), (bool, "u"), (np.float32, "u"), (np.float64, "u")],
)
def test_check_labels_accepts_integer_values(dtype: type, expected_kind: str) -> None:
    labels = (np.arange(35).reshape(5, 7) % 2).astype(dtype)
    checked = check_labels(labels, spatial_shape=(5, 7))
    assert checked.dtype.kind == expected_kind
    np.testing.assert_array_equal(checked, labels.astype(np.int64))


@pytest.mark.parametrize(
    ("values", "error", "message"),
    [
        (np.array([[0, 0.5], [1, 2]]), AnnotationError, r"must be integers .* got float values like 0\.5"),
        (np.array([[0, np.nan], [1, 2]]), AnnotationError, "got float values like nan"),
        (np.array([[0, -1], [1, 2]], dtype=np.int16), AnnotationError, "negative values like -1"),
        (np.array([[0, -3.0], [1, 2]]), AnnotationError, "negative values like -3"),
        (np.array([[0, 1j], [1, 2]]), AnnotationError, "got dtype complex128"),
        (np.array([["a", "b"], ["c", "d"]]), AnnotationError, "got dtype <U1"),
    ],
)
def test_check_labels_rejects_bad_values(values: np.ndarray, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        check_labels(values, spatial_shape=(2, 2))


def test_check_labels_message_explains_the_convention() -> None:
    with pytest.raises(AnnotationError) as info:
        check_labels(np.full((3, 3), 0.5), spatial_shape=(3, 3))
    assert (
        str(info.value) == "labels must be integers (0 = unlabelled, k = class k); got float values like 0.5"
    )


def test_check_labels_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(InputError, match=r"\(4, 5\).*\(4, 6\)"):
        check_labels(np.zeros((4, 5), np.uint8), spatial_shape=(4, 6))


def test_check_labels_accepts_dask_and_zarr(tmp_path) -> None:
    labels = scribbles((7, 11, 13), (1, 2))
    on_disk = zarr.create_array(tmp_path / "labels.zarr", shape=labels.shape, chunks=(3, 4, 5), dtype="u1")
    on_disk[...] = labels
    for source in (da.from_array(labels, chunks=(2, 5, 5)), on_disk):
        checked = check_labels(source, spatial_shape=labels.shape)
        assert isinstance(checked, np.ndarray)
        np.testing.assert_array_equal(checked, labels)


# -- points_to_labels -----------------------------------------------------------


def extent(mask: np.ndarray) -> tuple[int, ...]:
    nonzero = np.nonzero(mask)
    return tuple(int(n.max() - n.min() + 1) for n in nonzero)


@pytest.mark.parametrize(
    ("shape", "point", "spacing", "radius", "expected_extent"),
    [
        ((9, 21, 23), (4, 10, 11), (4.0, 1.0, 1.0), 4.0, (3, 9, 9)),  # 1 voxel along z each side
        ((9, 21, 23), (4, 10, 11), (1.0, 1.0, 1.0), 2.0, (5, 5, 5)),
        ((15, 17), (7, 8), (1.0, 3.0), 3.0, (7, 3)),
        ((15, 17), (7, 8), None, 2.0, (5, 5)),
        ((15, 17), (7, 8), (1.0, 10.0), 2.0, (5, 1)),  # sub-voxel radius: the centre voxel stays
    ],
)
def test_points_become_ellipsoids_in_voxels(shape, point, spacing, radius, expected_extent) -> None:
    labels = points_to_labels(
        np.array([point], float), np.array([3]), shape=shape, spacing=spacing, radius=radius
    )
    assert labels.shape == shape and labels.dtype.kind == "u"
    assert extent(labels == 3) == expected_extent
    assert labels[point] == 3
    assert set(np.unique(labels)) == {0, 3}


def test_point_ball_is_the_discrete_ellipsoid() -> None:
    labels = points_to_labels(
        np.array([[4.0, 10.0, 11.0]]), [1], shape=(9, 21, 23), spacing=(2, 1, 1), radius=4
    )
    z, y, x = np.ogrid[:9, :21, :23]
    expected = ((z - 4) / 2) ** 2 + ((y - 10) / 4) ** 2 + ((x - 11) / 4) ** 2 <= 1
    np.testing.assert_array_equal(labels == 1, expected)


def test_points_at_the_border_are_clipped() -> None:
    labels = points_to_labels(np.array([[0.0, 16.0]]), [2], shape=(15, 17), radius=2)
    assert labels[0, 16] == 2 and labels[2, 16] == 2 and extent(labels == 2) == (3, 3)
    labels = points_to_labels(np.array([[-0.4, 16.4]]), [2], shape=(15, 17), radius=0.5)
    assert np.argwhere(labels).tolist() == [[0, 16]]  # the nearest voxel, even when no centre is in the ball


def test_no_points_give_empty_labels() -> None:
    labels = points_to_labels(np.zeros((0, 2)), np.zeros(0, int), shape=(4, 5))
    assert labels.shape == (4, 5) and not labels.any()


@pytest.mark.parametrize(
    ("points", "classes", "message"),
    [
        (
            [[1.0, 1.0], [20.0, 3.0], [2.0, -0.6]],
            [1, 1, 2],
            r"2 of 3 points lie outside .* \(10, 12\): #1 at \(20\.0, 3\.0\), #2",
        ),
        ([[1.0, 1.0, 1.0]], [1], r"\(N, 2\) array .* shape \(1, 3\)"),
        ([1.0, 1.0], [1], r"\(N, 2\) array"),
        ([[1.0, 1.0]], [0], "point classes must be >= 1"),
        ([[1.0, 1.0]], [1, 2], "2 point classes for 1 points"),
        ([[1.0, np.nan]], [1], "non-finite"),
        ([[1.0, 1.0]], [1.5], "point classes must be integers"),
    ],
)
def test_points_to_labels_rejects_bad_points(points, classes, message) -> None:
    with pytest.raises(AnnotationError, match=message):
        points_to_labels(np.array(points), np.array(classes), shape=(10, 12), radius=1)


# -- labels_to_target -----------------------------------------------------------


def test_labels_to_target_keeps_values_and_builds_index() -> None:
    labels = scribbles((13, 17), (1, 2, 5))
    target = labels_to_target(labels)
    assert target.class_map.values == (1, 2, 5)
    np.testing.assert_array_equal(target.target, target.class_map.to_index(labels))
    np.testing.assert_array_equal(target.index.counts, [np.sum(labels == v) for v in (1, 2, 5)])
    assert len(target.index) == np.count_nonzero(labels)
    assert target.target.dtype == np.int64


def test_points_never_overwrite_scribbles() -> None:
    labels = np.zeros((11, 13), np.uint8)
    labels[5, :] = 1
    target = labels_to_target(
        labels, points=np.array([[5.0, 6.0], [1.0, 1.0]]), point_classes=np.array([2, 1])
    )
    values = target.class_map.to_values(target.target)
    np.testing.assert_array_equal(values[5], 1)  # the stroke through the ball stays class 1
    assert values[4, 6] == 2 and values[6, 6] == 2 and values[3, 6] == 2
    assert values[1, 1] == 1
    assert target.class_map.values == (1, 2)


def test_labels_to_target_with_anisotropic_points() -> None:
    labels = np.zeros((9, 21, 21), np.uint8)
    labels[0, 0, :5] = 1
    target = labels_to_target(
        labels, points=np.array([[4, 10, 10]]), point_classes=[2], spacing=(4, 1, 1), point_radius=4
    )
    assert extent(target.target == 1) == (3, 9, 9)


def test_no_labelled_voxels_message() -> None:
    with pytest.raises(AnnotationError) as info:
        labels_to_target(np.zeros((5, 6), np.uint8))
    assert str(info.value) == "no labelled voxels: paint at least one stroke per class (0 = unlabelled)"


def test_single_class_message() -> None:
    labels = np.zeros((5, 6), np.uint8)
    labels[2, 1:4] = 2
    with pytest.raises(
        AnnotationError,
        match=r"^only class 2 is labelled: paint at least one stroke of a second class \(e\.g\. background\)",
    ):
        labels_to_target(labels)
    assert labels_to_target(labels, min_classes=1).class_map.values == (2,)


def test_min_classes_message_lists_the_labelled_classes() -> None:
    labels = scribbles((9, 9), (1, 4))
    with pytest.raises(
        AnnotationError, match=r"^only classes 1 and 4 are labelled: paint strokes of at least 3 classes"
    ):
        labels_to_target(labels, min_classes=3)


def test_class_values_must_include_all_present() -> None:
    labels = scribbles((9, 9), (1, 2, 3))
    with pytest.raises(AnnotationError, match=r"value\(s\) 3 that are not among the classes \(1, 2\)"):
        labels_to_target(labels, class_values=[1, 2])


def test_class_values_may_hold_unpainted_classes() -> None:
    labels = scribbles((9, 9), (1, 3))
    target = labels_to_target(labels, class_values=[3, 1, 7], class_names=["c", "a", "g"], background=1)
    assert target.class_map.values == (1, 3, 7)
    assert target.class_map.names == ("a", "c", "g")
    assert target.index.counts[2] == 0


def test_labels_to_target_checks_the_image_shape() -> None:
    with pytest.raises(InputError, match=r"\(9, 9\).*\(9, 10\)"):
        labels_to_target(scribbles((9, 9), (1, 2)), spatial_shape=(9, 10))


def test_labels_to_target_does_not_modify_inputs() -> None:
    labels = scribbles((9, 10), (1, 2))
    points = np.array([[3.0, 3.0]])
    before = labels.copy(), points.copy()
    labels_to_target(labels, points=points, point_classes=[2])
    np.testing.assert_array_equal(labels, before[0])
    np.testing.assert_array_equal(points, before[1])


def test_points_without_classes() -> None:
    with pytest.raises(AnnotationError, match="point_classes"):
        labels_to_target(scribbles((9, 9), (1, 2)), points=np.array([[1.0, 1.0]]))


# -- LabelledVoxelIndex -------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "chunks"),
    [((13, 29, 31), (4, 8, 16)), ((37, 41), (10, 7)), ((5, 7, 9), (5, 7, 9))],
)
def test_index_from_numpy_zarr_and_dask_agree(tmp_path, shape, chunks) -> None:
    labels = scribbles(shape, (1, 2, 3), seed=3)
    index_labels = ClassMap.from_values([1, 2, 3]).to_index(labels)
    on_disk = zarr.create_array(tmp_path / "t.zarr", shape=shape, chunks=chunks, dtype="i8")
    on_disk[...] = index_labels
    reference = LabelledVoxelIndex.from_labels(index_labels, num_classes=3)
    from_zarr = LabelledVoxelIndex.from_labels(on_disk, num_classes=3)
    from_dask = LabelledVoxelIndex.from_labels(da.from_array(index_labels, chunks=chunks), num_classes=3)
    assert from_zarr.bucket_shape == chunks
    expected = {(*map(int, c), int(index_labels[tuple(c)])) for c in np.argwhere(index_labels >= 0)}
    for index in (reference, from_zarr, from_dask):
        assert as_set(*index.snapshot()) == expected
        np.testing.assert_array_equal(index.counts, np.bincount(index_labels[index_labels >= 0], minlength=3))
        assert index.coords.dtype == np.int64 and index.classes.dtype == np.int64
        assert len(index) == len(expected)


def test_index_from_labels_reads_chunk_by_chunk() -> None:
    index_labels = np.full((20, 30), IGNORE_INDEX, np.int64)
    index_labels[3, 4] = 1

    class RecordingArray:
        def __init__(self, data: np.ndarray) -> None:
            self.data, self.shape, self.dtype, self.chunks = data, data.shape, data.dtype, (8, 8)
            self.keys: list = []

        def __getitem__(self, key):
            self.keys.append(key)
            return self.data[key]

    recording = RecordingArray(index_labels)
    index = LabelledVoxelIndex.from_labels(recording, num_classes=2)
    assert len(recording.keys) == 3 * 4
    assert all(np.prod([s.stop - s.start for s in key]) <= 64 for key in recording.keys)
    assert as_set(*index.snapshot()) == {(3, 4, 1)}


def test_index_rejects_out_of_range_classes() -> None:
    with pytest.raises(AnnotationError, match=r"\[-1, 2\)"):
        LabelledVoxelIndex.from_labels(np.array([[0, 2]]), num_classes=2)


@pytest.mark.parametrize("shape", [(23, 37), (9, 14, 19)])
def test_update_adds_and_removes_exactly_the_changed_voxels(shape) -> None:
    rng = np.random.default_rng(7)
    current = ClassMap.from_values([1, 2, 3]).to_index(scribbles(shape, (1, 2, 3), seed=1))
    index = LabelledVoxelIndex.from_labels(current, num_classes=3, chunk_shape=(4,) * len(shape))
    for _ in range(25):
        start = [int(rng.integers(0, s)) for s in shape]
        stop = [int(rng.integers(a + 1, s + 1)) for a, s in zip(start, shape, strict=True)]
        region = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
        block = rng.integers(-1, 3, size=[b - a for a, b in zip(start, stop, strict=True)])
        block[rng.random(block.shape) < 0.6] = IGNORE_INDEX  # erase as well as paint
        before = block.copy()
        index.update(region, block)
        np.testing.assert_array_equal(block, before)
        current[region] = block
        expected = {(*map(int, c), int(current[tuple(c)])) for c in np.argwhere(current >= 0)}
        coords, classes = index.snapshot()
        assert len(coords) == len(expected)  # no duplicates
        assert as_set(coords, classes) == expected
        np.testing.assert_array_equal(index.counts, np.bincount(current[current >= 0], minlength=3))
    rebuilt = LabelledVoxelIndex.from_labels(current, num_classes=3, chunk_shape=(4,) * len(shape))
    np.testing.assert_array_equal(index.coords, rebuilt.coords)  # order depends on content only


def test_update_validates_region_and_block() -> None:
    index = LabelledVoxelIndex((10, 10), num_classes=2)
    with pytest.raises(ValueError, match="shape"):
        index.update((slice(0, 2), slice(0, 3)), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="outside"):
        index.update((slice(8, 12), slice(0, 2)), np.zeros((4, 2), int))
    with pytest.raises(AnnotationError):
        index.update((slice(0, 1), slice(0, 1)), np.array([[5]]))


def test_snapshot_is_read_only_and_stable() -> None:
    index = LabelledVoxelIndex.from_labels(np.array([[0, -1], [1, -1]]), num_classes=2)
    coords, classes = index.snapshot()
    with pytest.raises(ValueError):
        coords[0, 0] = 5
    index.update((slice(0, 2), slice(0, 2)), np.full((2, 2), -1))
    assert len(coords) == 2 and classes.tolist() == [0, 1]
    assert len(index) == 0 and len(index.coords) == 0


def test_sample_is_class_balanced() -> None:
    labels = np.full((40, 50), IGNORE_INDEX, np.int64)
    labels[:30, :] = 0  # 1500 voxels of class 0
    labels[35, 10:15] = 2  # 5 voxels of class 2, class 1 absent
    index = LabelledVoxelIndex.from_labels(labels, num_classes=3)
    rng = np.random.default_rng(0)
    coords = index.sample(rng, 4000)
    assert coords.shape == (4000, 2) and coords.dtype == np.int64
    drawn = labels[tuple(coords.T)]
    assert (drawn >= 0).all()
    fractions = np.bincount(drawn, minlength=3) / len(drawn)
    np.testing.assert_allclose(fractions, [0.5, 0.0, 0.5], atol=0.05)
    assert len({tuple(c) for c in coords[drawn == 2]}) == 5  # every voxel of the rare class is drawn
    uniform = labels[tuple(index.sample(rng, 4000, class_balanced=False).T)]
    assert np.mean(uniform == 2) < 0.02


def test_sample_is_reproducible_and_needs_labels() -> None:
    labels = ClassMap.from_values([1, 2]).to_index(scribbles((15, 16), (1, 2)))
    index = LabelledVoxelIndex.from_labels(labels, num_classes=2)
    first = index.sample(np.random.default_rng(3), 50)
    np.testing.assert_array_equal(first, index.sample(np.random.default_rng(3), 50))
    assert index.sample(np.random.default_rng(3), 0).shape == (0, 2)
    with pytest.raises(AnnotationError, match="no labelled voxels"):
        LabelledVoxelIndex((4, 4), num_classes=2).sample(np.random.default_rng(0), 3)


def test_update_while_sampling_from_another_thread() -> None:
    shape = (32, 48)
    labels = np.full(shape, IGNORE_INDEX, np.int64)
    labels[0, :] = 0
    labels[-1, :] = 1  # always present: the painting thread never touches rows 0 and -1
    index = LabelledVoxelIndex.from_labels(labels, num_classes=2, chunk_shape=(8, 8))
    errors: list[BaseException] = []
    stop = threading.Event()

    def paint() -> None:
        rng = np.random.default_rng(1)
        try:
            for _ in range(300):
                y, x = int(rng.integers(1, shape[0] - 5)), int(rng.integers(0, shape[1] - 5))
                index.update((slice(y, y + 4), slice(x, x + 5)), rng.integers(-1, 2, size=(4, 5)))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            stop.set()

    def sample() -> None:
        rng = np.random.default_rng(2)
        try:
            while not stop.is_set():
                coords = index.sample(rng, 64)
                assert ((coords >= 0) & (coords < shape)).all()
                coords, classes = index.snapshot()
                assert len(coords) == len(classes)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=paint), threading.Thread(target=sample)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert int(index.counts.sum()) == len(index.coords)


# -- SparseTarget -------------------------------------------------------------


def test_sparse_target_update_writes_target_and_index() -> None:
    labels = scribbles((12, 14), (1, 5))
    target = labels_to_target(labels)
    region = (slice(2, 5), slice(3, 9))
    block = np.zeros((3, 6), np.uint8)
    block[1, :] = 5
    target.update(region, block)
    labels[region] = block
    np.testing.assert_array_equal(target.target, target.class_map.to_index(labels))
    np.testing.assert_array_equal(target.index.counts, [np.sum(labels == 1), np.sum(labels == 5)])
    with pytest.raises(AnnotationError, match=r"value\(s\) 3"):
        target.update(region, np.full((3, 6), 3))


def test_sparse_target_read_pads_with_ignore() -> None:
    target = labels_to_target(np.array([[1, 2], [0, 1]]))
    assert isinstance(target, SparseTarget)
    out = target.read((slice(-1, 3), slice(1, 4)))
    np.testing.assert_array_equal(out, [[-1, -1, -1], [1, -1, -1], [0, -1, -1], [-1, -1, -1]])
    out[1, 0] = 7
    assert target.target[0, 1] == 1  # a copy
