"""Turn folders of images (or manifests) into a checked, split manifest.

Why one large module: it is one pipeline (scan -> decode and check -> group duplicates ->
split -> manifest), whose stages pass one run's state (``_Run``) along and are used nowhere
else; each stage is a short section below, in pipeline order.

The decisions a user cannot see in the code, all documented in ``imgcls prepare --help``:

* Layouts: ``SRC/<class>/...`` (nested folders inside a class are allowed, the label
  is the top folder); ``SRC/{train,val,test}/<class>/...`` (pre-split, kept as is;
  ``valid``/``validation`` count as ``val``); or manifest files (merged).
* Hidden entries (dot names) and files without an image extension are ignored and
  counted. Every image is really decoded; unusable files are *rejected* with a
  reason (see :mod:`imgcls.images`).
* Exact duplicates (same sha256) form a group that always lands in one split.
  A group filed under two or more classes is a labelling problem: all its copies
  are rejected with reason ``conflicting-labels``.
* Splits are stratified per class and seeded. The shuffle works on groups ordered
  by content hash with a per-class seed, so the split of a class depends only on
  its images and the seed: renaming files, moving the folder or adding a class
  does not move images between splits.
* Tiny classes: a class always keeps at least one training image; with two images
  it gets one held-out image (test first), with three or more at least one per
  requested held-out split. A class with a single image is train-only.
* ``--max-per-class N`` caps the *training* images per class after the split, so
  val/test stay identical across N (limited-data studies compare on one test set)
  and the N images kept are a subset of those kept for any larger N.

We use our own small routines rather than scikit-learn's splitters because they
must keep duplicate groups together, never fail on one-image classes, and be stable
per class; the routines are a few lines each and tested.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgcls.errors import DataError, UsageProblem
from imgcls.images import IMAGE_EXTENSIONS, ImageRejected, inspect_image, is_image_name

SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
HELD_OUT_PRIORITY = {"test": 0, "val": 1, "train": 2}  # which copy of a straddling duplicate wins
IMPORT_MARKER = ".imgcls-import.json"  # written by imgcls.importers; not counted as ignored
PARALLEL_MIN_FILES = 200  # below this, decoding in-process is faster than starting workers

Size = int | float  # a fraction (float, 0 <= f < 1) or a count (int >= 0)


# ---------------------------------------------------------------------------- options
def parse_size(text: str | float | int) -> Size:
    """``0.15`` -> fraction, ``100`` -> count; raise ValueError with a user-facing reason."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"{text!r} is not a number (use a fraction like 0.15 or a count like 100)") from None
    if math.isnan(value) or math.isinf(value) or value < 0:
        raise ValueError(f"{text!r} must be a fraction in [0, 1) or a whole count >= 1")
    if value < 1:
        return 0 if value == 0 else value
    if value != int(value):
        raise ValueError(f"{text!r} is neither a fraction below 1 nor a whole count")
    return int(value)


def check_sizes(val: Size, test: Size) -> None:
    """Refuse split sizes that leave nothing to train on (fractions summing to 1 or more)."""
    fractions = [s for s in (val, test) if isinstance(s, float)]
    if len(fractions) == 2 and sum(fractions) >= 1:
        raise UsageProblem(f"--val {val} and --test {test} add up to {sum(fractions):g}: nothing is left to train on")


@dataclass
class PrepareOptions:
    val: Size = 0.15
    test: Size = 0.15
    folds: int | None = None
    classes: list[str] | None = None
    top: int | None = None
    min_per_class: int | None = None
    max_per_class: int | None = None
    seed: int = 0
    relative: bool = False
    resplit: bool = False
    dedup: bool = False
    jobs: int | None = None
    exclude: list[str] = field(default_factory=list)  # files listing images to leave out (--exclude)


# ---------------------------------------------------------------------------- results
@dataclass(slots=True)
class Item:
    """One candidate image on its way to becoming a record."""

    path: str  # absolute, symlinks not resolved (what the user sees)
    label: str  # never None: unlabelled records are rejected when read
    split: str | None = None  # given by the layout or an input manifest
    fixed_from: str | None = None  # "folders" or "manifest" when ``split`` was given
    extra: dict[str, Any] = field(default_factory=dict)  # pass-through fields of a manifest record
    origin: str | None = None  # resolved origin path of a derived image
    sha256: str = ""
    width: int = 0
    height: int = 0
    mode: str = ""
    fold: int | None = None
    from_manifest: bool = False


@dataclass
class Reject:
    path: str
    reason: str
    message: str
    label: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out = {"path": self.path, "reason": self.reason, "message": self.message}
        if self.label is not None:
            out["label"] = self.label
        return out


@dataclass
class Stats:
    hidden: int = 0
    non_image: Counter = field(default_factory=Counter)  # extension -> count
    loose: int = 0  # files outside any class folder
    empty_class_folders: list[str] = field(default_factory=list)
    same_file_twice: int = 0
    excluded: int = 0  # images left out by --exclude
    exclude_unmatched: int = 0  # --exclude entries that named no input image
    duplicate_groups: int = 0
    duplicate_copies: int = 0  # extra copies beyond the first of each group
    conflicting_groups: list[list[tuple[str, str]]] = field(default_factory=list)  # [(label, path), ...]
    straddling_groups: int = 0
    dropped_classes: dict[str, str] = field(default_factory=dict)  # class -> why
    capped: int = 0  # training images dropped by --max-per-class
    checked: int = 0
    check_seconds: float = 0.0
    jobs: int = 1
    layouts: list[str] = field(default_factory=list)
    split_named_classes: list[str] = field(default_factory=list)  # warnings about ambiguous layouts

    @property
    def ignored(self) -> int:
        return self.hidden + sum(self.non_image.values()) + self.loose


@dataclass
class PrepareResult:
    header: dict[str, Any]
    records: list[dict[str, Any]]
    rejects: list[Reject]
    stats: Stats
    warnings: list[str]
    classes: list[str]

    def counts(self) -> dict[str, Counter]:
        """class -> Counter(split -> images)."""
        table: dict[str, Counter] = {c: Counter() for c in self.classes}
        for r in self.records:
            table[r["label"]][r["split"]] += 1
        return table


# ---------------------------------------------------------------------------- scanning
def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _is_text(name: str) -> bool:
    """False for names holding undecodable bytes (os.fsdecode's surrogate escapes)."""
    if name.isascii():
        return True
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _Scanner:
    """Walks SRC folders following symlinks, refusing to loop, counting what it skips."""

    def __init__(self, stats: Stats, rejects: list[Reject]):
        self.stats = stats
        self.rejects = rejects

    def entries(self, folder: Path) -> list[os.DirEntry]:
        try:
            with os.scandir(folder) as it:
                return sorted(it, key=lambda e: e.name)
        except PermissionError:
            self.rejects.append(Reject(str(folder), "unreadable", "permission denied (folder)"))
        except OSError as exc:
            self.rejects.append(Reject(str(folder), "unreadable", f"cannot list folder: {exc.strerror or exc}"))
        return []

    @staticmethod
    def is_dir(entry: os.DirEntry) -> bool:
        try:
            return entry.is_dir()  # follows symlinks
        except OSError:
            return False

    def images_under(self, folder: Path, label: str, split: str | None, seen: set | None = None) -> Iterable[Item]:
        """Every image file below ``folder`` (any depth), labelled ``label``."""
        seen = set() if seen is None else seen
        try:
            st = folder.stat()
        except OSError:
            return
        key = (st.st_dev, st.st_ino)
        if key in seen:  # a symlink loop or the same folder linked twice
            return
        seen.add(key)
        for entry in self.entries(folder):
            if _is_hidden(entry.name):
                self.stats.hidden += 1
                continue
            if self.is_dir(entry):
                yield from self.images_under(Path(entry.path), label, split, seen)
                continue
            suffix = os.path.splitext(entry.name)[1].lower()
            if suffix not in IMAGE_EXTENSIONS:
                self.stats.non_image[suffix or "(none)"] += 1
                continue
            path = os.path.abspath(entry.path)
            if not _is_text(path):
                # bytes that are not UTF-8 in the name: a manifest (JSON text) cannot hold it
                shown = os.fsencode(path).decode("utf-8", "backslashreplace")
                self.rejects.append(Reject(shown, "bad-name", "file or folder name is not valid UTF-8; rename it",
                                           label if _is_text(label) else None))
                continue
            yield Item(path=path, label=label, split=split, fixed_from="folders" if split else None)

    def scan_folder(self, src: Path) -> list[Item]:
        entries = self.entries(src)
        visible = []
        for e in entries:
            if _is_hidden(e.name):
                if e.name != IMPORT_MARKER:
                    self.stats.hidden += 1
            else:
                visible.append(e)
        if not visible:
            raise DataError(f"{src}: folder is empty (expected one subfolder of images per class)")
        dirs = [e for e in visible if self.is_dir(e)]
        files = [e for e in visible if not self.is_dir(e)]
        if not dirs:
            n_images = sum(is_image_name(e.name) for e in files)
            hint = f" (found {n_images} image files directly in it)" if n_images else ""
            raise DataError(f"{src}: no class folders: put images in {src}/<class>/{hint}")
        items: list[Item] = []
        self.stats.loose += len(files)
        if all(e.name.lower() in SPLIT_NAMES for e in dirs):
            self.stats.layouts.append("pre-split")
            class_dirs = 0
            for split_dir in dirs:
                split = SPLIT_NAMES[split_dir.name.lower()]
                for e in self.entries(Path(split_dir.path)):
                    if _is_hidden(e.name):
                        self.stats.hidden += 1
                    elif self.is_dir(e):
                        class_dirs += 1
                        items.extend(self._class_folder(Path(e.path), e.name, split))
                    else:
                        self.stats.loose += 1
            if not class_dirs:
                names = "/, ".join(e.name for e in dirs)
                raise DataError(f"{src}: pre-split layout ({names}/) without class folders: "
                                f"put images in {src}/{dirs[0].name}/<class>/")
        else:
            self.stats.layouts.append("class-folders")
            split_named = [e.name for e in dirs if e.name.lower() in SPLIT_NAMES]
            if split_named:
                self.stats.split_named_classes.append(
                    f"{src}: {', '.join(split_named)} treated as class folder(s), because other folders sit "
                    f"beside them (a pre-split layout holds only train/val/test)")
            for e in dirs:
                items.extend(self._class_folder(Path(e.path), e.name, None))
        return items

    def _class_folder(self, folder: Path, label: str, split: str | None) -> list[Item]:
        found = list(self.images_under(folder, label, split))
        if not found:
            self.stats.empty_class_folders.append(str(folder))
        return found


def _scan_manifest(source: str, stats: Stats, rejects: list[Reject]) -> tuple[list[Item], list[str]]:
    """Items from a manifest (file or '-') and its header's classes."""
    from imgcls.manifest import ManifestReader

    reader = ManifestReader(source)
    items: list[Item] = []
    for record in reader:
        path = os.path.abspath(reader.resolve(record))
        label = record.get("label")
        if label is None:
            rejects.append(Reject(path, "no-label", "manifest record has no label"))
            continue
        extra = {k: v for k, v in record.items()
                 if k not in ("path", "label", "split", "fold", "sha256", "width", "height", "mode")}
        origin = record.get("origin")
        if isinstance(origin, str) and origin:
            origin = os.path.abspath(reader.resolve({"path": origin}))
        else:
            origin = None
        split = record.get("split")
        item = Item(path=path, label=label, split=split, fixed_from="manifest" if split else None,
                    extra=extra, origin=origin, from_manifest=True)
        if isinstance(record.get("fold"), int):
            item.fold = record["fold"]
        items.append(item)
    stats.layouts.append("manifest")
    return items, list(reader.classes or [])


def _import_classes(folder: Path) -> list[str]:
    """The label order of a folder written by imgcls.importers (class index = the dataset's label)."""
    import json

    marker = folder / IMPORT_MARKER
    try:
        classes = json.loads(marker.read_text(encoding="utf-8")).get("classes")
    except (OSError, ValueError, AttributeError):
        return []
    return classes if isinstance(classes, list) and all(isinstance(c, str) for c in classes) else []


def read_exclude_list(source: str) -> set[str]:
    """Absolute paths named by an --exclude file: a manifest (records' "path", resolved against its
    root), or plain paths one per line (relative to the working directory). The images are not touched."""
    from imgcls.manifest import ManifestReader

    path = Path(source)
    if not path.is_file():
        raise DataError(f"--exclude {source}: no such file" if not path.exists() else
                        f"--exclude {source}: not a file (a manifest or a list of paths, one per line)")
    try:
        with open(path, encoding="utf-8") as fh:
            head = fh.read(4096).lstrip()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"--exclude {source}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    if head.startswith("{"):
        reader = ManifestReader(path)
        return {os.path.abspath(reader.resolve(r)) for r in reader}
    with open(path, encoding="utf-8") as fh:
        return {os.path.abspath(line.rstrip("\r\n")) for line in fh if line.strip()}


# ---------------------------------------------------------------------------- checking
def _check_one(path: str) -> tuple:
    """Decode and hash one file (runs in worker processes)."""
    try:
        info = inspect_image(path)
    except ImageRejected as exc:
        return ("rejected", exc.reason, exc.detail)
    except MemoryError:
        return ("rejected", "decompression-bomb", "out of memory while decoding")
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad file, not a crash
        return ("rejected", "corrupt", f"cannot decode: {type(exc).__name__}: {exc}")
    return ("ok", info.width, info.height, info.mode, info.sha256)


def default_jobs() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def check_files(paths: Sequence[str], jobs: int | None = None,
                progress: Callable[[int, int], None] | None = None) -> tuple[list[tuple], int]:
    """Decode every file, in parallel over ``jobs`` processes for larger inputs.

    Returns one result tuple per path (in order) and the number of processes used.
    """
    jobs = jobs or default_jobs()
    total = len(paths)
    results: list[tuple] = []
    if jobs <= 1 or total < PARALLEL_MIN_FILES:
        for i, p in enumerate(paths, 1):
            results.append(_check_one(p))
            if progress and (i % 100 == 0 or i == total):
                progress(i, total)
        return results, 1
    from imgcls.signals import worker_pool

    jobs = min(jobs, total)
    chunksize = max(1, min(256, total // (jobs * 8)))
    with worker_pool(jobs) as pool:  # workers die with this process, and stop at once on an error or signal
        for i, result in enumerate(pool.map(_check_one, paths, chunksize=chunksize), 1):
            results.append(result)
            if progress and (i % 100 == 0 or i == total):
                progress(i, total)
    return results, jobs


# ---------------------------------------------------------------------------- grouping
class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _groups(items: list[Item]) -> list[list[int]]:
    """Indices grouped by identical content, and derived images joined to their origin."""
    uf = _UnionFind(len(items))
    by_hash: dict[str, int] = {}
    by_path: dict[str, int] = {}
    for i, it in enumerate(items):
        by_path.setdefault(it.path, i)
        first = by_hash.setdefault(it.sha256, i)
        if first != i:
            uf.union(first, i)
    for i, it in enumerate(items):
        if it.origin and it.origin in by_path:
            uf.union(i, by_path[it.origin])
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(items)):
        groups[uf.find(i)].append(i)
    return list(groups.values())


def _group_key(items: list[Item], group: list[int]) -> str:
    """A content-based sort key: splits must not depend on file names or locations."""
    return min(items[i].sha256 for i in group)


def _class_rng(seed: int, purpose: str, label: str) -> random.Random:
    # str seeds are hashed with SHA-512 by random.Random: stable across runs and platforms.
    return random.Random(f"imgcls:{seed}:{purpose}:{label}")


# ---------------------------------------------------------------------------- splitting
def _targets(sizes_by_class: dict[str, int], size: Size) -> dict[str, int]:
    """Held-out images per class for one split: fraction per class, or a total count shared proportionally."""
    if not size:
        return {c: 0 for c in sizes_by_class}
    if isinstance(size, float):
        return {c: int(math.floor(size * n + 0.5)) for c, n in sizes_by_class.items()}
    total = sum(sizes_by_class.values())
    quotas = {c: size * n / total for c, n in sizes_by_class.items()} if total else {}
    out = {c: int(math.floor(q)) for c, q in quotas.items()}
    left = min(size, total) - sum(out.values())
    for c in sorted(quotas, key=lambda c: (-(quotas[c] - out[c]), c))[:max(0, left)]:
        out[c] += 1
    return out


def _fits(count: int, target: int, size: int) -> bool:
    """A split still needs images and a group of ``size`` would not overshoot by more than half of it."""
    return count < target and count + size - target <= size // 2


def _split_pool(items: list[Item], groups: list[list[int]], val: Size, test: Size, seed: int) -> None:
    """Assign train/val/test to ``groups`` (single-label), stratified per class, in place."""
    by_class: dict[str, list[list[int]]] = defaultdict(list)
    for g in groups:
        by_class[items[g[0]].label].append(g)
    sizes = {c: sum(len(g) for g in gs) for c, gs in by_class.items()}
    test_t, val_t = _targets(sizes, test), _targets(sizes, val)
    for label in sorted(by_class):
        n = sizes[label]
        t, v = test_t[label], val_t[label]
        if test and t == 0 and n >= 2:
            t = 1
        if val and v == 0 and n >= (3 if test else 2):
            v = 1
        while t + v > n - 1 and (t or v):  # always keep a training image
            if v:
                v -= 1
            else:
                t -= 1
        class_groups = sorted(by_class[label], key=lambda g: _group_key(items, g))
        _class_rng(seed, "split", label).shuffle(class_groups)
        counts: Counter = Counter()
        for k, g in enumerate(class_groups):
            last = k == len(class_groups) - 1
            if last and counts["train"] == 0:
                split = "train"
            elif _fits(counts["test"], t, len(g)):
                split = "test"
            elif _fits(counts["val"], v, len(g)):
                split = "val"
            else:
                split = "train"
            counts[split] += len(g)
            for i in g:
                items[i].split = split


def _assign_folds(items: list[Item], groups: list[list[int]], k: int, seed: int) -> None:
    """Stratified, group-aware k-fold assignment: each group goes to the fold with fewest of its class."""
    by_class: dict[str, list[list[int]]] = defaultdict(list)
    for g in groups:
        by_class[items[g[0]].label].append(g)
    for label in sorted(by_class):
        class_groups = sorted(by_class[label], key=lambda g: _group_key(items, g))
        rng = _class_rng(seed, "folds", label)
        rng.shuffle(class_groups)
        start = rng.randrange(k)  # small classes do not all crowd into fold 0
        fold_class = [0] * k
        for g in class_groups:
            f = min(range(k), key=lambda j: (fold_class[j], (j - start) % k))
            fold_class[f] += len(g)
            for i in g:
                items[i].fold = f


# ---------------------------------------------------------------------------- the pipeline
def _suggest(name: str, choices: Iterable[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _common_root(paths: list[str]) -> str:
    if not paths:
        return os.path.abspath(".")
    try:
        return os.path.commonpath(paths)
    except ValueError:  # different drives on Windows
        return os.path.abspath(".")


def prepare(sources: Sequence[str | os.PathLike], options: PrepareOptions | None = None,
            progress: Callable[[int, int], None] | None = None, facts: dict[str, Any] | None = None) -> PrepareResult:
    """Scan, check, deduplicate, filter and split ``sources``; nothing is printed or written.

    ``sources`` are folders (class-folder or pre-split layout) or manifest files
    (``"-"`` for stdin). Raises DataError / UsageProblem for unusable input.
    """
    return _Run(list(sources), options or PrepareOptions()).run(progress, facts or {})


class _Run:
    """One prepare run, step by step; each step narrows or annotates ``self.items``."""

    def __init__(self, sources: list[str | os.PathLike], opts: PrepareOptions):
        check_sizes(opts.val, opts.test)
        if not sources:
            raise UsageProblem("no SRC given: pass a folder with one subfolder per class, or a manifest")
        self.sources = [str(s) for s in sources]
        self.opts = opts
        self.stats = Stats()
        self.rejects: list[Reject] = []
        self.warnings: list[str] = []
        self.items: list[Item] = []
        self.header_classes: list[str] = []
        self.roots: list[str] = []

    def run(self, progress: Callable[[int, int], None] | None, facts: dict[str, Any]) -> PrepareResult:
        self.scan()
        self.select_classes()
        self.check(progress)
        self.resolve_duplicates()
        self.filter_classes()
        self.split()
        self.cap_train()
        self.assign_folds()
        classes = self.class_order()
        self.collect_warnings(classes)
        return self.result(classes, facts)

    # -- steps ---------------------------------------------------------------------
    def scan(self) -> None:
        scanner = _Scanner(self.stats, self.rejects)
        for src in self.sources:
            path = Path(src)
            if src != "-" and path.is_dir():
                self.items += scanner.scan_folder(path)
                self.roots.append(os.path.abspath(path))
                self.header_classes += [c for c in _import_classes(path) if c not in self.header_classes]
                continue
            if src != "-" and not path.exists():
                if path.is_symlink():
                    raise DataError(f"{src}: symbolic link points to a missing folder")
                raise DataError(f"{src}: no such file or folder")
            if src != "-" and path.suffix.lower() in IMAGE_EXTENSIONS:
                raise DataError(f"{src}: is an image; pass the folder that holds the class folders")
            found, classes = _scan_manifest(src, self.stats, self.rejects)
            self.items += found
            self.header_classes += [c for c in classes if c not in self.header_classes]
        # The same file named twice (overlapping SRCs, merged manifests): keep the first.
        unique: dict[str, Item] = {}
        for it in self.items:
            if it.path in unique:
                self.stats.same_file_twice += 1
            else:
                unique[it.path] = it
        self.items = list(unique.values())
        self.apply_exclude()
        if not self.items and not self.rejects and not self.stats.excluded:
            raise DataError(f"{', '.join(self.sources)}: no images found: no image files in the folders, "
                            f"no records in the manifests (image extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")

    def apply_exclude(self) -> None:
        """--exclude: leave out the images the files list (by path), before anything is decoded."""
        if not self.opts.exclude:
            return
        listed: set[str] = set()
        for source in self.opts.exclude:
            listed |= read_exclude_list(source)
        kept = [it for it in self.items if it.path not in listed]
        self.stats.excluded = len(self.items) - len(kept)
        self.stats.exclude_unmatched = len(listed - {it.path for it in self.items})
        self.items = kept

    def select_classes(self) -> None:
        """--classes, before decoding: no point checking images the user does not want."""
        if not self.opts.classes:
            return
        labels = sorted({it.label for it in self.items if it.label is not None})
        for c in self.opts.classes:
            if c not in labels:
                shown = ", ".join(labels[:12]) + (" ..." if len(labels) > 12 else "")
                raise UsageProblem(f"--classes: no class {c!r} in the input{_suggest(c, labels)}; classes: {shown}")
        wanted = set(self.opts.classes)
        self.items = [it for it in self.items if it.label in wanted]

    def check(self, progress: Callable[[int, int], None] | None) -> None:
        start = time.perf_counter()
        results, self.stats.jobs = check_files([it.path for it in self.items], self.opts.jobs, progress)
        self.stats.check_seconds = time.perf_counter() - start
        self.stats.checked = len(self.items)
        good: list[Item] = []
        for it, res in zip(self.items, results):
            if res[0] == "ok":
                it.width, it.height, it.mode, it.sha256 = res[1], res[2], res[3], res[4]
                good.append(it)
            else:
                self.rejects.append(Reject(it.path, res[1], res[2], it.label))
        self.items = good

    def resolve_duplicates(self) -> None:
        """Reject conflicting-label groups; keep each group in one split; --dedup."""
        items, opts, stats = self.items, self.opts, self.stats
        if opts.resplit:
            for it in items:
                it.split, it.fixed_from, it.fold = None, None, None
        dropped: set[int] = set()
        for g in _groups(items):
            labels = {items[i].label for i in g}
            if len(labels) > 1:
                members = sorted((items[i].label, items[i].path) for i in g)
                stats.conflicting_groups.append(members)
                for i in g:
                    others = ", ".join(f"{p} ({lab})" for lab, p in members if p != items[i].path)
                    self.rejects.append(Reject(items[i].path, "conflicting-labels",
                                               f"same content filed under another class: {others}", items[i].label))
                    dropped.add(i)
                continue
            copies = Counter(items[i].sha256 for i in g)
            stats.duplicate_groups += sum(1 for n in copies.values() if n > 1)
            stats.duplicate_copies += sum(n - 1 for n in copies.values())
            hinted = [i for i in g if items[i].split]
            given = {split for i in hinted if (split := items[i].split)}
            if len(given) > 1:
                stats.straddling_groups += 1
                winner = min(given, key=lambda s: HELD_OUT_PRIORITY[s])
                keeper = sorted(items[i].path for i in g if items[i].split == winner)[0]
                for i in g:
                    if items[i].split and items[i].split != winner:
                        self.rejects.append(Reject(items[i].path, "duplicate-across-splits",
                                                   f"same content as {keeper} ({winner}); kept there only",
                                                   items[i].label))
                        dropped.add(i)
            if given:
                source = next(items[i] for i in hinted if items[i].split == min(
                    given, key=lambda s: HELD_OUT_PRIORITY[s]))
                for i in g:
                    if not items[i].split:
                        items[i].split, items[i].fixed_from = source.split, source.fixed_from
            if opts.dedup:
                remaining = sorted((i for i in g if i not in dropped), key=lambda i: items[i].path)
                first_of: dict[str, int] = {}
                for i in remaining:
                    keep = first_of.setdefault(items[i].sha256, i)
                    if keep != i:
                        self.rejects.append(Reject(items[i].path, "duplicate",
                                                   f"same content as {items[keep].path}; --dedup keeps one copy",
                                                   items[i].label))
                        dropped.add(i)
        self.items = [it for i, it in enumerate(items) if i not in dropped]

    def filter_classes(self) -> None:
        """--min-per-class, then --top, on the images that survived checking."""
        opts, stats = self.opts, self.stats
        per_class = Counter(it.label for it in self.items)
        if opts.min_per_class:
            small = {c: n for c, n in per_class.items() if n < opts.min_per_class}
            if small and len(small) == len(per_class):
                largest = max(per_class.items(), key=lambda kv: (kv[1], kv[0]))
                raise DataError(f"no class has at least --min-per-class {opts.min_per_class} usable images "
                                f"(largest: {largest[0]!r} with {largest[1]})")
            for c, n in small.items():
                stats.dropped_classes[c] = f"{n} images < --min-per-class {opts.min_per_class}"
                del per_class[c]
        if opts.top and opts.top < len(per_class):
            ranked = sorted(per_class.items(), key=lambda kv: (-kv[1], kv[0]))
            for c, n in ranked[opts.top:]:
                stats.dropped_classes[c] = f"{n} images, not among the --top {opts.top}"
            per_class = Counter(dict(ranked[:opts.top]))
        self.items = [it for it in self.items if it.label in per_class]
        if not self.items:
            raise DataError(f"{', '.join(self.sources)}: no usable images ({len(self.rejects)} rejected)")

    def split(self) -> None:
        items, opts = self.items, self.opts
        total = len(items)
        for name, size in (("--val", opts.val), ("--test", opts.test)):
            if isinstance(size, int) and size >= total:
                raise DataError(f"{name} {size} asks for at least as many images as there are ({total})")
        if isinstance(opts.val, int) and isinstance(opts.test, int) and opts.val + opts.test >= total:
            raise DataError(f"--val {opts.val} plus --test {opts.test} leave no training images out of {total}")
        groups = _groups(items)
        free = [g for g in groups if not items[g[0]].split]
        from_folders = [g for g in groups if items[g[0]].split and items[g[0]].fixed_from == "folders"]
        if free:
            _split_pool(items, free, opts.val, opts.test, opts.seed)
        # A pre-split folder layout that lacks val (or test) gets it drawn from its train part.
        present = {items[g[0]].split for g in from_folders}
        carve = {"val": bool(opts.val) and "val" not in present, "test": bool(opts.test) and "test" not in present}
        if from_folders and any(carve.values()):
            train_groups = [g for g in from_folders if items[g[0]].split == "train"]
            _split_pool(items, train_groups, opts.val if carve["val"] else 0, opts.test if carve["test"] else 0,
                        opts.seed)
            self.stats.layouts.append(f"{' and '.join(s for s, c in carve.items() if c)} drawn from train")

    def cap_train(self) -> None:
        """--max-per-class: at most N training images per class, nested across N."""
        n = self.opts.max_per_class
        if not n:
            return
        keep: set[int] = set()
        train_by_class: dict[str, list[int]] = defaultdict(list)
        for i, it in enumerate(self.items):
            if it.split == "train":
                train_by_class[it.label].append(i)
            else:
                keep.add(i)
        for label, idx in train_by_class.items():
            idx.sort(key=lambda i: (self.items[i].sha256, self.items[i].path))
            _class_rng(self.opts.seed, "cap", label).shuffle(idx)
            keep.update(idx[:n])
            self.stats.capped += max(0, len(idx) - n)
        self.items = [it for i, it in enumerate(self.items) if i in keep]

    def assign_folds(self) -> None:
        k = self.opts.folds
        if not k:
            return
        for it in self.items:
            it.fold = None
        pool = [it for it in self.items if it.split in ("train", "val")]
        _assign_folds(pool, _groups(pool), k, self.opts.seed)
        small = sorted(c for c, n in Counter(it.label for it in pool).items() if n < k)
        if small:
            self.warnings.append(f"{len(small)} class(es) have fewer train+val images than --folds {k} "
                                 f"and are missing from some folds: {', '.join(small[:5])}")

    def class_order(self) -> list[str]:
        """--classes order if given; else the order of input manifests' headers and of imported
        datasets (their own label order), then sorted names."""
        present = {it.label for it in self.items}
        if self.opts.classes:
            return [c for c in self.opts.classes if c in present]
        classes = [c for c in self.header_classes if c in present]
        return classes + sorted(present - set(classes))

    def collect_warnings(self, classes: list[str]) -> None:
        """What the user will run into later, said now."""
        if len(classes) == 1:
            self.warnings.append(f"only one class ({classes[0]!r}): training needs at least two")
        for split, size in (("val", self.opts.val), ("test", self.opts.test)):
            in_split = {it.label for it in self.items if it.split == split}
            missing = [c for c in classes if c not in in_split]
            if size and in_split and missing:
                self.warnings.append(f"{len(missing)} class(es) too small to appear in {split}: "
                                     f"{', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
        self.warnings += self.stats.split_named_classes
        for folder in self.stats.empty_class_folders:
            self.warnings.append(f"{folder}: class folder holds no image files")

    def result(self, classes: list[str], facts: dict[str, Any]) -> PrepareResult:
        from imgcls.manifest import make_header

        opts = self.opts
        # root: the SRC folder(s), widened to hold images named by input manifests.
        root = _common_root(self.roots + sorted({os.path.dirname(it.path) for it in self.items if it.from_manifest}))
        order = {c: k for k, c in enumerate(classes)}
        split_order = {"train": 0, "val": 1, "test": 2}
        self.items.sort(key=lambda it: (order[it.label], split_order[it.split], it.path))  # type: ignore[index]
        records = []
        for it in self.items:
            rec: dict[str, Any] = {"path": os.path.relpath(it.path, root) if opts.relative else it.path,
                                   "label": it.label, "split": it.split}
            if it.fold is not None:
                rec["fold"] = it.fold
            rec.update(sha256=it.sha256, width=it.width, height=it.height, mode=it.mode)
            rec.update(it.extra)
            records.append(rec)
        split_counts = Counter(r["split"] for r in records)
        header = make_header(
            classes, root=root, seed=opts.seed, val=opts.val, test=opts.test, folds=opts.folds,
            layout=" + ".join(dict.fromkeys(self.stats.layouts)),
            counts={s: split_counts[s] for s in ("train", "val", "test")},
            max_per_class=opts.max_per_class, **facts,
        )
        return PrepareResult(header=header, records=records, rejects=self.rejects, stats=self.stats,
                             warnings=self.warnings, classes=classes)


def imbalance_ratio(result: PrepareResult) -> float:
    """Images in the largest class over images in the smallest."""
    per_class = Counter(r["label"] for r in result.records)
    if not per_class:
        return 1.0
    return max(per_class.values()) / min(per_class.values())
