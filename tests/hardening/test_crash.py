"""Scribbles on a zarr-backed Labels layer survive the process being killed (SIGKILL).

A child process creates a napari ``Labels`` layer whose data is a chunked zarr array on disk
and paints strokes with the layer's own painting API (brush dabs, a polygon, a flood fill,
``data_setitem`` as the undo history and our corrections use, an eraser stroke). The same
strokes go into an in-memory twin layer; after each stroke the child prints one line with the
twin's labelled voxels. The parent reads the lines, kills the child with SIGKILL — once while it
waits, once while it is still painting — and then opens the zarr itself: every voxel the child
had reported painted is on disk, with its value, and the store is readable (no torn chunk).

Why it holds: napari writes the painted region back with ``layer.data[region] = …``, which zarr
turns into chunk writes at once (there is no write cache), and zarr's local store replaces each
chunk file atomically (written beside it, then renamed). Nothing is buffered in the process, so
nothing is lost when it dies. (A power cut can still lose what the OS had not flushed.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import zarr

pytestmark = [pytest.mark.timeout(120), pytest.mark.skipif(os.name != "posix", reason="needs SIGKILL")]

CHILD = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    import zarr
    from napari.layers import Labels

    path, zarr_format, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    shape = (6, 40, 48) if mode == "fixed" else (40, 48)
    chunks = (2, 16, 16) if mode == "fixed" else (16, 16)
    store = zarr.create_array(
        store=path, shape=shape, chunks=chunks, dtype="uint8", fill_value=0, zarr_format=zarr_format
    )
    layer = Labels(store)  # the layer's data IS the zarr array on disk
    twin = Labels(np.zeros(shape, np.uint8))  # the same strokes in memory: what must be on disk
    assert layer.data is store
    for target in (layer, twin):
        target.brush_size = 3

    def report(index):
        voxels = np.argwhere(twin.data != 0)
        values = twin.data[tuple(voxels.T)]
        print(json.dumps({"stroke": index, "voxels": voxels.tolist(), "values": values.tolist()}), flush=True)

    def stroke_fixed(target, index):
        z = 1 + index % 4
        if index == 0:  # a brush stroke: dabs along a line, as a mouse drag paints
            for x in range(5, 30, 2):
                target.paint((z, 10, x), 1, refresh=False)
        elif index == 1:
            target.paint_polygon([[z, 20, 5], [z, 20, 20], [z, 34, 20], [z, 34, 5]], 2)
        elif index == 2:
            target.fill((z, 2, 40), 3)  # the background region of this slice, across chunks
        elif index == 3:  # the path of undo / redo and of corrections turned into scribbles
            target.data_setitem((np.full(5, 4), np.arange(30, 35), np.arange(30, 35)), 4)
        elif index == 4:  # an eraser stroke through the first brush stroke
            for x in range(9, 16):
                target.paint((1, 10, x), 0, refresh=False)
        elif index == 5:  # a 3D brush on a new slice, crossing a chunk border
            target.n_edit_dimensions = 3
            target.paint((5, 15, 15), 2, refresh=False)

    if mode == "fixed":
        for index in range(6):
            for target in (layer, twin):
                stroke_fixed(target, index)
            report(index)
        print("waiting", flush=True)
        time.sleep(600)
    else:  # keep painting small, separate strokes until killed
        for index in range(10_000):
            y, x = 2 + 4 * (index // 11 % 9), 2 + 4 * (index % 11)
            label = 1 + index % 3
            for target in (layer, twin):
                if index >= 99:  # every place used: paint over them again, label by label
                    target.data_setitem((np.array([y]), np.array([x])), label)
                else:
                    target.paint((y, x), label, refresh=False)
            report(index)
            time.sleep(0.01)
    """
)


def _paint_then_kill(path, zarr_format: int, mode: str, kill_after: int) -> dict:
    """Run the child until it reported ``kill_after`` strokes, SIGKILL it; return the last report."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(zarr_format), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    reports = []
    try:
        deadline = time.monotonic() + 90
        while len(reports) < kill_after and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            reports.append(json.loads(line))
        if mode == "fixed":
            assert child.stdout.readline().strip() == "waiting"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)
    assert len(reports) == kill_after, child.stderr.read()
    assert child.returncode == -signal.SIGKILL
    return reports[-1]


def _expected(report: dict, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    voxels = np.asarray(report["voxels"], dtype=np.int64).reshape(-1, len(shape))
    values = np.asarray(report["values"], dtype=np.uint8)
    return voxels, values


def test_every_stroke_is_on_disk_after_a_kill(tmp_path):
    path = tmp_path / "scribbles.zarr"
    report = _paint_then_kill(path, zarr_format=3, mode="fixed", kill_after=6)
    on_disk = zarr.open_array(str(path), mode="r")[...]  # a fresh reader, in this process
    expected = np.zeros_like(on_disk)
    voxels, values = _expected(report, on_disk.shape)
    expected[tuple(voxels.T)] = values
    assert len(values) > 300 and set(np.unique(values)) == {1, 2, 3, 4}
    assert np.array_equal(on_disk, expected)  # every painted voxel, and the erased ones are 0


def test_strokes_survive_a_kill_while_painting(tmp_path):
    """zarr v2 store this time; the kill lands while strokes are still being written."""
    path = tmp_path / "scribbles.zarr"
    report = _paint_then_kill(path, zarr_format=2, mode="painting", kill_after=40)
    on_disk = zarr.open_array(str(path), mode="r")[...]  # readable: no torn chunk
    voxels, values = _expected(report, on_disk.shape)
    # The strokes reported before the kill are all there; a later one may have been cut off.
    assert len(values) >= 40 * 9
    assert np.array_equal(on_disk[tuple(voxels.T)], values)
    leftovers = [name for _, _, files in os.walk(path) for name in files if name.endswith(".partial")]
    assert len(leftovers) <= 1  # at most the chunk being replaced at the kill; it is ignored
