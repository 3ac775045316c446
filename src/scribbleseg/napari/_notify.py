"""Every failure the user can see becomes a napari notification that says what to do."""

from __future__ import annotations

import logging

from napari.utils.notifications import show_error, show_info, show_warning

from scribbleseg.errors import ScribbleSegError

__all__ = ["report_error", "show_info", "show_warning"]

_log = logging.getLogger("scribbleseg.napari")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def report_error(exc: BaseException, action: str) -> None:
    """Show ``exc`` as a napari error notification (never a traceback dialog).

    Parameters
    ----------
    exc : BaseException
        A :class:`ScribbleSegError` (its message is shown as it is: it already says what to do),
        or any other exception (shown with the action that failed; the traceback is logged).
    action : str
        What was being done, e.g. ``"training"``; starts the message of unexpected errors.
    """
    if isinstance(exc, ScribbleSegError):
        show_error(f"ScribbleSeg: {_one_line(exc)}")
        return
    if isinstance(exc, MemoryError):
        show_error(
            f"ScribbleSeg: out of memory while {action}; choose a smaller patch size or batch size "
            "(Advanced), or a smaller image"
        )
        return
    if isinstance(exc, OSError):
        show_error(f"ScribbleSeg: {action} failed: {_one_line(exc)}; check the path and the free disk space")
        return
    _log.error("%s failed", action, exc_info=(type(exc), exc, exc.__traceback__))
    show_error(
        f"ScribbleSeg: {action} failed: {type(exc).__name__}: {_one_line(exc)} "
        "(this looks like a bug; the details are in the log - please report it)"
    )
