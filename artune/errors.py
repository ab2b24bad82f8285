"""Every exception artune raises, under one base.

``UserError`` is a bad input (a config value, a search-space file, a corpus, a results directory, a
command-line option): the CLIs print its message as one line and exit 2. The rest are failures of a
run, recorded as a trial's state inside a search.
"""

from __future__ import annotations

from pathlib import Path


class ArtuneError(Exception):
    """The base of every artune exception."""


class UserError(ArtuneError, ValueError):
    """A bad input, found before any work is spent. The message names the file or key, the rule and the value."""


class ConfigError(UserError):
    """A configuration value breaks a rule. The message names the key, the rule and the value."""


class SpaceError(UserError):
    """A search-space file or override breaks a rule. One line: every error, joined by '; '."""


class SearchError(UserError):
    """A bad input or state of a search, found before any trial is spent."""


class ResultsError(UserError):
    """A results directory, table or metric cannot be read. The message names the file or value and the fix."""


class ResultsNotFound(ResultsError, FileNotFoundError):
    """No search's tables where a search was named; a FileNotFoundError too. ``where``: where it looked."""

    def __init__(self, message: str, where: str) -> None:
        super().__init__(message)
        self.where = where


class CorpusError(UserError):
    """A corpus cannot be found, fetched, read or used. The message names the file, rule and value."""


class NotFetched(CorpusError):
    """Tiny Shakespeare is not cached yet, and fetching was not allowed (a dry run)."""

    def __init__(self, url: str, path: Path) -> None:
        super().__init__(f"{path} is not here yet: it is downloaded from {url}")
        self.url, self.path = url, path


class UnknownTokenError(UserError):
    """A token to encode is not in the vocabulary."""


class DivergedError(ArtuneError, RuntimeError):
    """The training loss, or the validation loss after an epoch, became NaN or infinite; no checkpoint of the broken
    weights is written."""


class DeadlineReached(ArtuneError, RuntimeError):
    """Training stopped mid-epoch at its deadline (a search's time budget); the epoch is discarded.

    Discarded from the metrics and checkpoints only: the weights, the optimizer and the batch order
    have moved on by the epoch's partial steps, so the Trainer is spent. Go on from its last checkpoint.
    """


class ModelTooLarge(ArtuneError, MemoryError):
    """Training the model would take more memory than its device has: found before any of it is allocated."""


class CheckpointError(ArtuneError, RuntimeError):
    """A checkpoint file is missing, truncated, corrupt or from another configuration."""


class StorageError(ArtuneError, RuntimeError):
    """A search's results directory or study database, or a checkpoint, could not be written (the CLIs exit 4)."""


class NoCudaError(ArtuneError, RuntimeError):
    """Ray allocated a GPU to the trial but torch cannot see CUDA."""
