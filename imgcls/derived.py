"""Writing derived images (augmented copies, perturbed test sets): names, seeds, files, workers.

Shared by ``imgcls augment`` and ``imgcls perturb`` (Pillow and NumPy only, never torch).

* Randomness comes from :func:`derive_rng`: a generator seeded by ``--seed`` and a record's
  identity (path, content hash, occurrence) plus a copy/perturbation tag, so an image's
  result does not depend on worker scheduling, on ``--jobs`` or on the other records.
* File names are made from that identity hash and fixed words only (class *indices*,
  family names), never from a label or a path, so nothing can escape ``--out``.
* Images are encoded in memory, hashed and written into a hidden staging folder inside
  ``--out`` (``.partial-<pid>-<random>``); only when every image is written, and the
  manifest naming them has been written to stdout, are the staging folder's subfolders
  renamed into place (one rename per class or family folder, or per file when merging
  into an existing folder with ``--force``). So the output appears complete or not at
  all: a failed, interrupted (Ctrl-C, SIGTERM, SIGHUP) or killed run, or one whose final
  stdout write fails (a full disk, a closed pipe), leaves nothing, and files already in
  ``--out`` are never touched by a failed run. The staging folder of a run killed with
  ``kill -9`` (its process id no longer runs) is removed by the next run on that folder;
  one of a run still going is left alone, and the new run is refused. This also costs
  one file creation per image instead of a create plus a rename, which on ext4 is most
  of the time spent per small image.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.errors import DataError, ImgclsError, OutputNotEmpty, UsageProblem
from imgcls.fsutil import pid_alive

FORMATS = {"png": ".png", "jpg": ".jpg"}

# Output names: folders and files of letters, digits, '_' and '-', one dot for the extension.
SAFE_NAME = re.compile(r"(?:[A-Za-z0-9_][A-Za-z0-9_-]*/)*[A-Za-z0-9_][A-Za-z0-9_-]*\.[a-z]{3,4}")

# Below this many output images a run stays in-process: starting workers costs more.
IN_PROCESS_BELOW = 1000

# The staging folder of a run: .partial-<pid>-<8 hex digits>
PARTIAL = re.compile(r"\.partial-(?P<pid>\d+)-[0-9a-f]{8}")


def usable_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


# -- identity and randomness ------------------------------------------------------------
def record_keys(records: Sequence[dict]) -> list[str]:
    """A 16-hex identity per record: hash of path, content hash and occurrence number.

    The occurrence number keeps two identical records (same path listed twice) apart, so
    their outputs get different names and different random draws.
    """
    seen: Counter[str] = Counter()
    keys = []
    for record in records:
        base = f"{record['path']}\0{record.get('sha256') or ''}"
        n = seen[base]
        seen[base] += 1
        keys.append(hashlib.sha256(f"{base}\0{n}".encode()).hexdigest()[:16])
    return keys


def derive_rng(seed: int, key: str, *tags: object) -> np.random.Generator:
    """An independent generator for (seed, record identity, tags): order-free, reproducible."""
    digest = hashlib.sha256("\0".join([key, *map(str, tags)]).encode()).digest()
    words = [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)]
    seed = int(seed)
    return np.random.default_rng([seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF, *words])


# -- colours ------------------------------------------------------------------------------
def border_colour(img) -> int | tuple[int, ...]:
    """The median colour of the image's outermost pixels: its background, for most data sets."""
    a = np.asarray(img)
    if a.ndim == 2:
        a = a[:, :, None]
    frame = np.concatenate([a[0], a[-1], a[1:-1, 0], a[1:-1, -1]], axis=0)
    med = np.median(frame, axis=0).round().astype(int)
    return int(med[0]) if len(med) == 1 else tuple(int(v) for v in med)


def fill_colour(img, fill: str) -> int | tuple[int, ...]:
    """The colour uncovered areas get: ``black``, ``white`` or ``border`` (the background)."""
    bands = len(img.getbands())
    if fill == "border":
        return border_colour(img)
    value = 0 if fill == "black" else 255
    return value if bands == 1 else (value,) * bands


def normalise_mode(img):
    """Work in L (grey) or RGB only: palette, alpha, 16-bit and bilevel images are converted."""
    from imgcls.images import channels_of_mode, to_mode

    if img.mode in ("L", "RGB"):
        return img
    return to_mode(img, channels_of_mode(img.mode))


# -- files --------------------------------------------------------------------------------
def encode(img, fmt: str) -> bytes:
    """PNG (lossless, fast compression level 1) or JPEG (quality 95) bytes."""
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, "PNG", compress_level=1)
    elif fmt == "jpg":
        img.save(buf, "JPEG", quality=95)
    else:  # pragma: no cover - guarded by click.Choice
        raise UsageProblem(f"unknown output format {fmt!r} (png or jpg)")
    return buf.getvalue()


def write_file(path: str | os.PathLike, data: bytes) -> None:
    """Write a file in a staging folder (no temporary name needed: nobody sees it yet)."""
    with open(path, "wb") as fh:
        fh.write(data)


def save_derived(img, path: str, fmt: str) -> dict[str, Any]:
    """Encode and write one derived image; return the manifest fields that change (not path)."""
    data = encode(img, fmt)
    write_file(path, data)
    return {
        "sha256": hashlib.sha256(data).hexdigest(),
        "width": img.width,
        "height": img.height,
        "mode": img.mode,
    }


class OutputDir:
    """The ``--out`` folder of one run, written through a hidden staging folder.

    Refuses a non-empty folder without ``force``. :meth:`staged` names where a worker
    writes, :meth:`file` where the file will be after :meth:`commit`; :meth:`abort`
    removes the staging folder (and ``--out`` itself when this run created it).
    """

    def __init__(self, path: str | os.PathLike, force: bool = False):
        self.path = Path(path).expanduser().resolve()
        self._root = str(self.path)
        self.created = False
        if self.path.exists() and not self.path.is_dir():
            raise DataError(f"--out {path}: exists and is not a folder")
        if self.path.is_dir():
            try:
                entries = list(self.path.iterdir())
            except OSError as exc:
                raise DataError(f"--out {path}: cannot read folder: {exc.strerror or exc}") from None
            kept = []
            for entry in entries:
                match = PARTIAL.fullmatch(entry.name)
                if match is None:
                    kept.append(entry)
                elif pid_alive(int(match["pid"])):
                    raise ImgclsError(f"--out {path}: another imgcls process (pid {match['pid']}) is writing into this "
                                      f"folder right now ({entry.name}); wait for it to finish or choose another folder")
                else:  # left by a run that was killed (kill -9, power loss): ours to remove
                    import shutil

                    shutil.rmtree(entry, ignore_errors=True)
            if kept and not force:
                raise OutputNotEmpty(
                    f"--out {path}: folder is not empty"
                    "; choose a new folder or pass --force to write into it (files with the same names are replaced)"
                )
        self.staging = self.path / f".partial-{os.getpid()}-{os.urandom(4).hex()}"
        self._staging = str(self.staging)

    def _check(self, relative: str) -> str:
        # Names are built from hex digests and fixed words; this is a belt-and-braces check.
        if not SAFE_NAME.fullmatch(relative):
            raise ImgclsError(f"internal error: unsafe output name {relative!r}")
        return relative

    def file(self, relative: str) -> str:
        """Where a file will be once the run succeeds (the path the manifest records)."""
        return os.path.join(self._root, self._check(relative))

    def staged(self, relative: str) -> str:
        """Where a worker writes the file during the run."""
        return os.path.join(self._staging, self._check(relative))

    def make_dirs(self, relative: Iterable[str]) -> None:
        """Create --out (remembering if this run did), the staging folder and its subfolders."""
        try:
            if not self.path.exists():
                self.path.mkdir(parents=True)
                self.created = True
            self.staging.mkdir()
            for rel in sorted(set(relative)):
                (self.staging / rel).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self.abort()
            raise DataError(f"--out {self.path}: cannot create folders: {exc.strerror or exc}") from None

    def commit(self) -> None:
        """Move everything staged into place: whole folders where possible, else file by file."""
        try:
            _merge(self.staging, self.path)
            self.staging.rmdir()
        except OSError as exc:
            raise DataError(
                f"--out {self.path}: cannot move the finished images into place: {exc.strerror or exc} "
                f"(they are in {self.staging})"
            ) from None

    def abort(self) -> None:
        """Forget the run: remove the staging folder, and --out if this run created it and it is empty."""
        import shutil

        shutil.rmtree(self.staging, ignore_errors=True)
        if self.created:
            try:
                self.path.rmdir()
            except OSError:
                pass


def _merge(src: Path, dest: Path) -> None:
    for entry in os.scandir(src):
        target = dest / entry.name
        if entry.is_dir(follow_symlinks=False):
            if target.is_dir() and not target.is_symlink():
                _merge(Path(entry.path), target)
                os.rmdir(entry.path)
            else:
                os.replace(entry.path, target)
        else:
            os.replace(entry.path, target)


# -- workers ------------------------------------------------------------------------------
def run_tasks(
    worker: Callable[[Any], Any],
    tasks: Sequence[Any],
    jobs: int,
    weight: int = 1,
    in_process_below: int = IN_PROCESS_BELOW,
) -> Iterator[Any]:
    """Results of ``worker(task)`` in task order, in worker processes when it pays.

    ``weight`` is the number of output images per task (to decide whether workers pay).
    Breaking out of the iteration cancels the tasks not yet started.
    """
    jobs = usable_cpus() if jobs <= 0 else jobs
    if jobs == 1 or len(tasks) < 2 or len(tasks) * weight < in_process_below:
        for task in tasks:
            yield worker(task)
        return
    from imgcls.signals import worker_pool

    jobs = min(jobs, len(tasks))
    chunksize = max(1, min(64, len(tasks) // (jobs * 8) or 1))
    # Workers die with this process (kill -9 included); an error, a signal or a consumer that
    # stops early terminates them before anything staged is removed.
    with worker_pool(jobs) as executor:
        yield from executor.map(worker, tasks, chunksize=chunksize)


def collect_results(output: OutputDir, stream: Any, indices: Sequence[int], what: str,
                    place: Callable[[int, int, dict[str, Any]], str],
                    progress: Callable[[int], None] | None = None,
                    commit: bool = True) -> dict[int, list[dict[str, Any]]]:
    """Gather the workers' results in input order and commit the output: all of it, or none.

    ``place(i, j, info)`` is the final relative name of the j-th image written for input i.
    A worker's error (a dict), a dead worker or an interruption removes everything staged.
    ``commit=False`` leaves the staged output to the caller (:func:`finish_output`).
    """
    from concurrent.futures.process import BrokenProcessPool

    from imgcls.errors import DataError

    results: dict[int, list[dict[str, Any]]] = {}
    try:
        for i, result in zip(indices, stream):
            if isinstance(result, dict):
                raise DataError(f"{result['error']} (no {what} images were kept)")
            for j, info in enumerate(result):
                info["path"] = output.file(place(i, j, info))
            results[i] = result
            if progress:
                progress(len(result))
    except BrokenProcessPool:
        stream.close()
        output.abort()
        raise DataError(f"a worker process died (out of memory?); no {what} images were kept; try --jobs 1") from None
    except BaseException:
        stream.close()  # stop the workers (queued work dropped) before removing files
        output.abort()
        raise
    if commit:
        output.commit()
    return results


def finish_output(output: OutputDir, emit: Callable[[], None] | None) -> None:
    """Write the manifest (``emit``), then move the staged images into place; any failure removes them.

    The manifest comes first so that a failed final write (a full disk behind stdout, a
    closed pipe, a name that cannot be encoded) leaves no images behind either; readers of
    a pipe see end-of-file only after the images are in place, when this process exits.
    """
    from imgcls import signals

    try:
        if emit is not None:
            with signals.pipe_errors():  # a closed stdout raises here instead of killing the process
                emit()
    except BaseException:
        output.abort()
        raise
    output.commit()


def parse_int_list(text: str, option: str, low: int, high: int) -> list[int]:
    """``"3"``, ``"1-5"``, ``"1,3,5"``, ``"1,3-5"`` -> sorted unique ints in [low, high]."""
    values: set[int] = set()
    items = [t.strip() for t in str(text).split(",")]
    for item in items:
        if not item:
            raise UsageProblem(f"{option} {text!r}: empty item (two commas?); e.g. {low}-{high} or 1,3,5")
        try:
            if "-" in item:
                a, b = item.split("-", 1)
                lo, hi = int(a), int(b)
                if lo > hi:
                    raise UsageProblem(f"{option} {text!r}: range {item!r} runs backwards")
                rng = range(lo, hi + 1)
            else:
                rng = range(int(item), int(item) + 1)
        except ValueError:
            raise UsageProblem(
                f"{option} {text!r}: {item!r} is not a level or a range; e.g. 3, {low}-{high} or 1,3,5"
            ) from None
        for v in rng:
            if not low <= v <= high:
                raise UsageProblem(f"{option} {text!r}: level {v} is outside {low}-{high}")
            values.add(v)
    return sorted(values)


def suggest(name: str, known: Iterable[str]) -> str:
    """' (did you mean x?)' when a close name exists, else ''."""
    import difflib

    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""
