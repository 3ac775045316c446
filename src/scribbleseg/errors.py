"""Exceptions raised for problems a user can fix.

Every error a user may cause (bad file, bad shape, no scribbles …) is a
:class:`ScribbleSegError`. Its message says what is wrong and what to do; the
CLI prints it as one line and exits with status 2, the napari widget shows it
as a notification.
"""

from __future__ import annotations

__all__ = [
    "AnnotationError",
    "ConfigError",
    "InputError",
    "ModelFileError",
    "ScribbleSegError",
]


class ScribbleSegError(Exception):
    """Base class of every error caused by input the user can correct."""


class InputError(ScribbleSegError):
    """An image or labels file is missing, unreadable or of the wrong shape."""


class AnnotationError(ScribbleSegError):
    """Scribbles or points cannot be used for training (none, one class only …)."""


class ModelFileError(ScribbleSegError):
    """A model file is missing, not a ScribbleSeg model, corrupt or unsafe."""


class ConfigError(ScribbleSegError, ValueError):
    """A configuration value is out of range or inconsistent."""
