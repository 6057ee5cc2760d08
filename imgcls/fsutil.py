"""Files appear complete or not at all."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path


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
    """A hidden temporary name in dest's folder, so os.replace() stays atomic."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    return dest.with_name(f".{dest.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; it becomes ``dest`` only if the block succeeds."""
    dest = Path(dest)
    tmp = temp_path_for(dest)
    try:
        yield tmp
        if tmp.exists():
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            _match_permissions(tmp, dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes_atomic(dest: str | os.PathLike, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(dest: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(dest, text.encode("utf-8"))
