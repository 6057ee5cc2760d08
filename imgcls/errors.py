"""One family of errors a user can act on.

The CLI turns an :class:`ImgclsError` into a one-line message and exit status 1
(``UsageProblem``: exit status 2) instead of a traceback. Messages should name the
file, line or option at fault and, where possible, what to do about it.
"""

from __future__ import annotations


class ImgclsError(Exception):
    """Base class: a problem with the user's data, files or environment (exit 1)."""

    exit_code = 1


class UsageProblem(ImgclsError):
    """The command line itself is wrong: an option value or combination (exit 2)."""

    exit_code = 2


class DataError(ImgclsError):
    """Input data is wrong: an image, a folder, a manifest."""


class ManifestError(DataError):
    """A manifest line is malformed; messages read ``FILE:LINE: message``."""


class ModelError(ImgclsError):
    """A model file is missing, truncated, foreign or incompatible."""


class WeightsError(ModelError):
    """Pretrained weights cannot be found or do not fit the architecture."""
