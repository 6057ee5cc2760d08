"""One signal policy for every command, and worker processes that die with their parent.

SIGINT (Ctrl-C), SIGTERM (``kill``, ``timeout``, schedulers) and SIGHUP (a closed
terminal) all raise :class:`~imgcls.errors.Stopped`, a ``KeyboardInterrupt``, in the main
thread. Whatever the command was doing unwinds through its ``finally`` blocks: staged
output folders are removed, temporary files deleted, train writes its best model and
checkpoint. The command then exits with 128 + the signal number (130, 143, 129). Only
the first signal raises; a second one is ignored so that the cleanup can finish, a
third ends the process at once.

Under torchrun with several processes, SIGTERM and SIGHUP keep their default action:
torchrun stops the ranks of a failed job with SIGTERM, and a rank waiting inside a
collective could not act on a Python-level handler anyway.

SIGPIPE keeps its default action (a closed reader ends ``imgcls ... | head`` quietly),
except inside :func:`pipe_errors`, where a closed stdout becomes a ``BrokenPipeError``
so that a command with staged output can remove it before exiting.

Worker processes (:func:`worker_pool`) ignore SIGINT and SIGHUP (the terminal sends
them to the whole process group; the parent handles them and stops the workers), and
ask the kernel to kill them when their parent dies (``PR_SET_PDEATHSIG`` on Linux): a
``kill -9`` of the command leaves no worker behind writing files.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

from imgcls.errors import Stopped

HANDLED = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))

_received: list[int] = []
_depth = 0
_saved: dict[int, Any] = {}


def _handler(signum: int, frame: Any) -> None:
    _received.append(signum)
    if len(_received) == 1:
        raise Stopped(signum)
    if len(_received) >= 3:  # the cleanup itself hangs: give up on it
        os._exit(128 + signum)


def _signals_to_handle() -> tuple[int, ...]:
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        world = 1
    if world > 1 and "RANK" in os.environ:  # torchrun owns SIGTERM/SIGHUP of its ranks
        return (signal.SIGINT,)
    return HANDLED


def install() -> bool:
    """Install the policy (main thread only); True when this call installed it."""
    global _depth
    if threading.current_thread() is not threading.main_thread():
        return False
    if _depth == 0:
        _received.clear()
        for signum in _signals_to_handle():
            _saved[signum] = signal.getsignal(signum)
            signal.signal(signum, _handler)
    _depth += 1
    return True


def uninstall() -> None:
    """Undo :func:`install` (the outermost call restores the previous handlers)."""
    global _depth
    if _depth == 0:
        return
    _depth -= 1
    if _depth == 0:
        for signum, previous in _saved.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        _saved.clear()
        _received.clear()


@contextlib.contextmanager
def policy() -> Iterator[None]:
    """The signal policy for the duration of one command."""
    installed = install()
    try:
        yield
    finally:
        if installed:
            uninstall()


def received() -> int | None:
    """The first signal that asked this command to stop, if any."""
    return _received[0] if _received else None


def _ignore_sigpipe() -> Any:
    """Ignore SIGPIPE (main thread only); return what to restore, or None."""
    if not hasattr(signal, "SIGPIPE") or threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGPIPE)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    return previous if previous is not None else signal.SIG_DFL


@contextlib.contextmanager
def pipe_errors() -> Iterator[None]:
    """Inside: writing to a closed pipe raises BrokenPipeError instead of killing the process."""
    previous = _ignore_sigpipe()
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGPIPE, previous)


# -- worker processes ---------------------------------------------------------------------
PR_SET_PDEATHSIG = 1


def tie_to_parent(parent_pid: int) -> None:
    """Pool initializer: die with the parent, leave terminal signals to it."""
    for name in ("SIGINT", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - not glibc/musl
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def terminate_workers(pool: Any) -> None:
    """Stop a ProcessPoolExecutor's workers now (queued work is dropped; nothing waits for running work)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    manager = getattr(pool, "_executor_manager_thread", None)  # shutdown(wait=False) forgets it
    try:
        pool.shutdown(wait=False, cancel_futures=True)
    except Exception:  # noqa: BLE001 - best effort on the way out
        pass
    for process in processes:
        with contextlib.suppress(Exception):
            process.terminate()
    for process in processes:
        with contextlib.suppress(Exception):
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
    if manager is not None:  # it notices the dead workers and ends; until then it may write to their pipes
        with contextlib.suppress(Exception):
            manager.join(timeout=5)


@contextlib.contextmanager
def worker_pool(max_workers: int) -> Iterator[Any]:
    """A ProcessPoolExecutor whose workers die with this process; an error or signal stops them at once.

    SIGPIPE is ignored while it runs: the executor's threads write to the workers' pipes, and a
    worker that has just died (terminated on SIGTERM, killed for memory) must give a
    BrokenProcessPool, not kill this process with SIGPIPE before it can clean up. After an error
    or a signal it stays ignored (the process is on its way out, and those threads may outlive
    the pool by a moment); a closed stdout then ends as BrokenPipeError (exit 141).
    """
    from concurrent.futures import ProcessPoolExecutor

    previous = _ignore_sigpipe()
    pool = ProcessPoolExecutor(max_workers=max_workers, initializer=tie_to_parent, initargs=(os.getpid(),))
    try:
        yield pool
    except BaseException:
        terminate_workers(pool)
        raise
    pool.shutdown(wait=True, cancel_futures=True)
    if previous is not None:
        signal.signal(signal.SIGPIPE, previous)
