"""Commands under torchrun: who may speak, and how a failing rank ends the job (no torch import).

``torchrun --nproc_per_node N -m imgcls train ...`` starts N copies of the command. The
library (:mod:`imgcls.training.distributed`) makes them train as one; this module makes
them behave as one command towards the user:

- rank 0 alone prints: the other ranks' stdout (and stderr, unless --debug) go to
  /dev/null, and they write no files;
- a rank that fails prints ``imgcls COMMAND: rank R failed: MESSAGE`` on its real stderr
  and exits at once with the usual status (1 data, 2 usage, 130 interrupted), without
  waiting on the process group; torchrun then stops the other ranks, whose collectives
  would otherwise wait for the dead one until IMGCLS_DIST_TIMEOUT.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
from collections.abc import Iterator


def torchrun_rank() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) when not launched by it."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        try:
            return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        except ValueError:
            pass
    return 0, 1


def is_main_rank() -> bool:
    return torchrun_rank()[0] == 0


def distributed_launch() -> bool:
    """Launched by torchrun with more than one process."""
    return torchrun_rank()[1] > 1


def _describe(exc: BaseException) -> tuple[int, str, bool]:
    """Exit status, one line, and whether this rank only lost contact with another that failed.

    The status and line are the CLI's own (:func:`imgcls.errors.describe_error`); a lost
    connection to a peer is told apart, because it is never the root cause.
    """
    from imgcls.errors import ImgclsError, describe_error

    if not isinstance(exc, (KeyboardInterrupt, ImgclsError, MemoryError)):
        text = (str(exc).strip().splitlines() or [""])[0]
        lowered = f"{type(exc).__name__} {text}".lower()
        if any(word in lowered for word in ("disterror", "distbackenderror", "distnetworkerror", "gloo", "nccl",
                                            "connection closed", "connection reset", "broken pipe", "timed out")):
            # gloo: "[.../pair.cc:545] Read error [127.0.0.1]:51096: Connection reset by peer. This is typically ..."
            text = re.sub(r"^\[[^\]]*\.(?:cc|cpp|h):\d+\]\s*", "", text).split(". ")[0][:200]
            return 1, (f"lost contact with the other ranks ({text}); another rank probably failed first: "
                       f"see its message"), True
    description = describe_error(exc)
    return description.code, description.message, False


def _record_for_torchrun(message: str, secondary: bool) -> None:
    """torchrun's failure summary shows this message; a rank that only lost contact is never its root cause.

    torchrun names the failure with the smallest timestamp in TORCHELASTIC_ERROR_FILE as the
    root cause: a secondary failure is dated one second later than it happened.
    """
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path or os.path.exists(path):
        return
    with contextlib.suppress(OSError):
        with open(path, "w", encoding="utf-8") as fh:
            # the layout torch's own ErrorHandler.record_exception writes
            json.dump({"message": {"message": message, "extraInfo": {
                "py_callstack": message, "timestamp": str(int(time.time()) + (1 if secondary else 0))}}}, fh)


@contextlib.contextmanager
def rank_guard(command: str) -> Iterator[None]:
    """Around a command's body: silence the other ranks, turn a failure into one line and an exit."""
    rank, world = torchrun_rank()
    if world <= 1:
        yield
        return
    from imgcls.console import settings

    real_err = sys.stderr
    saved = sys.stdout, sys.stderr
    devnull = None
    if rank != 0:
        devnull = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - closed in finally
        sys.stdout = devnull
        if not settings.debug:
            sys.stderr = devnull
    try:
        yield
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - every failure must end this rank, loudly and at once
        from imgcls.console import visible

        code, message, secondary = _describe(exc)
        line = f"imgcls {command}: rank {rank} failed: {visible(message)}"
        print(line, file=real_err, flush=True)
        _record_for_torchrun(line, secondary)
        if settings.debug:
            import traceback

            traceback.print_exception(type(exc), exc, exc.__traceback__, file=real_err)
        for stream in saved:
            with contextlib.suppress(Exception):
                stream.flush()
        # Not sys.exit: destructors of a process group whose peer died may block; torchrun
        # sees the status and stops the other ranks.
        os._exit(code)
    finally:
        sys.stdout, sys.stderr = saved
        if devnull is not None:
            devnull.close()
    # success: leave the process group cleanly (imported only now: the library imports torch)
    from imgcls.training import distributed

    distributed.teardown()


def refuse_stdin_manifest(manifest: str, command: str) -> None:
    """Every rank reads the manifest: N processes sharing one stdin pipe would each get a piece of it."""
    from imgcls.errors import UsageProblem

    if manifest == "-" and distributed_launch():
        raise UsageProblem(f"under torchrun every process reads the manifest: pass it as a file "
                           f"(torchrun ... -m imgcls {command} data.jsonl ...), not on standard input")
