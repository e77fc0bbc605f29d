"""User-facing errors.

Every error that a user can cause with a file, a path or an option derives from `PocketNasError`.
The command line prints such an error as one line (no traceback) and exits with status 2.
Any other exception is a bug in pocketnas and keeps its traceback.
"""

from __future__ import annotations

import os


class PocketNasError(Exception):
    """Base class of every error caused by user input."""


class DataError(PocketNasError):
    """A data file or folder is missing, damaged or inconsistent.

    The message always starts with the path. A single argument is taken as the whole message,
    which lets PyTorch's DataLoader rebuild the error in the main process.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str | None = None) -> None:
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(self.path if problem is None else f"{self.path}: {problem}")


class GenotypeError(PocketNasError):
    """A genotype (JSON file, text form or value) is invalid."""


class ConfigError(PocketNasError):
    """A preset, option or configuration value is invalid."""


class CheckpointError(PocketNasError):
    """A checkpoint file is missing, damaged or does not fit the network."""
