"""Materialise datasets as class folders of PNG files, ready for ``imgcls prepare``.

Why one large module: three readers (IDX, CIFAR, digits) and one writer (``materialise``:
staging folder, fingerprint, atomic rename) share ``Part`` and the destination rules below;
only the ``prepare`` command (and benchmarks/_fmnist.py, for ``read_idx``) calls them.

* ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, no
  download), written as ``DEST/<digit>/NNNNN.png`` (no official split: prepare
  makes a seeded one).
* MNIST-family IDX files (MNIST, Fashion-MNIST, KMNIST, ...), gzipped or not,
  written as ``DEST/{train,test}/<class>/NNNNN.png``.
* CIFAR-10/100 python batches (a folder, single batch files, or the downloaded
  ``.tar.gz``), written as ``DEST/{train,test}/<class>/NNNNN.png``.

CIFAR batches are pickles. Unpickling can run arbitrary code, so they are read with
:class:`RestrictedUnpickler`, which only lets numpy rebuild arrays and refuses any
other global with a clear error.

DEST is never overwritten by accident: it must be missing or empty (the import is
written to a hidden sibling folder and renamed into place, so an interrupted import
leaves nothing behind), or hold exactly a previous import of the same files
(recorded in ``DEST/.imgcls-import.json``; it is reused), or ``force`` is given
(files of the same name are replaced, nothing is deleted).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import re
import secrets
import shutil
import tarfile
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.errors import DataError, OutputNotEmpty, UsageProblem
from imgcls.prepare import IMPORT_MARKER

SAMPLES = ("digits",)
IMPORT_FORMATS = ("idx", "cifar")
IMPORTER_VERSION = 1

# "T-shirt/top" ... "Ankle boot" made folder-safe (the names benchmarks/_fmnist.py uses too).
FASHION_MNIST_CLASSES = [
    "tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot",
]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CLASS_NAME_PRESETS = {
    "fashion-mnist": FASHION_MNIST_CLASSES,
    "mnist": [str(d) for d in range(10)],
    "cifar10": CIFAR10_CLASSES,
}

WRITE_CHUNK = 2000  # images per worker task
PARALLEL_MIN_IMAGES = 4000


@dataclass
class Part:
    """Images of one split (or of no split) with integer labels."""

    split: str | None
    images: np.ndarray  # N x H x W (grayscale) or N x H x W x 3, uint8
    labels: np.ndarray  # N ints, indices into the class names


@dataclass
class ImportResult:
    dest: Path
    files: int
    classes: list[str]
    counts: dict[str, int]  # split (or "all") -> images
    reused: bool
    description: str


# ---------------------------------------------------------------------------- class names
def parse_class_names(text: str | None) -> list[str] | None:
    """``--class-names``: a preset name or a comma-separated list; each must be a usable folder name."""
    if text is None:
        return None
    if text.strip().lower() in CLASS_NAME_PRESETS:
        return list(CLASS_NAME_PRESETS[text.strip().lower()])
    names = [n.strip() for n in text.split(",")]
    for n in names:
        if not n or n in (".", "..") or n.startswith(".") or "/" in n or "\\" in n or "\0" in n:
            raise UsageProblem(f"--class-names: {n!r} cannot be a folder name")
    if len(set(names)) != len(names):
        dup = [n for n, c in Counter(names).items() if c > 1][0]
        raise UsageProblem(f"--class-names: {dup!r} is listed twice")
    return names


def _safe_folder_name(name: str) -> str:
    """Class names from a dataset's own metadata, made safe as folder names."""
    name = name.replace("/", "-").replace("\\", "-").replace("\0", "").strip()
    if not name or name.startswith("."):
        name = "_" + name
    return name


def _check_names_cover(names: list[str], labels: np.ndarray, where: str) -> None:
    if labels.size and int(labels.max()) >= len(names):
        raise UsageProblem(f"{where}: labels go up to {int(labels.max())} but only {len(names)} class names were given")


# ---------------------------------------------------------------------------- readers
def _idx_limit() -> int:
    """The most bytes of images one IDX file may hold: half the memory free now (at least 256 MiB)."""
    from imgcls.memory import available_bytes

    free = available_bytes() or (8 << 30)
    return max(256 << 20, free // 2)


def _read_exact(fh, n: int, path: Path, what: str) -> bytes:
    data = fh.read(n)
    if len(data) < n:
        raise DataError(f"{path}: truncated IDX {what}")
    return data


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file (http://yann.lecun.com/exdb/mnist/) as a numpy array; only unsigned bytes.

    Gzipped files (detected by content, not name) are inflated as a stream, and never
    beyond what the header announces: a small file that inflates to gigabytes is refused
    after reading one byte more than its header's size.
    """
    path = Path(path)
    try:
        with open(path, "rb") as raw:
            gzipped = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            fh = gzip.GzipFile(fileobj=raw) if gzipped else raw
            head = fh.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0:
                raise DataError(f"{path}: not an IDX file (bad magic number)")
            dtype, ndim = head[2], head[3]
            if dtype != 0x08:
                raise DataError(f"{path}: IDX data type 0x{dtype:02x} is not supported (only unsigned bytes, 0x08)")
            if ndim < 1:
                raise DataError(f"{path}: truncated IDX header")
            header = _read_exact(fh, 4 * ndim, path, "header")
            dims = [int.from_bytes(header[4 * k: 4 + 4 * k], "big") for k in range(ndim)]
            expected = int(np.prod(dims, dtype=object))
            limit = _idx_limit()
            if expected > limit:
                from imgcls.memory import format_bytes

                raise DataError(f"{path}: IDX header says {'x'.join(map(str, dims))} = {format_bytes(expected)} of "
                                f"images, more than the {format_bytes(limit)} this machine can hold now")
            data = fh.read(expected + 1)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected an IDX file") from None
    except PermissionError:
        raise DataError(f"{path}: permission denied") from None
    except (gzip.BadGzipFile, EOFError, OSError, ValueError, zlib.error) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip file ({exc})") from None
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        found = f"found {len(data)}" if len(data) < expected else "found more"
        raise DataError(f"{path}: IDX file {what}: header says {'x'.join(map(str, dims))} "
                        f"= {expected} bytes, {found}")
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def _idx_role_and_stem(path: Path) -> tuple[str, str]:
    """('images'|'labels', a name shared by an images/labels pair) from a file name."""
    name = path.name.lower()
    for suffix in (".gz", ".ubyte", ".idx"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    stem = re.sub(r"[-_.]?(images|labels)([-_.]?idx[13])?([-_.]?ubyte)?", "", name)
    return ("labels" if "label" in name else "images"), stem


def _split_of(stem: str) -> str:
    return "test" if ("t10k" in stem or "test" in stem) else "train"


def load_idx_parts(paths: Sequence[str | os.PathLike]) -> tuple[list[Part], list[Path]]:
    """Pair IDX image and label files (by their dimensions, then by name) into parts.

    A file with 1 dimension holds labels, 3 dimensions images. Pairs share a name
    once ``images``/``labels``/``idx3``/``ubyte`` are removed (``train-images-idx3-ubyte.gz``
    pairs with ``train-labels-idx1-ubyte.gz``); a single pair needs no matching names.
    Names containing ``t10k`` or ``test`` are the test split, others train.
    Returns the parts and the files read.
    """
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if "idx" in f.name.lower() and not f.name.startswith("."))
            if not found:
                raise DataError(f"{p}: no IDX files in this folder (names containing 'idx')")
            files += found
        else:
            files.append(p)
    images: dict[str, tuple[Path, np.ndarray]] = {}
    labels: dict[str, tuple[Path, np.ndarray]] = {}
    for f in files:
        arr = read_idx(f)
        _, stem = _idx_role_and_stem(f)
        if arr.ndim == 3:
            target = images
        elif arr.ndim == 1:
            target = labels
        else:
            raise DataError(f"{f}: IDX with {arr.ndim} dimensions is neither images (3) nor labels (1)")
        if stem in target:
            raise DataError(f"{f}: two IDX files for {stem!r} ({target[stem][0].name} and {f.name})")
        target[stem] = (f, arr)
    if len(images) == 1 and len(labels) == 1 and set(images) != set(labels):
        (istem, ival), = images.items()
        (_, lval), = labels.items()
        labels = {istem: lval}
    unpaired = sorted(set(images) ^ set(labels))
    if unpaired:
        stem = unpaired[0]
        f = (images.get(stem) or labels.get(stem))[0]  # type: ignore[index]
        other = "labels" if stem in images else "images"
        raise DataError(f"{f}: no matching {other} IDX file (pass images and labels files in pairs)")
    if not images:
        raise UsageProblem("--import idx: give the IDX images and labels files (or their folder)")
    parts = []
    splits_seen: dict[str, str] = {}
    for stem in sorted(images):
        (ipath, imgs), (lpath, labs) = images[stem], labels[stem]
        if len(imgs) != len(labs):
            raise DataError(f"{lpath}: {len(labs)} labels for {len(imgs)} images in {ipath.name}")
        split = _split_of(stem)
        if split in splits_seen:
            raise DataError(f"{ipath}: a second {split} set ({splits_seen[split]} already is one)")
        splits_seen[split] = ipath.name
        parts.append(Part(split=split, images=imgs, labels=labs.astype(np.int64)))
    return parts, files


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches: builtin containers plus numpy arrays, nothing else.

    pickle can call any importable function while loading; this refuses every global
    except the few numpy uses to rebuild an ndarray (and ``_codecs.encode``, which
    Python 3 uses for bytes in protocol-2 pickles).
    """

    def find_class(self, module: str, name: str) -> Any:
        allowed = _allowed_globals()
        key = (module, name)
        if key in allowed:
            return allowed[key]
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: only CIFAR-style batches of numpy arrays are read"
        )


def _allowed_globals() -> dict[tuple[str, str], Any]:
    import codecs

    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    out: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                       ("_codecs", "encode"): codecs.encode}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[(mod, "_reconstruct")] = multiarray._reconstruct
    if hasattr(numeric, "_frombuffer"):
        for mod in ("numpy.core.numeric", "numpy._core.numeric"):
            out[(mod, "_frombuffer")] = numeric._frombuffer
    return out


def load_pickle_restricted(data: bytes, where: str) -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`; errors name ``where``."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        raise DataError(f"{where}: {exc}") from None
    except (EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError, MemoryError) as exc:
        raise DataError(f"{where}: not a readable CIFAR batch ({type(exc).__name__}: {exc})") from None


def _str_keys(obj: Any, where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: not a CIFAR batch (expected a dict, found {type(obj).__name__})")
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _names(value: Any, where: str) -> list[str]:
    """Class names from a CIFAR meta file, as folder names; two names that make one folder are refused."""
    if not isinstance(value, (list, tuple)) or not value:
        raise DataError(f"{where}: class names are not a list")
    raw = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in value]
    names = [_safe_folder_name(v) for v in raw]
    first: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in first:
            j = first[name]
            raise DataError(f"{where}: class names {raw[j]!r} (label {j}) and {raw[i]!r} (label {i}) both make the "
                            f"folder name {name!r}; name the classes with --class-names A,B,...")
        first[name] = i
    return names


_CIFAR_BATCH = re.compile(r"^(data_batch_\d+|test_batch|train|test)$")
_CIFAR_META = re.compile(r"^(batches\.meta|meta)$")


def _cifar_members(paths: Sequence[str | os.PathLike]) -> Iterator[tuple[Path, str, str, bytes]]:
    """(file, where, basename, bytes) for CIFAR batch and meta files in folders, files or .tar.gz archives."""
    for p in map(Path, paths):
        if p.is_dir():
            found = [f for f in sorted(p.iterdir()) if _CIFAR_BATCH.match(f.name) or _CIFAR_META.match(f.name)]
            if not found:
                raise DataError(f"{p}: no CIFAR batches here (data_batch_N, test_batch, or train/test/meta)")
            for f in found:
                yield f, str(f), f.name, f.read_bytes()
        elif p.is_file() and tarfile.is_tarfile(p):
            try:
                with tarfile.open(p) as tar:
                    any_found = False
                    for member in tar:
                        base = member.name.rsplit("/", 1)[-1]
                        if member.isfile() and (_CIFAR_BATCH.match(base) or _CIFAR_META.match(base)):
                            any_found = True
                            fh = tar.extractfile(member)
                            yield p, f"{p}:{member.name}", base, fh.read() if fh else b""
                    if not any_found:
                        raise DataError(f"{p}: archive holds no CIFAR python batches")
            except (tarfile.TarError, EOFError, OSError) as exc:
                raise DataError(f"{p}: corrupt or truncated archive ({exc})") from None
        elif p.is_file():
            yield p, str(p), p.name, p.read_bytes()
        else:
            raise DataError(f"{p}: no such file or folder")


def load_cifar_parts(paths: Sequence[str | os.PathLike],
                     coarse: bool = False) -> tuple[list[Part], list[str] | None, list[Path]]:
    """CIFAR-10 (data_batch_N, test_batch, batches.meta) or CIFAR-100 (train, test, meta) batches.

    Returns parts and the class names: from the meta file; without one, CIFAR-10's
    standard names for CIFAR-10 batches (key ``labels``), else None; and the files read.
    """
    by_split: dict[str, list[tuple[str, np.ndarray, np.ndarray]]] = {"train": [], "test": []}
    names: list[str] | None = None
    cifar10_labels = True
    files: list[Path] = []
    for file, where, base, data in _cifar_members(paths):
        if file not in files:
            files.append(file)
        obj = _str_keys(load_pickle_restricted(data, where), where)
        hint = " (--coarse is for CIFAR-100)" if coarse else ""
        if _CIFAR_META.match(base) or "label_names" in obj or "fine_label_names" in obj:
            key = "coarse_label_names" if coarse else (
                "fine_label_names" if "fine_label_names" in obj else "label_names")
            if key not in obj:
                raise DataError(f"{where}: meta file has no {key!r}{hint}")
            names = _names(obj[key], where)
            continue
        if "data" not in obj:
            raise DataError(f"{where}: not a CIFAR batch (no 'data' entry)")
        label_key = "coarse_labels" if coarse else ("fine_labels" if "fine_labels" in obj else "labels")
        cifar10_labels = cifar10_labels and label_key == "labels"
        if label_key not in obj:
            raise DataError(f"{where}: CIFAR batch has no {label_key!r}{hint}")
        arr = obj["data"]
        if not isinstance(arr, np.ndarray) or arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] != 3072:
            shape = getattr(arr, "shape", type(arr).__name__)
            raise DataError(f"{where}: 'data' must be an N x 3072 uint8 array (CIFAR 32x32 RGB), found {shape}")
        try:
            labels = np.asarray(obj[label_key], dtype=np.int64)
        except (TypeError, ValueError):
            raise DataError(f"{where}: labels are not integers") from None
        if labels.ndim != 1 or len(labels) != len(arr):
            raise DataError(f"{where}: {labels.size} labels for {len(arr)} images")
        if labels.size and labels.min() < 0:
            raise DataError(f"{where}: negative label {int(labels.min())}")
        images = arr.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        split = "test" if base.startswith("test") else "train"
        by_split[split].append((base, images, labels))
    parts = []
    for split, chunks in by_split.items():
        if chunks:
            chunks.sort(key=lambda c: _natural_key(c[0]))
            parts.append(Part(split, np.concatenate([c[1] for c in chunks]), np.concatenate([c[2] for c in chunks])))
    if not parts:
        raise DataError(f"{', '.join(map(str, paths))}: no CIFAR data batches found (only a meta file?)")
    if names is None and cifar10_labels:
        names = list(CIFAR10_CLASSES)
    return parts, names, files


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def load_digits_part() -> list[Part]:
    """scikit-learn's 8x8 digits (values 0..16) scaled to 0..255."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return [Part(None, images, digits.target.astype(np.int64))]


# ---------------------------------------------------------------------------- writing
def _write_chunk(task: tuple[list[str], np.ndarray]) -> int:
    """Write PNG files (runs in worker processes); each file is complete or absent."""
    from PIL import Image

    paths, arrays = task
    for path, arr in zip(paths, arrays):
        tmp = f"{os.path.dirname(path)}/.{os.path.basename(path)}.tmp"
        Image.fromarray(arr).save(tmp, format="PNG")
        os.replace(tmp, path)
    return len(paths)


def _plan(parts: list[Part], class_names: list[str], base: Path) -> tuple[list[str], list[np.ndarray], Counter]:
    paths: list[str] = []
    arrays: list[np.ndarray] = []
    counts: Counter = Counter()
    folders: set[Path] = set()
    for part in parts:
        top = base / part.split if part.split else base
        for i, (img, lab) in enumerate(zip(part.images, part.labels)):
            folder = top / class_names[int(lab)]
            folders.add(folder)
            paths.append(str(folder / f"{i:05d}.png"))
            arrays.append(img)
        counts[part.split or "all"] += len(part.images)
    for folder in sorted(folders):
        folder.mkdir(parents=True, exist_ok=True)
    return paths, arrays, counts


def _write_all(paths: list[str], arrays: list[np.ndarray], jobs: int | None) -> None:
    from imgcls.prepare import default_jobs

    jobs = jobs or default_jobs()
    tasks = [(paths[k:k + WRITE_CHUNK], np.stack(arrays[k:k + WRITE_CHUNK]))
             for k in range(0, len(paths), WRITE_CHUNK)]
    if jobs <= 1 or len(paths) < PARALLEL_MIN_IMAGES:
        for t in tasks:
            _write_chunk(t)
        return
    from imgcls.signals import worker_pool

    with worker_pool(min(jobs, len(tasks))) as pool:
        for _ in pool.map(_write_chunk, tasks):
            pass


def _fingerprint(files: Sequence[Path]) -> list[dict[str, Any]]:
    """Names, sizes and hashes of the files read: what makes two imports 'the same'."""
    from imgcls.images import sha256_file

    out = []
    for f in sorted(files, key=lambda f: f.name):
        try:
            out.append({"name": f.name, "size": f.stat().st_size, "sha256": sha256_file(f)})
        except OSError as exc:
            raise DataError(f"{f}: cannot read: {exc.strerror or exc}") from None
    return out


def _count_pngs(dest: Path) -> Counter:
    counts: Counter = Counter()
    for dirpath, dirnames, filenames in os.walk(dest):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = Path(dirpath).relative_to(dest).parts
        key = rel[0] if len(rel) == 2 else "all"
        counts[key] += sum(1 for f in filenames if f.endswith(".png") and not f.startswith("."))
    return +counts


def _is_empty_dir(path: Path) -> bool:
    with os.scandir(path) as it:
        return next(it, None) is None


def _remove_stale_staging(dest: Path) -> None:
    """Staging folders beside DEST left by imports that were killed (their process no longer runs)."""
    from imgcls.fsutil import pid_alive

    pattern = re.compile(rf"\.{re.escape(dest.name)}\.imgcls-import-(\d+)-[0-9a-f]{{8}}")
    try:
        entries = list(os.scandir(dest.parent))
    except OSError:
        return
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match and not pid_alive(int(match.group(1))):
            shutil.rmtree(entry.path, ignore_errors=True)


def materialise(parts: list[Part], class_names: list[str], dest: str | os.PathLike, key: dict[str, Any],
                description: str, force: bool = False, jobs: int | None = None) -> ImportResult:
    """Write ``parts`` under ``dest`` as PNG class folders, safely (see the module docstring)."""
    dest = Path(dest)
    for part in parts:
        _check_names_cover(class_names, part.labels, description)
    used = sorted({int(v) for p in parts for v in np.unique(p.labels)})
    classes = [class_names[i] for i in used]
    marker = dest / IMPORT_MARKER
    expected = Counter({p.split or "all": len(p.images) for p in parts})
    if dest.exists() and not dest.is_dir():
        raise DataError(f"{dest}: exists and is not a folder")
    if dest.is_dir() and not _is_empty_dir(dest):
        previous = None
        if marker.is_file():
            try:
                previous = json.loads(marker.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                previous = None
        if previous and previous.get("key") == key and _count_pngs(dest) == expected:
            return ImportResult(dest, sum(expected.values()), classes, dict(expected), True, description)
        if not force:
            if previous:
                raise OutputNotEmpty(f"{dest}: holds a different or incomplete import "
                                     f"({previous.get('description', '?')}); choose a new folder or delete this one "
                                     f"(--force writes into it but leaves the old files in place)")
            raise OutputNotEmpty(f"{dest}: folder is not empty; choose a new folder, or pass --force to write into it "
                                 f"(files of the same name are replaced, nothing is deleted)")
        target = dest
        staging = None
    else:
        _remove_stale_staging(dest)
        staging = dest.parent / f".{dest.name}.imgcls-import-{os.getpid()}-{secrets.token_hex(4)}"
        target = staging
    try:
        target.mkdir(parents=True, exist_ok=True)
        paths, arrays, counts = _plan(parts, class_names, target)
        _write_all(paths, arrays, jobs)
        from imgcls.fsutil import write_text_atomic

        write_text_atomic(target / IMPORT_MARKER, json.dumps(
            {"key": key, "description": description, "classes": classes, "counts": dict(counts)}, indent=1) + "\n")
        if staging is not None:
            if dest.is_dir():
                dest.rmdir()  # empty, checked above
            os.replace(staging, dest)
            staging = None
    finally:
        if staging is not None and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return ImportResult(dest, len(paths), classes, dict(counts), False, description)


# ---------------------------------------------------------------------------- entry points
def import_sample(name: str, dest: str | os.PathLike, force: bool = False, jobs: int | None = None) -> ImportResult:
    """``--sample digits``: scikit-learn's bundled digits as ``DEST/<digit>/*.png``."""
    if name != "digits":
        raise UsageProblem(f"--sample: unknown sample {name!r} (available: {', '.join(SAMPLES)})")
    parts = load_digits_part()
    key = {"importer": "sample", "name": name, "version": IMPORTER_VERSION}
    return materialise(parts, [str(d) for d in range(10)], dest, key,
                       "scikit-learn digits (1,797 8x8 grayscale images, 10 classes)", force, jobs)


def import_idx(paths: Sequence[str | os.PathLike], dest: str | os.PathLike, class_names: list[str] | None = None,
               force: bool = False, jobs: int | None = None) -> ImportResult:
    """MNIST-family IDX files -> ``DEST/{train,test}/<class>/*.png``; classes default to "0".."9"."""
    parts, files = load_idx_parts(paths)
    n_classes = max((int(p.labels.max()) + 1 for p in parts if p.labels.size), default=0)
    names = class_names or [str(i) for i in range(max(10, n_classes))]
    _check_names_cover(names, np.concatenate([p.labels for p in parts]), "--class-names")
    key = {"importer": "idx", "inputs": _fingerprint(files), "classes": names, "version": IMPORTER_VERSION}
    total = sum(len(p.images) for p in parts)
    return materialise(parts, names, dest, key, f"IDX files ({total} images)", force, jobs)


def import_cifar(paths: Sequence[str | os.PathLike], dest: str | os.PathLike, class_names: list[str] | None = None,
                 coarse: bool = False, force: bool = False, jobs: int | None = None) -> ImportResult:
    """CIFAR-10/100 python batches -> ``DEST/{train,test}/<class>/*.png``; names from the meta file."""
    parts, meta_names, files = load_cifar_parts(paths, coarse=coarse)
    n_classes = max((int(p.labels.max()) + 1 for p in parts if p.labels.size), default=0)
    names = class_names or meta_names or [str(i) for i in range(n_classes)]
    _check_names_cover(names, np.concatenate([p.labels for p in parts]), "CIFAR class names")
    key = {"importer": "cifar", "inputs": _fingerprint(files), "classes": names, "coarse": coarse,
           "version": IMPORTER_VERSION}
    total = sum(len(p.images) for p in parts)
    return materialise(parts, names, dest, key, f"CIFAR batches ({total} images)", force, jobs)


def looks_like_fashion(paths: Sequence[str | os.PathLike]) -> bool:
    """Fashion-MNIST ships under MNIST's file names; its folder name usually gives it away."""
    return any("fashion" in str(Path(p).resolve()).lower() for p in paths)

