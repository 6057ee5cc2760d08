"""Manifest format v1: the JSON Lines stream every imgcls command reads and writes.

A manifest is an optional header object followed by one object per image::

    {"format": "imgcls-manifest", "version": "1.0", "classes": ["cat", "dog"], "root": "/data/pets", ...}
    {"path": "/data/pets/cat/1.png", "label": "cat", "split": "train", "sha256": "...", "width": 32, "height": 32}

Design decisions (specified in imgcls-manifest(5)):

* The header is recognised by ``"format": "imgcls-manifest"`` and may only be the
  first object. Its ``classes`` order defines class indices. Commands extend the
  header (``train`` adds ``model``) instead of inventing side channels.
* A manifest without a header is valid (``jq 'select(.split=="test")'`` drops it):
  classes are then the sorted set of labels and relative paths resolve against the
  manifest file's folder (the working directory for stdin). ``prepare`` writes
  absolute paths by default so filtered streams stay usable.
* Fields a command does not know are passed through untouched.
* Readers stream line by line in constant memory; every error reads ``FILE:LINE: message``.
* A newer *major* version is refused; a newer minor version is read (unknown fields are kept).
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, TextIO

from imgcls.errors import ManifestError

FORMAT = "imgcls-manifest"
VERSION = "1.0"
MAJOR = 1
SPLITS = ("train", "val", "test")

# Record fields with a defined meaning; anything else is carried along unchanged.
RECORD_FIELDS = (
    "path", "label", "split", "fold", "sha256", "width", "height", "mode",
    "origin", "transform", "perturbation", "severity",
)

NO_HEADER_HINT = (
    "the manifest has no header (was it filtered with jq?): classes are taken from the labels "
    "in sorted order; keep the header with jq -c 'select(.format or .split==\"test\")'"
)

Record = dict[str, Any]
Header = dict[str, Any]


class _NotJson(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NotJson(f"{name} is not JSON (use null)")


def _finite_float(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise _NotJson(f"{text} is out of range for a JSON number")
    return value


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _lone_surrogate_field(obj: Any, key: str | None = None) -> str | None:
    """The first field (top-level key) whose value or name is not valid Unicode, or None."""
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError:
            return key or "a value"
        return None
    if isinstance(obj, dict):
        for k, v in obj.items():
            found = _lone_surrogate_field(k, key or k) or _lone_surrogate_field(v, key or k)
            if found:
                return found
    elif isinstance(obj, list):
        for v in obj:
            found = _lone_surrogate_field(v, key)
            if found:
                return found
    return None


def parse_line(text: str, where: str) -> Any:
    """One manifest line as a JSON value; anything a strict JSON reader refuses is a ManifestError naming ``where``.

    Refused: invalid JSON; NaN, Infinity and numbers out of range (not JSON, and they
    would be written back as non-standard JSON); nesting deeper than Python can follow;
    strings with lone surrogates (``"\\ud800"``: not Unicode, cannot be written as UTF-8).
    """
    try:
        obj = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except _NotJson as exc:
        raise ManifestError(f"{where}: not valid JSON ({exc})") from None
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{where}: not valid JSON ({exc.msg}, column {exc.colno})") from None
    except RecursionError:
        raise ManifestError(f"{where}: nested too deeply to be a manifest line") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise ManifestError(f"{where}: not valid JSON ({exc})") from None
    if _SURROGATE_ESCAPE.search(text):
        field = _lone_surrogate_field(obj)
        if field is not None:
            raise ManifestError(f"{where}: {json.dumps(field)} holds a lone surrogate (\\ud800-\\udfff): "
                                f"not valid Unicode text")
    return obj


def make_header(classes: Iterable[str], **facts: Any) -> Header:
    """A v1 header: format, version and ordered classes first, then any dataset facts."""
    header: Header = {"format": FORMAT, "version": VERSION, "classes": list(classes)}
    header.update({k: v for k, v in facts.items() if v is not None})
    return header


def is_header(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def _check_header(obj: dict, where: str) -> Header:
    version = obj.get("version")
    if not isinstance(version, str) or not version.split(".")[0].isdigit():
        raise ManifestError(f"{where}: header has no valid \"version\" (expected \"{VERSION}\")")
    major = int(version.split(".")[0])
    if major > MAJOR:
        raise ManifestError(
            f"{where}: manifest format version {version} is newer than this imgcls reads "
            f"({MAJOR}.x); upgrade imgcls (pip install -U imgcls)"
        )
    classes = obj.get("classes")
    if classes is not None:
        if not isinstance(classes, list) or not all(isinstance(c, str) and c for c in classes):
            raise ManifestError(f"{where}: header \"classes\" must be a list of non-empty strings")
        if len(set(classes)) != len(classes):
            raise ManifestError(f"{where}: header \"classes\" lists a class twice")
    return obj


def check_record(obj: Any, where: str) -> Record:
    """Validate one record's defined fields; raise ManifestError naming ``where``."""
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    path = obj.get("path")
    if not isinstance(path, str) or not path:
        if "format" in obj:
            raise ManifestError(f"{where}: not an imgcls manifest header (format {obj.get('format')!r})")
        raise ManifestError(f"{where}: record has no \"path\"")
    if "\0" in path:
        raise ManifestError(f"{where}: \"path\" holds a NUL byte (no file name can)")
    label = obj.get("label")
    if label is not None and (not isinstance(label, str) or not label):
        raise ManifestError(f"{where}: \"label\" must be a non-empty string (or absent for unlabelled images)")
    split = obj.get("split")
    if split is not None and split not in SPLITS:
        raise ManifestError(f"{where}: \"split\" must be one of {', '.join(SPLITS)}, not {split!r}")
    fold = obj.get("fold")
    if fold is not None and (not isinstance(fold, int) or isinstance(fold, bool) or fold < 0):
        raise ManifestError(f"{where}: \"fold\" must be a non-negative integer")
    for key in ("width", "height"):
        value = obj.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            raise ManifestError(f"{where}: \"{key}\" must be a positive integer")
    severity = obj.get("severity")
    if severity is not None and (not isinstance(severity, (int, float)) or isinstance(severity, bool)):
        raise ManifestError(f"{where}: \"severity\" must be a number")
    return obj


class ManifestReader:
    """Streams a manifest: ``header`` is read on open, records on iteration.

    ``source`` is a path, ``"-"`` for stdin, or an open stream (text or bytes). Iterate once.
    """

    def __init__(self, source: str | os.PathLike | IO[Any], name: str | None = None):
        self._own = False
        if isinstance(source, (str, os.PathLike)) and str(source) != "-":
            path = Path(source)
            self.name = name or str(path)
            self.base_dir = path.resolve().parent
            try:
                self._stream: Any = open(path, "rb")
            except FileNotFoundError:
                raise ManifestError(f"{self.name}: no such manifest file") from None
            except IsADirectoryError:
                raise ManifestError(
                    f"{self.name}: is a folder, not a manifest (make one with: imgcls prepare {self.name})"
                ) from None
            except OSError as exc:
                raise ManifestError(f"{self.name}: cannot read: {exc.strerror or exc}") from None
            self._own = True
        else:
            stream = sys.stdin if str(source) == "-" else source
            self.name = name or "<stdin>"
            self.base_dir = Path.cwd()
            # bytes, decoded line by line: an error names its own line, not the start of a read-ahead block
            self._stream = getattr(stream, "buffer", None) or stream
        self.lineno = 0
        self.header: Header | None = None
        self._pending: tuple[int, Any] | None = None
        self._read_header()

    # -- reading -----------------------------------------------------------------
    def _lines(self) -> Iterator[tuple[int, Any]]:
        while True:
            try:
                line = self._stream.readline()
            except UnicodeDecodeError:  # a text stream given by the caller
                raise ManifestError(f"{self.name}:{self.lineno + 1}: not UTF-8 text (is this a manifest?)") from None
            if not line:
                return
            self.lineno += 1
            if isinstance(line, bytes):
                try:
                    line = line.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise ManifestError(f"{self.name}:{self.lineno}: not UTF-8 text (byte {exc.start + 1} of the "
                                        f"line; is this a manifest?)") from None
            if self.lineno == 1 and line.startswith("\ufeff"):
                line = line[1:]  # a byte-order mark, as some Windows editors write
            text = line.strip()
            if not text:
                continue
            yield self.lineno, parse_line(text, f"{self.name}:{self.lineno}")

    def _read_header(self) -> None:
        self._iter = self._lines()
        first = next(self._iter, None)
        if first is None:
            return
        lineno, obj = first
        if is_header(obj):
            self.header = _check_header(obj, f"{self.name}:{lineno}")
        else:
            self._pending = first

    def __iter__(self) -> Iterator[Record]:
        try:
            if self._pending is not None:
                lineno, obj = self._pending
                self._pending = None
                yield check_record(obj, f"{self.name}:{lineno}")
            for lineno, obj in self._iter:
                if is_header(obj):
                    raise ManifestError(
                        f"{self.name}:{lineno}: a second header: concatenated manifests must be merged "
                        f"with imgcls prepare A.jsonl B.jsonl"
                    )
                yield check_record(obj, f"{self.name}:{lineno}")
        finally:
            self.close()

    def close(self) -> None:
        if self._own and not self._stream.closed:
            self._stream.close()

    def __enter__(self) -> ManifestReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- interpretation ----------------------------------------------------------
    @property
    def classes(self) -> list[str] | None:
        """Ordered classes from the header, or None when there is no header."""
        if self.header is None:
            return None
        return self.header.get("classes")

    @property
    def root(self) -> Path:
        """The folder relative record paths resolve against."""
        if self.header and isinstance(self.header.get("root"), str):
            return Path(self.header["root"])
        return self.base_dir

    def resolve(self, record: Record) -> Path:
        """The image file a record names."""
        return resolve_path(record, self.root)


def resolve_path(record: Record, root: str | os.PathLike) -> Path:
    path = Path(record["path"])
    return path if path.is_absolute() else Path(root) / path


def read_all(source: str | os.PathLike | TextIO, name: str | None = None) -> tuple[Header, list[Record], ManifestReader]:
    """Read a whole manifest into memory, inferring a header when it is missing.

    For commands that need every record at once (train, eval). The returned header
    always has ``classes``; ``header["_inferred"]`` is True when it was made up here.
    """
    reader = ManifestReader(source, name)
    records = list(reader)
    header = dict(reader.header) if reader.header else make_header([], _inferred=True)
    labels = {r["label"] for r in records if r.get("label") is not None}
    if not header.get("classes"):
        header["classes"] = sorted(labels)
    else:
        unknown = sorted(labels - set(header["classes"]))
        if unknown:
            raise ManifestError(
                f"{reader.name}: labels not in the header's classes: {', '.join(unknown[:5])}"
                + (" ..." if len(unknown) > 5 else "")
            )
    return header, records, reader


def _finite(obj: Any) -> Any:
    """JSON has no NaN or Infinity: non-finite floats become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def dumps(obj: dict) -> str:
    """One compact manifest line (no trailing newline); non-ASCII kept readable; always standard JSON."""
    try:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:  # a NaN or infinity somewhere: null, as JSON has no such numbers
        return json.dumps(_finite(obj), ensure_ascii=False, separators=(",", ":"), allow_nan=False)


class ManifestWriter:
    """Writes a header and records to a file, a device or stdout (``"-"``) through :class:`imgcls.fsutil.OutputFile`.

    A regular file is written to a temporary file beside it and renamed into place on a
    clean close, so a failure never leaves a half-written manifest; a FIFO, a terminal,
    ``/dev/stdout`` or ``/dev/fd/N`` is written through. ``option`` names the option in
    errors; ``inputs`` are files the command reads, which the output must not replace.
    """

    def __init__(self, dest: Any, header: Header | None = None, *, option: str | None = None,
                 inputs: Iterable[str | os.PathLike] = ()):
        from imgcls.fsutil import OutputFile, OutputTarget

        self._out: OutputFile | None = None
        if isinstance(dest, (str, os.PathLike, OutputTarget)):
            self._out = OutputFile(dest, option=option, inputs=inputs)
            self._stream: Any = self._out
        else:
            self._stream = dest
        self.count = 0
        if header is not None:
            self.write_header(header)

    def _write(self, line: str, what: Any) -> None:
        try:
            self._stream.write(line)
        except UnicodeEncodeError:
            self.close(ok=False)
            from imgcls.errors import DataError

            raise DataError(f"{what!r}: holds text that is not valid Unicode (a lone surrogate): "
                            f"it cannot be written to a UTF-8 manifest") from None

    def write_header(self, header: Header) -> None:
        clean = {k: v for k, v in header.items() if not k.startswith("_")}
        clean.setdefault("format", FORMAT)
        clean.setdefault("version", VERSION)
        self._write(dumps(clean) + "\n", "the manifest header")

    def write(self, record: Record) -> None:
        self._write(dumps(record) + "\n", record.get("path"))
        self.count += 1

    def write_all(self, records: Iterable[Record]) -> None:
        for record in records:
            self.write(record)

    def close(self, ok: bool = True) -> None:
        if self._out is None:
            self._stream.flush()
            return
        if ok:
            self._out.commit()
        else:
            self._out.abort()

    def __enter__(self) -> ManifestWriter:
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        self.close(ok=exc_type is None)


def write_manifest(dest: Any, header: Header | None, records: Iterable[Record], *, option: str | None = None,
                   inputs: Iterable[str | os.PathLike] = ()) -> int:
    """Write a complete manifest; returns the number of records written (see :class:`ManifestWriter`)."""
    with ManifestWriter(dest, header, option=option, inputs=inputs) as writer:
        writer.write_all(records)
    return writer.count


def manifest_hash(header: Header, records: Iterable[Record]) -> str:
    """A short content hash of the images and labels a model was trained on."""
    import hashlib

    digest = hashlib.sha256()
    digest.update(dumps({"classes": header.get("classes", [])}).encode())
    for r in records:
        digest.update(f"{r.get('sha256') or r['path']}\t{r.get('label')}\t{r.get('split')}\n".encode())
    return digest.hexdigest()[:16]


def iter_text(text: str) -> ManifestReader:
    """Read a manifest held in a string (tests, small tools)."""
    return ManifestReader(io.StringIO(text), name="<string>")
