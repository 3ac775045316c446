"""napari workers for training and prediction: handlers connected before start, clean stops.

A :class:`BackgroundRun` runs a generator (the engine's ``Trainer.run`` or
:func:`~scribbleseg.napari._prediction.predict_blocks`) in a napari
``napari.qt.threading.GeneratorWorker``. Its ``yielded`` records arrive on the main thread,
which alone touches layers. Errors go to the ``on_error`` handler (a notification), never to a
traceback dialog.

The worker is built directly rather than with ``create_worker``: ``create_worker`` also
registers it with the current viewer's task list, whose entry (``cancel_callback=worker.quit``)
and signal connections (lambdas holding the window) form a cycle through Qt that Python's
garbage collector cannot break, so a closed viewer would never be freed. The widget stops its
workers itself when the viewer closes.

The worker class is superqt's ``GeneratorWorker`` with one change (:class:`_Worker`): it does not
swap the process-wide ``warnings.showwarning`` while it runs. superqt sets it to a lambda holding
the worker inside ``warnings.catch_warnings()``, which is not thread-safe: scikit-learn wraps
every forest job in ``catch_warnings`` too (in the forest teacher's thread and in joblib's
threads), and one that starts while a worker runs and ends after it restores the worker's lambda
for good. Later warnings then went to a finished worker, whose handlers kept the closed viewer
alive. Warnings of the worker's own thread are routed to it per thread instead
(:func:`_warnings_to`).
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from napari.qt.threading import GeneratorWorker
from qtpy.QtCore import Qt

__all__ = ["BackgroundRun", "WorkerRuntimeError"]


class WorkerRuntimeError(Exception):
    """Carries a ``RuntimeError`` out of the worker.

    superqt's worker takes a ``RuntimeError`` from the generator for a sign that the worker was
    deleted, and then emits neither ``errored`` nor ``finished``; torch raises ``RuntimeError``
    for real failures, so they are wrapped on the way out (and unwrapped for the handler).
    """

    def __init__(self, original: RuntimeError) -> None:
        super().__init__(str(original))
        self.original = original


_thread_handler = threading.local()  # .handler: where this thread's warnings go, if set


def _route_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """``warnings.showwarning`` once installed: a worker thread's warnings go to its worker."""
    handler = getattr(_thread_handler, "handler", None)
    if handler is None:
        _route_warning.previous(message, category, filename, lineno, file, line)  # type: ignore[attr-defined]
    else:
        handler((message, category, filename, lineno, file, line))


_route_warning.previous = warnings.showwarning  # type: ignore[attr-defined]


@contextlib.contextmanager
def _warnings_to(handler: Callable[[tuple[Any, ...]], None]) -> Iterator[None]:
    """Send the warnings shown in this thread to ``handler`` (others' go where they went)."""
    if warnings.showwarning is not _route_warning:
        _route_warning.previous = warnings.showwarning  # type: ignore[attr-defined]
        warnings.showwarning = _route_warning
    _thread_handler.handler = handler
    try:
        yield
    finally:
        _thread_handler.handler = None


class _Worker(GeneratorWorker):
    """superqt's ``GeneratorWorker`` without the process-wide ``warnings.showwarning`` swap."""

    def run(self) -> None:
        """Run the generator as superqt's ``WorkerBase.run`` (0.9) does, routing warnings per thread."""
        self.started.emit()
        self._running = True
        try:
            with _warnings_to(self.warned.emit):
                result = self.work()
            if isinstance(result, Exception):
                if isinstance(result, RuntimeError):  # the worker was deleted (as superqt)
                    warnings.warn(f"RuntimeError in aborted thread: {result}", RuntimeWarning, stacklevel=2)
                    return
                raise result
            if not self.abort_requested:
                self.returned.emit(result)
        except Exception as exc:
            self.errored.emit(exc)
        self._running = False
        self.finished.emit()
        self._finished.emit(self)


def _drive(generator_function: Callable[[], Iterator[Any]]) -> Iterator[Any]:
    """Yield from ``generator_function()`` (a GeneratorWorker needs a generator function)."""
    try:
        yield from generator_function()
    except RuntimeError as exc:
        raise WorkerRuntimeError(exc) from exc


def _show_warning(arguments: tuple[Any, ...]) -> None:
    from napari.utils.notifications import show_warning

    show_warning(f"ScribbleSeg: {arguments[0]}")


class BackgroundRun:
    """One generator running in a napari worker thread.

    Parameters
    ----------
    generator_function : callable
        Called without arguments in the worker thread; returns the generator to run.
    on_yield : callable
        Main thread: called with every yielded record.
    on_error : callable
        Main thread: called with the exception if the generator raises.
    (Warnings issued in the worker, e.g. about NaN in the image, become napari warnings.)
    on_finished : callable
        Main thread: called once the worker has ended (normally, stopped or failed).
    on_stop : callable, optional
        Called by :meth:`stop` before the worker is asked to quit (e.g. ``trainer.stop``).
    """

    def __init__(
        self,
        generator_function: Callable[[], Iterator[Any]],
        *,
        on_yield: Callable[[Any], None],
        on_error: Callable[[Exception], None],
        on_finished: Callable[[], None],
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        self._on_stop = on_stop
        self._started = threading.Event()
        self._ended = threading.Event()

        def errored(exc: Exception) -> None:
            on_error(exc.original if isinstance(exc, WorkerRuntimeError) else exc)

        self._handlers = (
            ("yielded", on_yield),
            ("errored", errored),
            ("finished", on_finished),
            ("warned", _show_warning),
        )
        self.worker = worker = _Worker(_drive, generator_function)
        # Direct connections run in the worker thread: they only set thread-safe flags, so that
        # wait() works without an event loop (e.g. while the viewer closes).
        worker.started.connect(self._started.set, Qt.ConnectionType.DirectConnection)
        worker.finished.connect(self._ended.set, Qt.ConnectionType.DirectConnection)
        for name, handler in self._handlers:
            getattr(worker, name).connect(handler)
        worker.start()

    @property
    def running(self) -> bool:
        """True from start until the worker has finished."""
        return not self._ended.is_set()

    def stop(self) -> None:
        """Ask the generator to end; honoured at its next step (thread-safe, returns at once)."""
        if self._on_stop is not None:
            self._on_stop()
        self.worker.quit()

    def disconnect(self) -> None:
        """Stop delivering records to the handlers (e.g. when the widget goes away)."""
        for name, handler in self._handlers:
            with contextlib.suppress(TypeError, RuntimeError):
                getattr(self.worker, name).disconnect(handler)

    def wait(self, timeout: float) -> bool:
        """Block until the worker has ended, at most ``timeout`` seconds; True if it has.

        A worker that has not started yet (napari starts workers from the event loop) is not
        waited for: it quits as soon as it starts if :meth:`stop` was called.
        """
        if not self._started.is_set():
            return not self.running
        return self._ended.wait(timeout)
