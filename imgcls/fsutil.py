"""Files appear complete or not at all; outputs go where the user pointed them.

Two writers:

* :func:`atomic_path` for imgcls' own files (run folders, caches): a hidden temporary
  name beside the target, renamed into place when complete.
* :class:`OutputFile` (and :func:`open_output`, :func:`write_output`) for every file a
  user names (``-o``, ``--rejects``, ``eval -o``, ``--predictions``): it resolves the
  target first, then

  - ``-`` is stdout;
  - a regular file (or a new name) is written atomically, as above;
  - a symbolic link keeps being a link: its target is written (atomically);
  - anything else (a FIFO, a terminal or another device, ``/dev/stdout``, ``/dev/fd/N``,
    ``/proc/self/fd/N``) is written *through*: opened and written in place, never
    replaced by a regular file (``/dev/fd/N`` of this process writes to descriptor N);
  - a folder, or a file that is an input of the same command, is refused, naming it.

  :func:`check_output` runs the same resolution up front (before an hour of training)
  and checks the folder is writable; errors name the target as the user gave it,
  never a temporary file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from imgcls.errors import OutputError

TEMP_PATTERN = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.(?P<token>[0-9a-f]{8})\.tmp$")


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _match_permissions(tmp: Path, dest: Path) -> None:
    """Give the new file the mode a plain open() would have: the old file's, else 0666 less the umask.

    (Temporary files, and files safetensors writes, are created 0600.)
    """
    try:
        mode = dest.stat().st_mode & 0o7777 if dest.exists() else 0o666 & ~_current_umask()
        os.chmod(tmp, mode)
    except OSError:
        pass


def temp_path_for(dest: Path) -> Path:
    """A hidden temporary name in dest's folder, so os.replace() stays atomic.

    The name carries this process's id: :func:`sweep_stale_temps` removes those of
    processes that no longer run (``kill -9``, power loss).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    return dest.with_name(f".{dest.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (True when unsure)."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def sweep_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove imgcls temporary files in ``folder`` left by processes that died; returns them."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(os.fspath(folder)))
    except OSError:
        return removed
    for entry in entries:
        match = TEMP_PATTERN.match(entry.name)
        if match and not pid_alive(int(match["pid"])):
            with contextlib.suppress(OSError):
                if entry.is_dir(follow_symlinks=False):
                    import shutil

                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def os_error_reason(exc: BaseException) -> str:
    """The reason of a write failure, also from libraries that wrap the OS error (safetensors)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc)
    found = re.search(r"os error (\d+)", text)
    if found:
        return os.strerror(int(found.group(1)))
    from imgcls.errors import brief

    return brief(exc)


def as_write_error(exc: BaseException, dest: str | os.PathLike) -> OSError:
    """An OSError naming ``dest`` for a failure while writing it (temp names never reach the user)."""
    if isinstance(exc, OSError):
        return OSError(exc.errno, exc.strerror or os_error_reason(exc), str(dest))
    found = re.search(r"os error (\d+)", str(exc))
    code = int(found.group(1)) if found else errno.EIO
    return OSError(code, os_error_reason(exc), str(dest))


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; it becomes ``dest`` only if the block succeeds.

    A failure to write (a full disk, a read-only folder) is an OSError naming ``dest``.
    """
    dest = Path(dest)
    try:
        tmp = temp_path_for(dest)
    except OSError as exc:
        raise as_write_error(exc, dest.parent) from None
    try:
        try:
            yield tmp
            if tmp.exists():
                with open(tmp, "rb") as fh:
                    os.fsync(fh.fileno())
                _match_permissions(tmp, dest)
            os.replace(tmp, dest)
        except OSError as exc:
            if exc.filename in (None, str(tmp), str(dest)) or str(tmp) in str(exc.filename):
                raise as_write_error(exc, dest) from None
            raise
    finally:
        if tmp.exists():
            with contextlib.suppress(OSError):
                tmp.unlink()


def write_bytes_atomic(dest: str | os.PathLike, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(dest: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(dest, text.encode("utf-8"))


# -- outputs the user names ---------------------------------------------------------------
_OWN_FD = re.compile(r"^/proc/(?:self|thread-self|(?P<pid>\d+))(?:/task/\d+)?/fd/(?P<fd>\d+)$")


@dataclass(frozen=True)
class OutputTarget:
    """Where an output really goes; ``given`` is the name the user wrote (used in messages)."""

    given: str
    option: str | None
    kind: str  # "stdout", "fd" (a descriptor of this process), "through" (device, FIFO), "atomic"
    path: Path | None = None  # the file written (a link's target for "atomic")
    fd: int | None = None

    @property
    def label(self) -> str:
        if self.given == "-":
            return "stdout"
        return f"{self.option} {self.given}" if self.option else self.given

    def fail(self, reason: str) -> OutputError:
        return OutputError(f"{self.label}: {reason}")


def _follow_links(path: str) -> tuple[str, int | None, bool]:
    """(final path, descriptor of this process it names, passed through /proc) along ``path``'s link chain."""
    p = os.path.abspath(path)
    own_fd: int | None = None
    through_proc = False
    for _ in range(40):
        parent, name = os.path.split(p)
        p = os.path.join(os.path.realpath(parent), name)
        if p.startswith("/proc/"):
            through_proc = True
            match = _OWN_FD.match(p)
            if match and own_fd is None and (match["pid"] is None or int(match["pid"]) == os.getpid()):
                own_fd = int(match["fd"])
        try:
            target = os.readlink(p)
        except OSError:
            return p, own_fd, through_proc
        if own_fd is not None:  # /proc/self/fd/N "links" to pipe:[...] or the file: write to N itself
            return p, own_fd, through_proc
        p = os.path.normpath(os.path.join(os.path.dirname(p), target))
    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)


def resolve_output(dest: str | os.PathLike, option: str | None = None) -> OutputTarget:
    """Decide how ``dest`` is written (see the module docstring); refuse a folder."""
    given = str(dest)
    if given == "-":
        return OutputTarget(given, option, "stdout")
    if "\0" in given:
        raise OutputError(f"{option + ' ' if option else ''}{given!r}: a file name cannot hold a NUL byte")
    probe = OutputTarget(given, option, "atomic")
    try:
        final, own_fd, through_proc = _follow_links(given)
    except OSError as exc:
        raise probe.fail(exc.strerror or str(exc)) from None
    if own_fd is not None:
        return OutputTarget(given, option, "fd", Path(final), own_fd)
    try:
        st = os.stat(final)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise probe.fail(exc.strerror or str(exc)) from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise probe.fail("is a folder; give a file name")
    if through_proc or (st is not None and not stat.S_ISREG(st.st_mode)):
        return OutputTarget(given, option, "through", Path(final))
    return OutputTarget(given, option, "atomic", Path(final))


def refuse_inputs(target: OutputTarget, inputs: Iterable[str | os.PathLike]) -> None:
    """Refuse to overwrite a file this command reads (its manifest, its images)."""
    if target.kind != "atomic" or target.path is None:
        return
    try:
        st = os.stat(target.path)
    except OSError:
        return  # a new file cannot be an input
    for item in inputs:
        if str(item) == "-":
            continue
        try:
            other = os.stat(item)
        except (OSError, ValueError):
            continue
        if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
            same = "" if os.path.abspath(item) == os.path.abspath(target.given) else f" ({item})"
            raise target.fail(f"is an input of this command{same}; write the output to another file")


def check_output(dest: str | os.PathLike, option: str | None = None,
                 inputs: Iterable[str | os.PathLike] = ()) -> OutputTarget:
    """Resolve ``dest`` and check, before any work, that it can be written and is no input."""
    target = resolve_output(dest, option)
    refuse_inputs(target, inputs)
    if target.kind == "fd":
        import fcntl

        assert target.fd is not None  # kind "fd"
        try:
            flags = fcntl.fcntl(target.fd, fcntl.F_GETFL)
        except OSError:
            raise target.fail(f"descriptor {target.fd} is not open") from None
        if flags & os.O_ACCMODE == os.O_RDONLY:
            raise target.fail(f"descriptor {target.fd} is open for reading only")
    elif target.kind == "through":
        try:
            st = os.stat(target.given)
        except OSError as exc:
            raise target.fail(exc.strerror or str(exc)) from None
        if stat.S_ISSOCK(st.st_mode):
            raise target.fail("is a socket; give a file name")
        if not stat.S_ISFIFO(st.st_mode) and not os.access(target.given, os.W_OK):
            raise target.fail("permission denied")
    elif target.kind == "atomic":
        assert target.path is not None
        _check_folder_writable(target)
    return target


def _check_folder_writable(target: OutputTarget) -> None:
    path = target.path
    assert path is not None  # kind "atomic"
    folder = path.parent
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise target.fail(f"{existing} is not a folder")
    if existing != folder:  # the folders will be made: the nearest existing one must take them
        if not os.access(existing, os.W_OK | os.X_OK):
            raise target.fail(f"cannot create folder {folder}: permission denied")
        return
    probe = folder / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise target.fail(f"cannot write in {folder}: {exc.strerror or exc}") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


class OutputFile:
    """One output the user named, open for writing; :meth:`commit` makes it final, :meth:`abort` drops it.

    ``inputs``: files the command reads; writing over one of them is refused.
    """

    def __init__(self, dest: str | os.PathLike | OutputTarget, *, option: str | None = None, binary: bool = False,
                 inputs: Iterable[str | os.PathLike] = ()):
        self.target = dest if isinstance(dest, OutputTarget) else resolve_output(dest, option)
        refuse_inputs(self.target, inputs)
        self.binary = binary
        self._tmp: Path | None = None
        self._done = False
        target = self.target
        mode = "wb" if binary else "w"
        text_args: dict[str, Any] = {} if binary else {"encoding": "utf-8", "newline": "\n"}
        try:
            if target.kind == "stdout":
                self.stream: IO[Any] = sys.stdout.buffer if binary else sys.stdout
            elif target.kind == "fd":
                self.stream = os.fdopen(os.dup(target.fd), mode, **text_args)  # type: ignore[arg-type]
            elif target.kind == "through":
                self.stream = open(target.given, mode, **text_args)
            else:
                assert target.path is not None
                self._tmp = temp_path_for(target.path)
                self.stream = open(self._tmp, mode, **text_args)
        except OSError as exc:
            self._cleanup()
            raise target.fail(exc.strerror or str(exc)) from None

    def write(self, data: Any) -> None:
        try:
            self.stream.write(data)
        except OSError as exc:
            self.abort()
            if isinstance(exc, BrokenPipeError):
                raise
            raise self.target.fail(exc.strerror or str(exc)) from None

    def commit(self) -> None:
        """Flush and make the output final (rename a temporary file into place)."""
        if self._done:
            return
        target = self.target
        try:
            self.stream.flush()
            if target.kind == "atomic":
                os.fsync(self.stream.fileno())
                self.stream.close()
                assert self._tmp is not None and target.path is not None
                _match_permissions(self._tmp, target.path)
                os.replace(self._tmp, target.path)
                self._tmp = None
            elif target.kind in ("fd", "through"):
                self.stream.close()
        except BrokenPipeError:
            self.abort()
            raise
        except OSError as exc:
            self.abort()
            raise target.fail(exc.strerror or str(exc)) from None
        self._done = True

    def abort(self) -> None:
        """Drop the output: a temporary file is removed; what went through to a device or stdout stays sent."""
        if self._done:
            return
        self._done = True
        if self.target.kind != "stdout":
            with contextlib.suppress(Exception):
                self.stream.close()
        self._cleanup()

    def _cleanup(self) -> None:
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                self._tmp.unlink()
            self._tmp = None

    def __enter__(self) -> OutputFile:
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


@contextlib.contextmanager
def open_output(dest: str | os.PathLike | OutputTarget, *, option: str | None = None, binary: bool = False,
                inputs: Iterable[str | os.PathLike] = ()) -> Iterator[OutputFile]:
    """``with open_output(path, option="-o") as out: out.write(...)``: complete or absent."""
    with OutputFile(dest, option=option, binary=binary, inputs=inputs) as out:
        yield out


def write_output(dest: str | os.PathLike | OutputTarget, data: str | bytes, *, option: str | None = None,
                 inputs: Iterable[str | os.PathLike] = ()) -> None:
    """Write a whole output at once (see :class:`OutputFile`)."""
    with open_output(dest, option=option, binary=isinstance(data, bytes), inputs=inputs) as out:
        out.write(data)
