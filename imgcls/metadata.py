"""One validator for the metadata imgcls reads back: model files, checkpoints and run histories.

A model file, a checkpoint or a ``history.jsonl`` may have been edited, damaged or
written by something else. Everything in them is checked once, when it is loaded, and
a problem is one line naming the file and the field (``model.safetensors: model
metadata "image_size": must be a whole number from 1 to 16384, not 8.5``), never an
internal error later in the middle of a run.

No torch here: the checks are on the JSON side; tensor shapes are checked where the
tensors are (:mod:`imgcls.training.checkpoint`, :mod:`imgcls.models.io`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeGuard

from imgcls.errors import ModelError

MAX_IMAGE_SIZE = 16384  # px: far beyond any small-data model; larger values are damage, not intent
CHANNELS = (1, 3)


class FieldProblem(ValueError):
    """A field's value is wrong: ``field`` names it (dotted for nested fields)."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field!r}: {problem}")
        self.field = field
        self.problem = problem


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=True, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> TypeGuard[int | float]:
    """A finite int or float (not a bool): what a JSON number field may hold."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _text_ok(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


def check_classes(value: Any, field: str = "classes") -> list[str]:
    """A list of distinct, non-empty class names."""
    if not isinstance(value, list) or not value:
        raise FieldProblem(field, f"must be a non-empty list of class names, not {_kind(value)} {_show(value)}")
    for i, name in enumerate(value):
        if not isinstance(name, str) or not name:
            raise FieldProblem(field, f"entry {i} must be a non-empty string, not {_kind(name)} {_show(name)}")
        if not _text_ok(name):
            raise FieldProblem(field, f"entry {i} is not valid Unicode text")
    if len(set(value)) != len(value):
        seen: set[str] = set()
        twice = next(n for n in value if n in seen or seen.add(n))  # type: ignore[func-returns-value]
        raise FieldProblem(field, f"lists the class {twice!r} twice")
    return list(value)


def _check_int(value: Any, field: str, low: int | None = None, high: int | None = None) -> int:
    if not is_int(value) or (low is not None and value < low) or (high is not None and value > high):
        limits = (f" from {low} to {high}" if high is not None else f" of at least {low}") if low is not None else ""
        raise FieldProblem(field, f"must be a whole number{limits}, not {_show(value)}")
    return value


def _check_numbers(value: Any, field: str, length: int | None, positive: bool = False) -> list[float]:
    if not isinstance(value, list) or (length is not None and len(value) != length):
        size = f" of {length} numbers" if length is not None else " of numbers"
        raise FieldProblem(field, f"must be a list{size}, not {_show(value)}")
    for v in value:
        if not is_number(v) or (positive and v <= 0):
            what = "positive finite numbers" if positive else "finite numbers"
            raise FieldProblem(field, f"must hold {what}, not {_show(v)}")
    return [float(v) for v in value]


# -- training configuration (model files and checkpoints carry one) -------------------------
def _annotation_check(annotation: str) -> Callable[[Any], bool]:
    """A type check from a dataclass field annotation written as a string ("int | None", "list[float]")."""
    checks = []
    for part in (p.strip() for p in annotation.split("|")):
        if part == "None":
            checks.append(lambda v: v is None)
        elif part == "int":
            checks.append(is_int)
        elif part == "float":
            checks.append(is_number)
        elif part == "bool":
            checks.append(lambda v: isinstance(v, bool))
        elif part == "str":
            checks.append(lambda v: isinstance(v, str))
        elif part.startswith("list[float]"):
            checks.append(lambda v: isinstance(v, list) and all(is_number(x) for x in v))
        elif part.startswith("list"):
            checks.append(lambda v: isinstance(v, list))
        elif part.startswith("dict"):
            checks.append(lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v))
        else:
            checks.append(lambda v: True)
    return lambda v: any(check(v) for check in checks)


def check_train_config(value: Any, field: str = "config") -> dict[str, Any]:
    """A TrainConfig as a dict: every known field of the right type; unknown fields are kept (newer versions)."""
    from imgcls.training.config import CLASS_WEIGHTS, OPTIMIZERS, SCHEDULES, TrainConfig

    if not isinstance(value, dict):
        raise FieldProblem(field, f"must be an object, not {_kind(value)} {_show(value)}")
    for f in fields(TrainConfig):
        if f.name not in value:
            continue
        v = value[f.name]
        if not _annotation_check(str(f.type))(v):
            raise FieldProblem(f"{field}.{f.name}", f"must be {f.type}, not {_kind(v)} {_show(v)}")
    for name, low in (("epochs", 1), ("batch_size", 1), ("patience", 0), ("seed", None), ("image_size", 0)):
        if name in value and (low is not None and value[name] < low):
            raise FieldProblem(f"{field}.{name}", f"must be at least {low}, not {_show(value[name])}")
    if value.get("image_size", 0) > MAX_IMAGE_SIZE:
        raise FieldProblem(f"{field}.image_size", f"must be at most {MAX_IMAGE_SIZE}, not {_show(value['image_size'])}")
    if "channels" in value and value["channels"] not in (0, *CHANNELS):
        raise FieldProblem(f"{field}.channels", f"must be 1 or 3, not {_show(value['channels'])}")
    for name, allowed in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("class_weights", CLASS_WEIGHTS)):
        if name in value and value[name] not in allowed:
            raise FieldProblem(f"{field}.{name}", f"must be one of {', '.join(allowed)}, not {_show(value[name])}")
    if "lr" in value and not value["lr"] > 0:
        raise FieldProblem(f"{field}.lr", f"must be positive, not {_show(value['lr'])}")
    if "std" in value and any(v <= 0 for v in value["std"]):
        raise FieldProblem(f"{field}.std", "standard deviations must be positive")
    if "trainable_blocks" in value and value["trainable_blocks"] is not None and value["trainable_blocks"] < 0:
        raise FieldProblem(f"{field}.trainable_blocks", f"must be 0 or more, not {_show(value['trainable_blocks'])}")
    return value


# -- model files ----------------------------------------------------------------------------
def check_model_metadata(data: Any) -> dict[str, Any]:
    """The ``imgcls`` metadata of a model file; raises FieldProblem for the first bad field."""
    if not isinstance(data, dict):
        raise FieldProblem("imgcls", f"must be a JSON object, not {_kind(data)}")
    for name in ("arch",):
        if not isinstance(data.get(name), str) or not data.get(name):
            raise FieldProblem(name, f"must be a non-empty string, not {_show(data.get(name))}")
    data["classes"] = check_classes(data.get("classes"))
    _check_int(data.get("image_size"), "image_size", 1, MAX_IMAGE_SIZE)
    channels = data.get("channels")
    if channels not in CHANNELS or not is_int(channels):
        raise FieldProblem("channels", f"must be 1 or 3, not {_show(channels)}")
    _check_numbers(data.get("mean"), "mean", channels)
    _check_numbers(data.get("std"), "std", channels, positive=True)
    if "dropout" in data and (not is_number(data["dropout"]) or not 0 <= data["dropout"] < 1):
        raise FieldProblem("dropout", f"must be a number from 0 to below 1, not {_show(data['dropout'])}")
    blocks = data.get("trainable_blocks")
    if blocks is not None:
        _check_int(blocks, "trainable_blocks", 0)
    options = data.get("arch_options", {})
    if not isinstance(options, dict):
        raise FieldProblem("arch_options", f"must be an object, not {_kind(options)} {_show(options)}")
    for key, v in options.items():
        if not (is_number(v) or isinstance(v, (str, bool)) or v is None):
            raise FieldProblem(f"arch_options.{key}", f"must be a number or a string, not {_kind(v)} {_show(v)}")
    for name in ("imgcls_version", "created", "manifest_hash"):
        if name in data and not isinstance(data[name], str):
            raise FieldProblem(name, f"must be a string, not {_kind(data[name])} {_show(data[name])}")
    if data.get("parent") is not None and not isinstance(data["parent"], str):
        raise FieldProblem("parent", f"must be a file name or null, not {_show(data['parent'])}")
    if "config" in data:
        check_train_config(data["config"])
    if "extra" in data and not isinstance(data["extra"], dict):
        raise FieldProblem("extra", f"must be an object, not {_kind(data['extra'])}")
    return data


def load_json_text(text: str, what: str, strict: bool = False) -> Any:
    """JSON from a metadata string, nesting beyond reason refused.

    ``strict``: also no NaN or Infinity (manifest rules); otherwise they are read, and
    the field checks refuse them where a finite number is needed (``std``, ``mean``).
    """
    if strict:
        from imgcls.manifest import ManifestError, parse_line

        try:
            return parse_line(text, what)
        except ManifestError as exc:
            raise FieldProblem(what, str(exc).split(": ", 1)[-1]) from None
    try:
        return json.loads(text)
    except RecursionError:
        raise FieldProblem(what, "nested too deeply") from None
    except ValueError as exc:
        raise FieldProblem(what, f"not valid JSON ({exc})") from None


def model_metadata_error(where: str, exc: FieldProblem) -> ModelError:
    return ModelError(f"{where}: model metadata {json.dumps(exc.field)}: {exc.problem}")


# -- checkpoints ----------------------------------------------------------------------------
RESUME_FIELDS = ("config", "epoch", "classes", "optimizer")


def check_checkpoint_state(meta: Any, required: Sequence[str] = ("epoch",)) -> dict[str, Any]:
    """The JSON state of a checkpoint; raises FieldProblem for the first bad field.

    ``required``: fields that must be there (:data:`RESUME_FIELDS` to continue a run).
    """
    if not isinstance(meta, dict):
        raise FieldProblem("state", f"must be a JSON object, not {_kind(meta)}")
    for name in required:
        if name not in meta:
            raise FieldProblem(name, "is missing")
    if "config" in meta:
        check_train_config(meta["config"])
    if "run_config" in meta:  # a checkpoint of a warm-up: the whole run's configuration
        check_train_config(meta["run_config"], "run_config")
    if "epoch" in meta:
        _check_int(meta["epoch"], "epoch", 0)
    if "classes" in meta:
        meta["classes"] = check_classes(meta["classes"])
    for name in ("bad_epochs", "epoch_offset"):
        if name in meta:
            _check_int(meta[name], name, 0)
    if meta.get("best_epoch") is not None:
        _check_int(meta["best_epoch"], "best_epoch", 0)
    if meta.get("best_val_loss") is not None and not is_number(meta["best_val_loss"]):
        raise FieldProblem("best_val_loss", f"must be a number or null, not {_show(meta['best_val_loss'])}")
    if "manifest_hash" in meta and not isinstance(meta["manifest_hash"], str):
        raise FieldProblem("manifest_hash", f"must be a string, not {_show(meta['manifest_hash'])}")
    history = meta.get("history", [])
    if not isinstance(history, list):
        raise FieldProblem("history", f"must be a list, not {_kind(history)}")
    for i, row in enumerate(history):
        problem = history_row_problem(row)
        if problem:
            raise FieldProblem(f"history[{i}]", problem)
    optimizer = meta.get("optimizer", {"param_groups": []})
    if not isinstance(optimizer, dict) or not isinstance(optimizer.get("param_groups"), list) \
            or not all(isinstance(g, dict) for g in optimizer["param_groups"]):
        raise FieldProblem("optimizer", "must be an object with a list of \"param_groups\"")
    if not isinstance(optimizer.get("scalars", {}), dict):
        raise FieldProblem("optimizer.scalars", "must be an object")
    for name in ("scheduler", "scaler"):
        if meta.get(name) is not None and not isinstance(meta[name], dict):
            raise FieldProblem(name, f"must be an object or null, not {_kind(meta[name])}")
    return meta


# -- history.jsonl --------------------------------------------------------------------------
HISTORY_NUMBERS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "max_memory_mib")


def history_row_problem(row: Any) -> str | None:
    """Why one history row is unusable, or None."""
    if not isinstance(row, dict):
        return f"must be a JSON object, not {_kind(row)}"
    if not is_int(row.get("epoch")) or row["epoch"] < 0:
        return f"\"epoch\" must be a whole number, not {_show(row.get('epoch'))}"
    for name in HISTORY_NUMBERS:  # NaN is a number here: a diverged epoch's loss
        value = row.get(name)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            return f"{json.dumps(name)} must be a number or null, not {_show(value)}"
    if row.get("phase") is not None and not isinstance(row["phase"], str):
        return f"\"phase\" must be a string, not {_show(row['phase'])}"
    if "best" in row and not isinstance(row["best"], bool):
        return f"\"best\" must be true or false, not {_show(row['best'])}"
    return None


def read_history(path: str | Path, warn: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """The usable rows of a ``history.jsonl`` (one object per epoch); damaged lines are skipped.

    A history is a record of what happened, not an input a run depends on: a line that is
    not UTF-8, not a JSON object or has a field of the wrong type is left out, and
    ``warn`` is told once which lines were (``FILE:LINE: reason``).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        if warn is not None:
            warn(f"{path}: cannot read: {exc.strerror or exc}; learning curves and epoch numbers start afresh")
        return []
    rows: list[dict[str, Any]] = []
    bad: list[str] = []
    for lineno, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            bad.append(f"{lineno} (not UTF-8)")
            continue
        try:
            obj = load_json_text(text.strip(), f"{path}:{lineno}")
        except FieldProblem as exc:
            bad.append(f"{lineno} ({exc.problem})")
            continue
        problem = history_row_problem(obj)
        if problem:
            bad.append(f"{lineno} ({problem})")
            continue
        rows.append(obj)
    if bad and warn is not None:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        warn(f"{path}: damaged line{'s' if len(bad) > 1 else ''} skipped: line {'; line '.join(bad[:3])}{more}")
    return rows


def first_duplicate(names: Sequence[str]) -> str | None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            return n
        seen.add(n)
    return None
