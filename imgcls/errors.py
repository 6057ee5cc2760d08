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


class OutputNotEmpty(UsageProblem):
    """An output folder the user named (--out, DEST) already holds files: choose another, or --force where offered.

    One type for every command, so the exit status (2, as any unusable option value) is the same everywhere.
    """


class DataError(ImgclsError):
    """Input data is wrong: an image, a folder, a manifest."""


class ManifestError(DataError):
    """A manifest line is malformed; messages read ``FILE:LINE: message``."""


class ModelError(ImgclsError):
    """A model file is missing, truncated, foreign or incompatible."""


class WeightsError(ModelError):
    """Pretrained weights cannot be found or do not fit the architecture."""


class OutputError(ImgclsError):
    """An output file cannot be written where the user asked (named as the user gave it)."""


class Stopped(KeyboardInterrupt):
    """A signal (SIGINT, SIGTERM, SIGHUP) asked the command to stop: clean up, exit 128 + signum.

    A KeyboardInterrupt, so every ``except KeyboardInterrupt`` (the training loop's clean
    stop, the cleanup of staged outputs) treats SIGTERM and SIGHUP exactly like Ctrl-C.
    """

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def brief(exc: BaseException | str, limit: int = 200) -> str:
    """The first line of an exception's message, cut at a word boundary (never mid-word)."""
    text = str(exc).strip()
    line = (text.splitlines() or [""])[0].strip()
    if not line and isinstance(exc, BaseException):
        line = type(exc).__name__
    if len(line) <= limit:
        return line
    cut = line[:limit]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:(") + " ..."


class ErrorDescription:
    """How the CLI (and every torchrun rank) reports an exception: exit status and one line."""

    __slots__ = ("code", "message", "internal")

    def __init__(self, code: int, message: str, internal: bool = False):
        self.code, self.message, self.internal = code, message, internal

    def __iter__(self):  # code, message = describe_error(exc)
        return iter((self.code, self.message))


# import name -> pip name of the dependencies an ONNX-only install leaves out (README, "Predicting without torch")
CORE_PACKAGES = {"torch": "torch", "torchvision": "torchvision", "sklearn": "scikit-learn",
                 "safetensors": "safetensors"}

MEMORY_MESSAGE = ("out of memory: this command needs more memory than is free here "
                  "(rerun with --debug to see where)")


def signal_name(signum: int) -> str:
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def describe_error(exc: BaseException) -> ErrorDescription:
    """The one mapping from an exception to (exit status, one line) used by the CLI and by DDP ranks.

    ``internal`` marks a failure that is imgcls' own fault (a bug): the CLI adds the
    "internal error ... --debug" frame around ``message``.
    """
    if isinstance(exc, Stopped):
        what = "interrupted" if exc.signum == 2 else f"stopped by {signal_name(exc.signum)}"
        return ErrorDescription(exc.exit_code, what)
    if isinstance(exc, KeyboardInterrupt):
        return ErrorDescription(130, "interrupted")
    if isinstance(exc, UsageProblem):
        return ErrorDescription(2, str(exc))
    if isinstance(exc, ImgclsError):
        return ErrorDescription(exc.exit_code, str(exc))
    if isinstance(exc, MemoryError):
        return ErrorDescription(1, MEMORY_MESSAGE)
    top = (exc.name or "").split(".")[0] if isinstance(exc, ModuleNotFoundError) else ""
    if top in CORE_PACKAGES:
        # an install without the heavy dependencies (README: predicting with an ONNX model) met a command
        # or a model that needs one of them
        return ErrorDescription(1, f"this needs {CORE_PACKAGES[top]}, which is not installed here: pip install "
                                   f"{CORE_PACKAGES[top]} (an install without torch predicts and evaluates ONNX "
                                   f"models only)")
    if isinstance(exc, OSError):
        reason = exc.strerror or brief(exc)
        return ErrorDescription(1, f"{exc.filename}: {reason}" if exc.filename else reason)
    return ErrorDescription(1, f"{type(exc).__name__}: {brief(exc, 300)}", internal=True)
