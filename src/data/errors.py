"""Errors of the data layer: each names the file or folder at fault and what to do about it."""
from __future__ import annotations

from src.errors import UserError


class DataError(UserError, RuntimeError):
    """Bad or missing input data (layout, list file, image). The message names the path and the fix.

    A ``UserError`` (one line from the entry points) and a RuntimeError whose constructor takes one message,
    so that a DataLoader worker can re-raise it in the main process with the same type and the original message.
    """


class ImageLoadError(DataError):
    """An image file that cannot be opened or decoded (missing, corrupt or truncated)."""
