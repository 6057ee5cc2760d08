"""On-disk caches: decoded images and frozen-backbone features.

Small data sets are decoded and resized once, not once per epoch. A cache entry is
one uint8 (or float16 for features) NumPy array for an ordered set of images,
memory-mapped on load, plus a JSON sidecar with its shape and a CRC of its bytes:

    <cache>/decoded/<key>.npy  <key>.json
    <cache>/features/<key>.npy <key>.json

Keys hash everything that determines the content: for each image its path, size and
modification time (so a file changed or replaced since ``prepare`` is decoded again,
never served stale) plus its recorded sha256, and the target size and channels (and,
for features, a fingerprint of the backbone's weights and preprocessing).

No pickle: ``np.load(..., allow_pickle=False)``. Writers write a temporary file and
rename it, so two processes filling the same entry (cron jobs) are safe: the last
rename wins and both are complete. A damaged entry (CRC or shape mismatch, truncated
file) is detected, reported with -v and rebuilt, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from imgcls.console import detail
from imgcls.fsutil import atomic_path

CACHE_VERSION = 1


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
    """The cache folder to use, or None when caching is off (--no-cache)."""
    if not enabled:
        return None
    return Path(cache_dir).expanduser() if cache_dir else default_cache_dir()


def image_fingerprint(path: Path, sha256: str | None = None) -> str:
    """Identity of an image file as it is now on disk."""
    try:
        st = path.stat()
        return f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0{sha256 or ''}"
    except OSError:
        return f"{path}\0missing\0{sha256 or ''}"


def entry_key(kind: str, fingerprints: Sequence[str], *parts: object) -> str:
    digest = hashlib.sha256(f"{kind}\0{CACHE_VERSION}\0{parts!r}\0".encode())
    for fp in fingerprints:
        digest.update(fp.encode("utf-8", "surrogatepass"))
        digest.update(b"\n")
    return digest.hexdigest()[:32]


def _crc(array: np.ndarray) -> int:
    return zlib.crc32(memoryview(np.ascontiguousarray(array)).cast("B")) & 0xFFFFFFFF


def load_entry(folder: Path, key: str) -> np.ndarray | None:
    """The cached array (memory-mapped), or None when absent or damaged."""
    data_path, meta_path = folder / f"{key}.npy", folder / f"{key}.json"
    if not data_path.exists() or not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        array = np.load(data_path, mmap_mode="r", allow_pickle=False)
        if list(array.shape) != meta["shape"] or str(array.dtype) != meta["dtype"] or _crc(array) != meta["crc32"]:
            raise ValueError("contents do not match the sidecar")
        return array
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        detail(f"cache entry {data_path} is damaged ({exc}); rebuilding it")
        return None


def store_entry(folder: Path, key: str, array: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / f"{key}.npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array, allow_pickle=False)
    meta = {"shape": list(array.shape), "dtype": str(array.dtype), "crc32": _crc(array), "version": CACHE_VERSION}
    with atomic_path(folder / f"{key}.json") as tmp:
        tmp.write_text(json.dumps(meta))


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
    chunk = max(16, len(work) // (jobs * 8))
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        for i, array in enumerate(pool.map(_decode_one, work, chunksize=chunk)):
            out[i] = array
    return out


def decoded_key(paths: Sequence[str | os.PathLike], image_size: int, channels: int,
                sha256s: Sequence[str | None] | None = None) -> str:
    """The one key of a decoded-image entry: train and eval share entries through it."""
    shas = sha256s if sha256s is not None else [None] * len(paths)
    return entry_key("decoded", [image_fingerprint(Path(p), s) for p, s in zip(paths, shas)], image_size, channels)


def load_decoded(paths: Sequence[Path], image_size: int, channels: int, *, sha256s: Sequence[str | None] | None = None,
                 cache_dir: Path | None = None, jobs: int | None = None) -> np.ndarray:
    """Decoded uint8 images for ``paths``, from the cache when they are unchanged."""
    key = decoded_key(paths, image_size, channels, sha256s)
    return cached_array(cache_dir, "decoded", key, lambda: decode_images(paths, image_size, channels, jobs))
