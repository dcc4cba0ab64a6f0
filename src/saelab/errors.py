"""Errors a user can cause and fix. The CLI prints them as one short message and exits non-zero."""

from __future__ import annotations


class SaelabError(Exception):
    """Base class for errors caused by user input (config, dataset file, SAE file, model)."""

    exit_code = 2


class ConfigError(SaelabError):
    """A config key is unknown or has a bad value."""


class DatasetError(SaelabError):
    """A dataset file is missing, unreadable or invalid; the message names the file and row."""


class ModelError(SaelabError):
    """A model cannot be loaded or has no residual stream layers that saelab can find."""


class SAEFileError(SaelabError):
    """An SAE file or folder is missing, malformed or describes an unsupported architecture."""


class ProbeDataError(SaelabError, ValueError):
    """Probe inputs are malformed: wrong shape, non-finite values, labels that are not two classes.

    Also a ``ValueError``, so scikit-learn utilities that expect one (e.g. ``check_estimator``)
    recognise it.
    """


class ResultFileError(SaelabError):
    """An evaluation result file is unreadable, not JSON, or not a saelab eval envelope."""
