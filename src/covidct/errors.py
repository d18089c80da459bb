"""Errors a user can act on. The CLI prints them as one line and exits with code 2."""
from __future__ import annotations

import os


class CovidctError(Exception):
    """A problem with the user's input or settings, stated with the file it concerns."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        self.path = None if path is None else os.fspath(path)
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class ScanError(CovidctError):
    """A scan that cannot be read or is unfit for the method."""


class DatasetError(CovidctError):
    """A split file, label file or dataset folder that is malformed or incomplete."""


class ModelError(CovidctError):
    """A model file that cannot be loaded or does not fit the request."""
