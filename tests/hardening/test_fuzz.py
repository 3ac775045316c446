"""Property tests: any array, file or command line either works or fails with our own error.

Three layers that take user input are fuzzed with hypothesis (profile ``hardening``, registered
in ``conftest.py``: a fixed number of derandomized examples per test, so CI sees the same
examples every time):

- the annotations: scribbles and points -> training target, and strokes added while training;
- the image source (:class:`~scribbleseg.core.volume.ImageSource`) and the array readers and
  writers of :mod:`scribbleseg.io` (arrays of every kind, corrupted and random files);
- the command line: :func:`scribbleseg.cli.main` with generated argument lists.

The property everywhere: the call succeeds and its result is sane, or it raises a
:class:`~scribbleseg.errors.ScribbleSegError` (the CLI: exit status 2 with one ``error:`` line) —
never another exception, never a traceback, never a hang (every example has a deadline).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import pathlib
import pickle
import tempfile
import warnings
from collections.abc import Iterator
from typing import Any
from unittest import mock

import dask.array as da
import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from scribbleseg.core.annotations import IGNORE_INDEX, labels_to_target, points_to_labels
from scribbleseg.core.volume import ImageSource
from scribbleseg.errors import ScribbleSegError
from scribbleseg.io.arrays import default_axes, read_array, write_array
from scribbleseg.io.points import read_points_csv

HARDENING = settings.get_profile("hardening")

pytestmark = pytest.mark.timeout(300)

# --------------------------------------------------------------------------------------------------
# strategies

#: dtypes of real images and labels (big-endian ones too: TIFF and .npy files may hold them).
NUMERIC_DTYPES = [
    np.bool_,
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.uint8,
    np.uint16,
    np.uint32,
    np.uint64,
    np.float16,
    np.float32,
    np.float64,
    ">f4",
    ">i2",
]
#: dtypes no image has: they must be refused clearly.
ODD_DTYPES = [np.complex64, np.complex128, "U3", "S3", "M8[s]", "m8[s]", [("a", "<f4"), ("b", "<i2")]]
OBJECT_ELEMENTS = st.one_of(
    st.none(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=3), st.booleans()
)


@st.composite
def any_array(draw: st.DrawFn, shapes: st.SearchStrategy[tuple[int, ...]]) -> np.ndarray:
    """An array of any dtype (numeric with extreme values, NaN, inf; or odd / object / longdouble)."""
    shape = draw(shapes)
    kind = draw(st.sampled_from(["numeric", "numeric", "numeric", "odd", "object", "longdouble"]))
    if kind == "numeric":
        return draw(hnp.arrays(np.dtype(draw(st.sampled_from(NUMERIC_DTYPES))), shape))
    if kind == "odd":
        return draw(hnp.arrays(np.dtype(draw(st.sampled_from(ODD_DTYPES))), shape))
    if kind == "object":
        return draw(hnp.arrays(np.dtype(object), shape, elements=OBJECT_ELEMENTS))
    return draw(hnp.arrays(np.float64, shape)).astype(np.longdouble)


@st.composite
def small_labels(draw: st.DrawFn, shapes: st.SearchStrategy[tuple[int, ...]]) -> np.ndarray:
    """Plausible scribbles: mostly 0, a few classes, in any integer, float or bool dtype."""
    shape = draw(shapes)
    dtype = np.dtype(
        draw(st.sampled_from([np.uint8, np.uint16, np.int32, np.int64, np.uint64, np.float32, np.float64]))
    )
    if draw(st.booleans()):
        return draw(hnp.arrays(np.bool_, shape))
    return draw(hnp.arrays(dtype, shape, elements=st.sampled_from([0, 0, 0, 1, 2, 5])))


def labels_arrays() -> st.SearchStrategy[np.ndarray]:
    spatial = hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=6)
    odd_shapes = hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=4)
    return st.one_of(small_labels(spatial), any_array(spatial), any_array(odd_shapes))


BACKINGS = st.sampled_from(["numpy", "dask", "zarr"])


def backed(array: np.ndarray, backing: str) -> Any:
    """``array`` as numpy, dask or an in-memory zarr array (zarr only for numeric dtypes)."""
    if backing == "dask" and array.ndim > 0:
        return da.from_array(array, chunks=2)
    if backing == "zarr" and array.ndim > 0 and array.dtype.kind in "biuf" and array.dtype.itemsize <= 8:
        chunks = tuple(max(1, min(2, s)) for s in array.shape)
        stored = zarr.create_array(
            store=zarr.storage.MemoryStore(),
            shape=array.shape,
            chunks=chunks,
            dtype=array.dtype,
            zarr_format=3,
        )
        stored[...] = array
        return stored
    return array


def unchanged(before: np.ndarray, after: np.ndarray) -> bool:
    """The input was not modified (byte for byte; object arrays element by element)."""
    if before.dtype.kind == "O":
        return all(a is b for a, b in zip(before.ravel().tolist(), after.ravel().tolist(), strict=True))
    return before.tobytes() == after.tobytes()


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """No warnings: NaN in an image, casts of odd dtypes … are expected here."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        yield


# --------------------------------------------------------------------------------------------------
# (a) annotations


@HARDENING
@given(
    labels=labels_arrays(),
    backing=BACKINGS,
    shape_given=st.sampled_from(["none", "same", "other"]),
    class_values=st.none() | st.lists(st.integers(-2, 2**64), max_size=4),
    min_classes=st.integers(1, 3),
)
def test_labels_to_target_works_or_raises_our_error(
    count_example, labels, backing, shape_given, class_values, min_classes
):
    with count_example():
        original = labels.copy()
        spatial_shape = {"none": None, "same": labels.shape, "other": (*labels.shape, 2)}[shape_given]
        try:
            with quiet():
                target = labels_to_target(
                    backed(labels, backing),
                    class_values=class_values,
                    min_classes=min_classes,
                    spatial_shape=spatial_shape,
                )
        except ScribbleSegError:
            return
        finally:
            assert unchanged(original, labels)
        index = target.target
        assert index.shape == labels.shape and index.dtype == np.int64
        assert index.min() >= IGNORE_INDEX and index.max() < target.num_classes
        labelled = index != IGNORE_INDEX
        assert len(target.index) == labelled.sum() == (labels != 0).sum()
        values = np.asarray(target.class_map.values, dtype=np.int64)
        assert np.array_equal(values[index[labelled]], labels[labelled].astype(np.int64))
        assert len(np.unique(index[labelled])) >= min_classes


def point_arrays() -> st.SearchStrategy[np.ndarray]:
    coordinates = hnp.arrays(
        np.float64,
        st.tuples(st.integers(0, 4), st.integers(2, 3)),
        elements=st.floats(-1.0, 8.0) | st.sampled_from([np.nan, np.inf, -1e300, 1e300]),
    )
    return st.one_of(coordinates, any_array(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)))


def point_class_arrays() -> st.SearchStrategy[np.ndarray]:
    return st.one_of(
        hnp.arrays(np.int64, st.integers(0, 4), elements=st.integers(-1, 6)),
        any_array(hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=4)),
    )


@HARDENING
@given(
    points=point_arrays(),
    classes=point_class_arrays(),
    shape=st.lists(st.integers(1, 8), min_size=2, max_size=3).map(tuple),
    spacing=st.none() | st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=4),
    radius=st.floats(0.1, 4.0) | st.sampled_from([0.0, -1.0, np.nan, np.inf]),
)
def test_points_to_labels_works_or_raises_our_error(count_example, points, classes, shape, spacing, radius):
    with count_example():
        try:
            with quiet():
                out = points_to_labels(points, classes, shape=shape, spacing=spacing, radius=radius)
        except ScribbleSegError:
            return
        assert out.shape == shape and out.dtype.kind == "u"
        with quiet():  # accepted: numbers (or empty arrays of any kind, which mean "no points")
            coordinates = np.asarray(points).astype(np.float64).reshape(-1, len(shape))
            values = np.asarray(classes).astype(np.int64).reshape(-1)
        assert set(np.unique(out).tolist()) - {0} <= set(values.tolist())
        if len(values):  # the voxel nearest to the last point has its class
            nearest = np.clip(np.floor(coordinates[-1] + 0.5), 0, np.asarray(shape) - 1).astype(int)
            assert out[tuple(nearest)] == values[-1]


@HARDENING
@given(data=st.data(), backing=BACKINGS)
def test_strokes_added_while_training_work_or_raise_our_error(count_example, data, backing):
    """``SparseTarget.update`` (a stroke painted during training) with a block of any kind."""
    with count_example():
        scribbles = np.zeros((6, 7), np.uint8)
        scribbles[1, 1:5], scribbles[4, 2:6] = 1, 2
        target = labels_to_target(backed(scribbles, backing))
        starts = [data.draw(st.integers(0, s), label="start") for s in target.spatial_shape]
        stops = [
            data.draw(st.integers(a, s), label="stop")
            for a, s in zip(starts, target.spatial_shape, strict=True)
        ]
        region = tuple(slice(a, b) for a, b in zip(starts, stops, strict=True))
        region_shape = tuple(b - a for a, b in zip(starts, stops, strict=True))
        block = data.draw(
            st.one_of(
                hnp.arrays(np.int32, region_shape, elements=st.sampled_from([0, 1, 2])),
                any_array(st.just(region_shape)),
            ),
            label="block",
        )
        before = target.read((slice(None), slice(None)))
        try:
            with quiet():
                target.update(region, block)
        except ScribbleSegError:
            assert np.array_equal(target.read((slice(None), slice(None))), before)  # nothing half-applied
            return
        after = target.target
        expected = np.where(block.astype(np.int64) == 0, IGNORE_INDEX, block.astype(np.int64) - 1)
        assert np.array_equal(after[region], expected)
        assert len(target.index) == (after != IGNORE_INDEX).sum()


# --------------------------------------------------------------------------------------------------
# (b) the image source and the array files


@HARDENING
@given(
    data=st.data(),
    array=any_array(hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=5)),
    backing=BACKINGS,
    channel_axis=st.none() | st.integers(-6, 6),
    spacing=st.none() | st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=0, max_size=4),
)
def test_image_source_works_or_raises_our_error(count_example, data, array, backing, channel_axis, spacing):
    with count_example():
        original = array.copy()
        try:
            with quiet():
                source = ImageSource(backed(array, backing), channel_axis=channel_axis, spacing=spacing)
                normalisation = source.normalisation
                whole = source.read()
        except ScribbleSegError:
            assert unchanged(original, array)
            return
        assert unchanged(original, array)
        assert source.dtype.kind in "biuf" and source.spatial_dims in (2, 3)
        assert normalisation.n_channels == source.n_channels
        assert all(np.isfinite(normalisation.low + normalisation.high))
        assert whole.shape == source.shape and whole.dtype == np.float32 and np.isfinite(whole).all()
        raw = source.read_raw()
        assert raw.shape == source.shape and raw.dtype == source.dtype
        # A region that may reach beyond the image (filled by reflection), as previews and patches read.
        starts = [data.draw(st.integers(-4, s + 1), label="start") for s in source.spatial_shape]
        sizes = [data.draw(st.integers(0, 7), label="size") for _ in source.spatial_shape]
        region = tuple(slice(a, a + n) for a, n in zip(starts, sizes, strict=True))
        with quiet():
            block = source.read(region)
        assert block.shape == (source.n_channels, *sizes) and np.isfinite(block).all()


SUFFIXES = st.sampled_from([".tif", ".ome.tif", ".npy", ".zarr"])


@contextlib.contextmanager
def workspace() -> Iterator[pathlib.Path]:
    """A fresh folder per example (a tmp_path fixture would be shared by all examples)."""
    with tempfile.TemporaryDirectory(prefix="scribbleseg-fuzz-") as folder:
        yield pathlib.Path(folder)


@HARDENING
@given(
    array=any_array(hnp.array_shapes(min_dims=0, max_dims=6, min_side=0, max_side=4)),
    suffix=SUFFIXES,
    spacing=st.none() | st.lists(st.floats(1e-3, 1e3), min_size=2, max_size=3).map(tuple),
    lazy=st.booleans(),
)
def test_written_arrays_read_back_or_raise_our_error(count_example, array, suffix, spacing, lazy):
    with count_example():
        with workspace() as folder:
            path = folder / f"image{suffix}"
            try:
                with quiet():
                    write_array(path, array, spacing=spacing)
            except ScribbleSegError:
                assert not path.exists()  # a failed write leaves nothing that looks complete
                assert not [name for name in os.listdir(folder) if name.startswith(".")]
                return
            with quiet():
                result = read_array(path, lazy=lazy)
                read = np.asarray(result.data)
        if result.axes is not None and sorted(result.axes) == sorted(default_axes(array.ndim, spacing)):
            # ImageJ keeps channels after Z (ZCYX): the file's axes say so
            read = np.transpose(read, [result.axes.index(a) for a in default_axes(array.ndim, spacing)])
        if suffix == ".ome.tif":  # OME has no way to say that an axis of size 1 was there
            read, array = np.squeeze(read), np.squeeze(array)
        assert read.shape == array.shape
        assert np.array_equal(read, array, equal_nan=read.dtype.kind == "f")


def _valid_file(folder: pathlib.Path, suffix: str, seed: int) -> pathlib.Path:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 200, (3, 9, 11)).astype(np.uint8 if seed % 2 else np.float32)
    path = folder / f"image{suffix}"
    write_array(path, array, chunks=(1, 4, 4))
    return path


@HARDENING
@given(
    suffix=SUFFIXES,
    seed=st.integers(0, 3),
    file_choice=st.integers(0, 10_000),
    cut=st.floats(0.0, 1.0),
    flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=8),
    lazy=st.booleans(),
)
def test_corrupted_files_are_read_or_refused_with_our_error(
    count_example, suffix, seed, file_choice, cut, flips, lazy
):
    """Truncate and overwrite bytes of a valid file (for zarr: one of its files)."""
    with count_example():
        with workspace() as folder:
            path = _valid_file(folder, suffix, seed)
            files = sorted(p for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file())
            victim = files[file_choice % len(files)]
            content = bytearray(victim.read_bytes())
            for where, value in flips:
                if content:
                    content[int(where * (len(content) - 1))] = value
            victim.write_bytes(bytes(content[: round(cut * len(content))] if cut < 1.0 else content))
            try:
                with quiet():
                    result = read_array(path, lazy=lazy)
                    np.asarray(result.data)  # lazy data fails only when it is read
            except ScribbleSegError:
                return


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
ZARR_KEYS = [
    "zarr_format",
    "node_type",
    "shape",
    "data_type",
    "chunk_grid",
    "chunk_key_encoding",
    "fill_value",
    "codecs",
    "attributes",
    "dimension_names",
]


@HARDENING
@given(
    kind=st.sampled_from([".tif", ".ome.tif", ".npy", "zarr.json", ".zarray", "zarr.json edit"]),
    content=st.binary(max_size=600),
    document=st.dictionaries(st.sampled_from(ZARR_KEYS) | st.text(max_size=6), JSON_VALUES, max_size=6),
    key=st.sampled_from(ZARR_KEYS),
    value=JSON_VALUES,
)
def test_random_files_are_refused_with_our_error(count_example, kind, content, document, key, value):
    with count_example():
        with workspace() as folder:
            if kind.startswith("."):
                path = folder / f"image{kind}"
                path.write_bytes(content)
            elif kind == "zarr.json edit":  # a valid array whose metadata has one field replaced
                path = _valid_file(folder, ".zarr", 0)
                metadata = json.loads((path / "zarr.json").read_text())
                metadata[key] = value
                (path / "zarr.json").write_text(json.dumps(metadata))
            else:
                path = folder / "image.zarr"
                path.mkdir()
                (path / kind).write_text(json.dumps(document))
            try:
                with quiet():
                    np.asarray(read_array(path, lazy=True).data)
            except ScribbleSegError:
                return


@HARDENING
@given(
    text=st.one_of(
        st.text(max_size=200),
        st.lists(
            st.lists(
                st.sampled_from(["axis-0", "axis-1", "y", "x", "class", "1", "-3", "nan", "", "2.5", "ä"])
            ),
            max_size=5,
        ).map(lambda rows: "\n".join(",".join(row) for row in rows)),
    ),
    ndim=st.sampled_from([2, 3]),
)
def test_points_csv_is_read_or_refused_with_our_error(count_example, text, ndim):
    with count_example():
        with workspace() as folder:
            path = folder / "points.csv"
            path.write_text(text, encoding="utf-8", errors="surrogateescape")
            try:
                coordinates, classes = read_points_csv(path, ndim=ndim)
            except ScribbleSegError:
                return
        assert coordinates.shape == (len(classes), ndim) and np.isfinite(coordinates).all()
        assert classes.dtype.kind == "i" and (classes >= 1).all()


# --------------------------------------------------------------------------------------------------
# (c) the command line


class _Payload:
    """Unpickling this creates a file: proof that code from a file ran."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.target, "w"))


def _cli_files(folder: pathlib.Path) -> dict[str, str]:
    """Inputs a user may hand the CLI; none pair up into a trainable image + labels."""
    rng = np.random.default_rng(0)
    marker = folder / "code-ran"
    payload = pickle.dumps({"state_dict": _Payload(str(marker))})
    one_class = np.zeros((16, 16), np.uint8)
    one_class[3, 2:9] = 1
    arrays = {
        "image.npy": rng.random((16, 16)).astype(np.float32),
        "image3.npy": rng.random((2, 16, 16)).astype(np.float32),
        "one_class.npy": one_class,
        "float_labels.npy": rng.random((16, 16)),
        "labels3d.npy": np.zeros((2, 16, 16), np.uint8),
    }
    for name, array in arrays.items():
        np.save(folder / name, array)
    np.save(folder / "objects.npy", np.array([_Payload(str(marker))], dtype=object), allow_pickle=True)
    (folder / "garbage.tif").write_bytes(bytes(rng.integers(0, 256, 300, dtype=np.uint8)))
    (folder / "model.pt").write_bytes(payload)
    bad_model = folder / "bad_model"
    bad_model.mkdir()
    (bad_model / "model.json").write_text('{"format": "scribbleseg-model", "format_version": 1}')
    (bad_model / "model.safetensors").write_bytes(payload)
    (folder / "points.csv").write_text("axis-0,axis-1,class\n3,4,1\n")  # class 1 only: still one class
    (folder / "bad_points.csv").write_text("axis-0,axis-1,class\nnan,4,x\n")
    files = {name.split(".")[0]: str(folder / name) for name in [*arrays, "objects.npy", "garbage.tif"]}
    files |= {
        "model_pt": str(folder / "model.pt"),
        "bad_model": str(bad_model),
        "points": str(folder / "points.csv"),
        "bad_points": str(folder / "bad_points.csv"),
        "missing": str(folder / "missing.tif"),
        "no_folder": str(folder / "no" / "such" / "out.tif"),
        "folder": str(folder),
        "marker": str(marker),
    }
    files |= {
        f"out{suffix}": str(folder / f"out{suffix}")
        for suffix in (".tif", ".ome.tif", ".npy", ".zarr", ".png")
    }
    return files


FILE_TOKENS = [
    "image",
    "image3",
    "one_class",
    "float_labels",
    "labels3d",
    "objects",
    "garbage",
    "model_pt",
    "bad_model",
    "points",
    "bad_points",
    "missing",
    "no_folder",
    "folder",
    "out.tif",
    "out.ome.tif",
    "out.npy",
    "out.zarr",
    "out.png",
]
OPTION_TOKENS = [
    "-o",
    "--output",
    "--points",
    "--channel-axis",
    "--spacing",
    "--device",
    "--steps",
    "--time-budget",
    "--seed",
    "--init",
    "--network",
    "--patch-size",
    "--batch-size",
    "--learning-rate",
    "--contrastive-weight",
    "--crf-weight",
    "--dynamic-crf-weight",
    "--background-class",
    "--quiet",
    "--probabilities",
    "--probabilities-dtype",
    "--tta",
    "--scheduler",
    "--block-size",
    "--debug",
    "--nope",
    "-x",
    "--",
    "-",
]
VALUE_TOKENS = [
    "0",
    "1",
    "-1",
    "2",
    "16",
    "99999999999999999999999",
    "1e309",
    "inf",
    "-inf",
    "nan",
    "1.5",
    "16,16",
    "1,1",
    "0,0",
    "2,1,1",
    "1e-320,1",
    "a,b",
    "",
    "cpu",
    "cuda",
    "auto",
    "small",
    "large",
    "float16",
    "local:0",
    "x" * 300,
    "\udcff.tif",
    "é.tif",
]


FILES = st.sampled_from(FILE_TOKENS).map(lambda name: "{" + name + "}")
TOKENS = st.one_of(FILES, st.sampled_from(OPTION_TOKENS), st.sampled_from(VALUE_TOKENS), st.text(max_size=6))
#: Positional arguments of each command.
POSITIONALS = {"train": 2, "predict": 2, "evaluate": 2, "export": 1}
_IMAGE_OPTIONS = ["--channel-axis", "--spacing", "--device"]
#: Options of each command that take a value.
OPTIONS = {
    "train": [
        *_IMAGE_OPTIONS,
        *["--points", "--steps", "--time-budget", "--seed", "--init", "--network", "--patch-size"],
        *["--batch-size", "--learning-rate", "--contrastive-weight", "--crf-weight"],
        *["--dynamic-crf-weight", "--background-class"],
    ],
    "predict": [*_IMAGE_OPTIONS, "--probabilities", "--probabilities-dtype", "--scheduler", "--block-size"],
    "evaluate": ["--background-class"],
    "export": ["--background-class", "--spacing"],
}


@st.composite
def argument_lists(draw: st.DrawFn) -> list[str]:
    """Tokens in any order, or a well-formed command whose files and option values are fuzzed."""
    head = draw(st.sampled_from([[]] * 10 + [["--debug"], ["--help"], ["--version"]]))
    if draw(st.booleans()):
        command = draw(st.sampled_from(["train", "predict", "evaluate", "export", "bogus", ""]))
        return [*head, *([command] if command else []), *draw(st.lists(TOKENS, max_size=10))]
    command = draw(st.sampled_from(sorted(POSITIONALS)))
    argv = [
        *head,
        command,
        *draw(st.lists(FILES, min_size=POSITIONALS[command], max_size=POSITIONALS[command])),
    ]
    if command != "evaluate":
        argv += ["-o", draw(FILES)]
    for option in draw(st.lists(st.sampled_from(OPTIONS[command]), max_size=4)):
        argv += [option, draw(st.one_of(st.sampled_from(VALUE_TOKENS), FILES))]
    return argv


def _no_training(*_args: Any, **_kwargs: Any) -> None:
    raise AssertionError("the fuzzed command line reached training (the inputs must never allow it)")


@HARDENING
@given(argv=argument_lists())
def test_cli_exits_0_or_2_with_one_error_line(count_example, argv):
    with count_example():
        from scribbleseg.cli import main

        with workspace() as folder:
            files = _cli_files(folder)
            args = [files.get(token[1:-1], token) if token.startswith("{") else token for token in argv]
            stdout, stderr = io.StringIO(), io.StringIO()
            with (
                mock.patch("scribbleseg.core.engine.Trainer.__init__", _no_training),
                contextlib.redirect_stdout(stdout),
                contextlib.redirect_stderr(stderr),
            ):
                try:
                    status = main(args)
                except SystemExit as exc:  # argparse: usage errors, --help, --version
                    status = 0 if exc.code is None else exc.code
                    usage = True
                else:
                    usage = False
            assert not pathlib.Path(files["marker"]).exists(), "a pickle was unpickled"
        errors = stderr.getvalue()
        assert "Traceback" not in errors
        assert status in (0, 2), f"exit status {status}: {errors}"
        if status == 2:
            lines = errors.strip().splitlines()
            assert lines and lines[-1].startswith("scribbleseg: error: "), errors
            if usage:
                assert len(lines) == 1, errors


def test_the_cli_fuzz_reaches_every_command(tmp_path):
    """The placeholders give each command an input it gets past parsing with (a sanity check)."""
    from scribbleseg.cli import main

    files = _cli_files(tmp_path)
    statuses = {
        "evaluate": main(["evaluate", files["one_class"], files["one_class"]]),
        "export": main(["export", files["one_class"], "-o", files["out.tif"]]),
        "train": main(["train", files["image"], files["one_class"], "-o", str(tmp_path / "m")]),
        "predict": main(["predict", files["bad_model"], files["image"], "-o", files["out.tif"]]),
    }
    assert statuses == {"evaluate": 0, "export": 0, "train": 2, "predict": 2}


NUMERIC_OPTIONS = {
    "--steps": "steps",
    "--time-budget": "time_budget",
    "--seed": "seed",
    "--batch-size": "batch_size",
    "--learning-rate": "learning_rate",
    "--intensity-augmentation": "intensity_augmentation",
    "--contrastive-weight": "contrastive_weight",
    "--crf-weight": "crf_weight",
    "--dynamic-crf-weight": "dynamic_crf_weight",
    "--spacing": "spacing",
    "--patch-size": "patch_size",
}


@HARDENING
@given(
    option=st.sampled_from(sorted(NUMERIC_OPTIONS)),
    value=st.one_of(
        st.sampled_from(VALUE_TOKENS),
        st.floats().map(repr),
        st.integers().map(str),
        st.lists(st.floats(allow_nan=True), min_size=1, max_size=3).map(lambda v: ",".join(map(repr, v))),
    ),
)
def test_the_parser_accepts_only_numbers_training_can_use(count_example, option, value):
    """Accepted numbers are finite, seeds fit torch and numpy, batches fit in memory."""
    with count_example():
        from scribbleseg.cli import MAX_BATCH_SIZE, MAX_SEED, build_parser

        with contextlib.redirect_stderr(io.StringIO()) as stderr:
            try:
                args = build_parser().parse_args(
                    ["train", "image.tif", "labels.tif", "-o", "model", option, value]
                )
            except SystemExit as exc:
                assert exc.code == 2 and len(stderr.getvalue().strip().splitlines()) == 1
                return
        parsed = getattr(args, NUMERIC_OPTIONS[option])
        numbers = parsed if isinstance(parsed, tuple) else (parsed,)
        assert all(isinstance(n, int) or math.isfinite(n) for n in numbers), (option, value, parsed)
        if option == "--seed":
            assert 0 <= parsed <= MAX_SEED
        if option == "--batch-size":
            assert 1 <= parsed <= MAX_BATCH_SIZE
