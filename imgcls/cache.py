"""On-disk caches: decoded images and frozen-backbone features.

Small data sets are decoded and resized once, not once per epoch. A cache entry is
one uint8 (float32 for features) NumPy array for an ordered set of images,
memory-mapped on load, plus a JSON sidecar with its shape and a CRC of its bytes:

    <cache>/decoded/<key>.npy  <key>.json
    <cache>/features/<key>.npy <key>.json

Keys hash everything that determines the content: for each image the file as it is
on disk NOW (path, size, modification time, status-change time and inode: see
:func:`image_fingerprint`), the target size and channels and the Pillow version (and,
for features, a fingerprint of the backbone's weights and preprocessing). The same
ordered set of files gives the same key in train, finetune, eval and predict, so an
entry one of them filled serves the others.

Why not the sha256 that ``prepare`` records in the manifest: it describes the file
as it was at prepare time, and a file changed since then no longer matches it, while
the manifest line (and so its sha256) stays the same. A key built on it would serve
the old pixels for the new file. Every command decodes the file as it is now (with or
without a cache, so the cache never changes a result); the status-change time
(ctime), which ``os.utime`` cannot set back, catches a same-size rewrite whose
modification time was restored. Hashing every file's bytes on every run would also
work but reads the whole data set on each cache hit.

No pickle: ``np.load(..., allow_pickle=False)``. Writers write a temporary file and
rename it (the array first, then its JSON sidecar), so two processes filling the same
entry at once (cron jobs) are safe: each file is complete, the last rename wins. A
reader that comes between the two renames may pair a new array with an old sidecar:
the sidecar's CRC-32, shape and dtype then do not match the array, and the entry is
treated as damaged (rebuilt, never trusted), exactly like a truncated or corrupted
file. An array is never written in place, so a memory-mapped entry a reader holds
keeps its contents when another process replaces the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from imgcls.console import detail
from imgcls.fsutil import atomic_path, temp_path_for

CACHE_VERSION = 2  # 2: keys from the file as it is now (ctime, inode), not the manifest's sha256


def default_cache_dir() -> Path:
    """$IMGCLS_CACHE, else the platform's user cache folder + imgcls."""
    env = os.environ.get("IMGCLS_CACHE")
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "imgcls"


def resolve_cache_dir(cache_dir: str | os.PathLike | None, enabled: bool = True) -> Path | None:
    """The cache folder to use, or None when caching is off (--no-cache).

    ``--cache-dir`` and ``$IMGCLS_CACHE`` are treated alike: a path that exists but is
    not a folder is refused (it would otherwise disable the cache without a word).
    """
    if not enabled:
        return None
    if cache_dir:
        return Path(cache_dir).expanduser()
    folder = default_cache_dir()
    if folder.exists() and not folder.is_dir():
        from imgcls.errors import UsageProblem

        where = f"$IMGCLS_CACHE={os.environ['IMGCLS_CACHE']}" if os.environ.get("IMGCLS_CACHE") else str(folder)
        raise UsageProblem(f"{where}: is not a folder; point it at a folder for the cache (or pass --no-cache)")
    return folder


def image_fingerprint(path: Path, sha256: str | None = None) -> str:
    """Identity of an image file as it is now on disk: absolute path, size, mtime, ctime, device and inode.

    A rewrite in place changes the ctime (even when ``os.utime`` restores the mtime), a
    replacement by rename changes the inode. ``sha256`` (a manifest's, from prepare time)
    is accepted for the callers' convenience but deliberately NOT part of the identity:
    see the module docstring.
    """
    del sha256  # describes the file at prepare time, not now
    try:
        st = os.stat(path)
        return f"{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_dev}\0{st.st_ino}"
    except OSError:
        return f"{os.path.abspath(path)}\0missing"


def entry_key(kind: str, fingerprints: Sequence[str], *parts: object) -> str:
    digest = hashlib.sha256(f"{kind}\0{CACHE_VERSION}\0{parts!r}\0".encode())
    for fp in fingerprints:
        digest.update(fp.encode("utf-8", "surrogatepass"))
        digest.update(b"\n")
    return digest.hexdigest()[:32]


def _crc(array: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(array).data.cast("B")) & 0xFFFFFFFF


def load_entry(folder: Path, key: str) -> np.ndarray | None:
    """The cached array (memory-mapped), or None when absent or damaged."""
    data_path, meta_path = folder / f"{key}.npy", folder / f"{key}.json"
    if not data_path.exists() or not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict):  # null, [], "x", 1e999: valid JSON, but no sidecar
            raise ValueError(f"sidecar is a JSON {type(meta).__name__}, not an object")
        array = np.load(data_path, mmap_mode="r", allow_pickle=False)
        if list(array.shape) != meta["shape"] or str(array.dtype) != meta["dtype"] or _crc(array) != meta["crc32"]:
            raise ValueError("contents do not match the sidecar")
        return array
    except (OSError, ValueError, KeyError, TypeError, RecursionError, json.JSONDecodeError) as exc:
        detail(f"cache entry {data_path} is damaged ({exc}); rebuilding it")
        return None


def _write_sidecar(folder: Path, key: str, shape: Sequence[int], dtype: str, crc32: int) -> None:
    meta = {"shape": list(shape), "dtype": dtype, "crc32": crc32, "version": CACHE_VERSION}
    with atomic_path(folder / f"{key}.json") as tmp:
        tmp.write_text(json.dumps(meta))


def store_entry(folder: Path, key: str, array: np.ndarray) -> None:
    """Write an entry: the array (renamed into place), then its sidecar (renamed into place)."""
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / f"{key}.npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array, allow_pickle=False)
    _write_sidecar(folder, key, array.shape, str(array.dtype), _crc(array))


class EntryWriter:
    """Write a new entry batch by batch, in order, then publish it: for callers that stream.

    Rows are appended to a hidden temporary ``.npy`` in the entry's folder (memory stays
    bounded; no memory map, so a full disk is an OSError, not a SIGBUS) with a running
    CRC-32. :meth:`commit` renames it into place and writes the sidecar, as
    :func:`store_entry` does; :meth:`discard` (also on garbage collection) removes it.
    """

    def __init__(self, cache_dir: Path, kind: str, key: str, shape: tuple[int, ...], dtype: str = "uint8"):
        self.folder = cache_dir / kind
        self.key = key
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.rows = 0
        self.crc = 0
        self.fh = None
        self.tmp: Path | None = None
        self.folder.mkdir(parents=True, exist_ok=True)
        self.tmp = temp_path_for(self.folder / f"{key}.npy")
        try:
            self.fh = open(self.tmp, "wb")
            header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape}
            np.lib.format.write_array_header_1_0(self.fh, header)
        except BaseException:
            self.discard()
            raise

    @property
    def complete(self) -> bool:
        return self.fh is not None and self.rows == self.shape[0]

    def append(self, array: np.ndarray) -> None:
        """Add the next rows (shape (n, *shape[1:])) in order."""
        if self.fh is None:
            raise ValueError("entry already committed or discarded")
        array = np.ascontiguousarray(array, dtype=self.dtype)
        if array.shape[1:] != self.shape[1:] or self.rows + len(array) > self.shape[0]:
            raise ValueError(f"rows of shape {array.shape} do not fit an entry of shape {self.shape}")
        data = array.data.cast("B")
        self.fh.write(data)
        self.crc = zlib.crc32(data, self.crc)
        self.rows += len(array)

    def commit(self) -> None:
        """Make the entry visible to other readers (OSError when the cache cannot be written)."""
        if not self.complete:
            rows = self.rows
            self.discard()
            raise ValueError(f"entry has {rows} of {self.shape[0]} rows: not published")
        fh, tmp = self.fh, self.tmp
        assert fh is not None and tmp is not None
        try:
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
            self.fh = None
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, self.folder / f"{self.key}.npy")
            self.tmp = None
            _write_sidecar(self.folder, self.key, self.shape, str(self.dtype), self.crc & 0xFFFFFFFF)
        finally:
            self.discard()

    def discard(self) -> None:
        """Drop the entry (the set could not be decoded completely, or the work was interrupted)."""
        fh, self.fh = self.fh, None
        if fh is not None:
            fh.close()
        tmp, self.tmp = self.tmp, None
        if tmp is not None:
            try:
                tmp.unlink()
            except OSError:
                pass

    def __del__(self) -> None:
        if getattr(self, "tmp", None) is not None:
            self.discard()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def cached_array(cache_dir: Path | None, kind: str, key: str, build: Callable[[], np.ndarray]) -> np.ndarray:
    """Return the entry for ``key``, building and storing it on a miss."""
    if cache_dir is None:
        return build()
    folder = cache_dir / kind
    hit = load_entry(folder, key)
    if hit is not None:
        detail(f"{kind} cache hit: {folder / key}.npy")
        return hit
    array = build()
    try:
        store_entry(folder, key, array)
    except OSError as exc:  # a read-only or full cache must not stop the work
        detail(f"cannot write cache entry in {folder}: {exc}")
    return array


def _decode_one(args: tuple[str, int, int]) -> np.ndarray:
    from imgcls.images import load_uint8

    path, size, channels = args
    return load_uint8(path, size, channels)


def decode_images(paths: Sequence[Path], image_size: int, channels: int, jobs: int | None = None) -> np.ndarray:
    """Decode and resize every image to one (N, S, S, C) uint8 array, in parallel for many files."""
    out = np.empty((len(paths), image_size, image_size, channels), dtype=np.uint8)
    jobs = jobs or os.cpu_count() or 1
    work = [(str(p), image_size, channels) for p in paths]
    if jobs <= 1 or len(paths) < 256:
        for i, item in enumerate(work):
            out[i] = _decode_one(item)
        return out
    from imgcls.signals import worker_pool

    chunk = max(16, len(work) // (jobs * 8))
    with worker_pool(jobs) as pool:
        for i, array in enumerate(pool.map(_decode_one, work, chunksize=chunk)):
            out[i] = array
    return out


def decoded_key(paths: Sequence[str | os.PathLike], image_size: int, channels: int,
                sha256s: Sequence[str | None] | None = None) -> str:
    """The one key of a decoded-image entry: train, finetune, eval and predict share entries through it.

    It covers the ordered files as they are now (:func:`image_fingerprint`), the size,
    the channels and the Pillow version (another Pillow may resize slightly differently).
    ``sha256s`` (from a manifest) is accepted and ignored: see the module docstring.
    """
    import PIL

    del sha256s
    return entry_key("decoded", [image_fingerprint(Path(p)) for p in paths], image_size, channels,
                     f"Pillow {PIL.__version__}")


def load_decoded(paths: Sequence[Path], image_size: int, channels: int, *, sha256s: Sequence[str | None] | None = None,
                 cache_dir: Path | None = None, jobs: int | None = None) -> np.ndarray:
    """Decoded uint8 images for ``paths``, from the cache when they are unchanged."""
    key = decoded_key(paths, image_size, channels, sha256s)
    return cached_array(cache_dir, "decoded", key, lambda: decode_images(paths, image_size, channels, jobs))
