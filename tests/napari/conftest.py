"""Fixtures for the napari tests: a viewer with a sample and the widget docked through the manifest."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

WIDGET_NAME = "ScribbleSeg"


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Other people benchmark on this machine: tests train with one thread, as the widget does on 2 cores."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def dock_widget() -> Callable[[Any], Any]:
    """Return a function that docks the ScribbleSeg widget into a viewer through the npe2 manifest."""

    def dock(viewer: Any) -> Any:
        _, widget = viewer.window.add_plugin_dock_widget("scribbleseg", WIDGET_NAME)
        return widget

    return dock


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
