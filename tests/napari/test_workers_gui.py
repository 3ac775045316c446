"""Background runs: warnings of the worker's thread reach the user, and no worker outlives its run.

superqt's worker swaps the process-wide ``warnings.showwarning`` for a lambda holding the worker;
scikit-learn's ``catch_warnings`` in another thread (the forest teacher's) could restore that
lambda after the run, keeping the widget and the closed viewer alive (seen as napari's leak check
failing once the teacher's fit took longer than a short run).
"""

from __future__ import annotations

import threading
import warnings

import pytest

from scribbleseg.napari._workers import BackgroundRun

pytestmark = pytest.mark.gui


def test_a_warning_in_the_worker_becomes_a_notification_and_no_worker_outlives_its_run(qtbot, notifications):
    started, entered, worker_done = threading.Event(), threading.Event(), threading.Event()

    def other_thread() -> None:
        started.wait(30)
        with warnings.catch_warnings():  # as scikit-learn's forest jobs do: entered during the run
            entered.set()
            worker_done.wait(30)  # and left after it

    def steps():
        warnings.warn("the image has NaN voxels", UserWarning, stacklevel=1)
        started.set()
        entered.wait(30)
        yield 1

    before = warnings.showwarning
    other = threading.Thread(target=other_thread)
    other.start()
    finished = []
    run = BackgroundRun(
        steps, on_yield=lambda _: None, on_error=pytest.fail, on_finished=lambda: finished.append(1)
    )
    qtbot.waitUntil(lambda: bool(finished), timeout=30_000)
    worker_done.set()
    other.join(30)
    assert not run.running and not other.is_alive()
    # What the other thread restored holds no worker (superqt's worker left its lambda there).
    shown = warnings.showwarning
    assert shown is before or shown.__qualname__ == "_route_warning", shown
    qtbot.waitUntil(lambda: any("NaN voxels" in m for m in notifications.messages("warning")), timeout=10_000)
