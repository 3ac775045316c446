"""Shared fixtures: tiny seeded synthetic images with scribbles (eroded skeleton strokes)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.morphology import skeletonize


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``gui`` tests without a display (``make test`` provides one with Xvfb)."""
    if os.environ.get("DISPLAY"):
        return
    skip = pytest.mark.skip(reason="needs a display: run under Xvfb (make test does)")
    for item in items:
        if item.get_closest_marker("gui"):
            item.add_marker(skip)


def make_blobs(shape: tuple[int, ...], *, n_blobs: int, radius: float, seed: int) -> np.ndarray:
    """Ground truth: 1 = background, 2 = blob."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(np.float32)
    mask = np.zeros(shape, dtype=bool)
    for _ in range(n_blobs):
        centre = rng.uniform(radius, np.asarray(shape) - radius)
        r = radius * rng.uniform(0.7, 1.2)
        dist2 = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True))
        mask |= dist2 <= r**2
    return np.where(mask, 2, 1).astype(np.uint8)


def image_from_truth(truth: np.ndarray, *, seed: int, noise: float = 0.25) -> np.ndarray:
    rng = np.random.default_rng(seed)
    clean = ndi.gaussian_filter((truth == 2).astype(np.float32), 1.0)
    return (clean + noise * rng.standard_normal(truth.shape)).astype(np.float32)


def scribbles_from_truth(truth: np.ndarray, *, seed: int, fraction_objects: float = 0.6) -> np.ndarray:
    """Strokes along the skeleton of eroded regions, per class, on a subset of objects."""
    rng = np.random.default_rng(seed)
    out = np.zeros_like(truth)
    for value in np.unique(truth):
        regions, n = ndi.label(truth == value)
        keep = [i for i in range(1, n + 1) if rng.random() < fraction_objects] or [1]
        for i in keep:
            region = ndi.binary_erosion(regions == i, iterations=2)
            if not region.any():
                continue
            stroke = skeletonize(region)
            out[stroke] = value
    return out


@pytest.fixture
def blobs2d() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, scribbles, truth) of a 64×80 2D image with bright blobs."""
    truth = make_blobs((64, 80), n_blobs=6, radius=7, seed=1)
    return image_from_truth(truth, seed=2), scribbles_from_truth(truth, seed=3), truth


@pytest.fixture
def blobs3d() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image (2, 12, 40, 36) two channels, scribbles on every 4th slice, truth)."""
    truth = make_blobs((12, 40, 36), n_blobs=4, radius=5, seed=4)
    channel_a = image_from_truth(truth, seed=5)
    channel_b = image_from_truth(truth, seed=6, noise=0.5)
    sparse = np.zeros_like(truth)
    for z in range(1, truth.shape[0], 4):  # strokes on every 4th slice only, drawn in 2D
        sparse[z] = scribbles_from_truth(truth[z], seed=7 + z, fraction_objects=1.0)
    return np.stack([channel_a, channel_b]), sparse, truth


# --------------------------------------------------------------------------------------------------
# GUI fixtures (tests/napari, tests/hardening)

WIDGET_NAME = "ScribbleSeg"


@pytest.fixture
def dock_widget(make_napari_viewer: Any, qtbot: Any) -> Iterator[Callable[[Any], Any]]:
    """Return a function that docks the ScribbleSeg widget into a viewer through the npe2 manifest.

    At teardown (before the viewer's own, which checks that nothing still holds a viewer) every
    docked widget is settled: training and prediction are asked to stop, and the teardown waits
    until their worker threads have ended and the widget's queued "finished" handlers have run. A
    test that ends while a worker thread is winding down would otherwise fail that leak check
    (seen in CI under load: a test that waited only for ``training.running`` to turn False).
    """
    docked: list[Any] = []

    def dock(viewer: Any) -> Any:
        _, widget = viewer.window.add_plugin_dock_widget("scribbleseg", WIDGET_NAME)
        docked.append(widget)
        return widget

    yield dock

    from qtpy.QtCore import QThreadPool

    for widget in docked:
        if widget._closed:  # closed with its viewer or its dock: shutdown already waited
            continue
        widget.training.stop()
        if widget.prediction_run is not None:
            widget.prediction_run.stop()
        # Hang bounds only: a step or a block ends within seconds.
        qtbot.waitUntil(lambda w=widget: w.training.run is None and w.prediction_run is None, timeout=60_000)
    qtbot.waitUntil(lambda: QThreadPool.globalInstance().activeThreadCount() == 0, timeout=60_000)
    # A forest teacher still being fitted when a run stopped is abandoned at its next check (within
    # a block or a forest fit); until then its thread holds the image layer's data source.
    qtbot.waitUntil(
        lambda: not any(t.name == "scribbleseg-teacher" for t in threading.enumerate()), timeout=60_000
    )
    qtbot.wait(50)  # queued signals of the ended workers are delivered while the viewer lives
    docked.clear()  # the test item keeps ``dock`` (and so this list) until its teardown ends


class Notifications:
    """napari notifications captured during a test."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    def __call__(self, notification: Any) -> None:
        self.seen.append(notification)

    def messages(self, severity: str | None = None) -> list[str]:
        """Texts of the notifications (of one severity: "error", "warning", "info")."""
        return [str(n.message) for n in self.seen if severity is None or str(n.severity) == severity]

    def errors(self) -> list[str]:
        return self.messages("error")

    def clear(self) -> None:
        self.seen.clear()


@pytest.fixture
def notifications() -> Iterator[Notifications]:
    """Every napari notification shown during the test."""
    from napari.utils.notifications import notification_manager

    captured = Notifications()
    notification_manager.notification_ready.connect(captured)
    yield captured
    notification_manager.notification_ready.disconnect(captured)
