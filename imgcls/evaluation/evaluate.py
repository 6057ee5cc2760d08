"""One evaluation report per model over the selected manifest records.

Decisions (documented in ``imgcls eval --help`` and docs/design/eval.md):

* ``--split test`` selects records whose ``split`` is ``test`` *or missing*: a manifest
  without splits is taken to be a held-out set (a note on stderr says how many).
* Records without a ``label`` cannot be scored and are left out (with a warning).
* Labels are matched to the model's classes by *name*; a label the model does not know
  is an error unless ``ignore_unknown``, then those images are counted apart and not run.
* Every selected image must decode: eval stops at the first unreadable one (metrics on a
  silently smaller set would mislead).
* The summary metrics cover every scored image, perturbed ones included; the
  ``robustness`` section breaks them down by perturbation and severity.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.errors import DataError, ModelError, UsageProblem

SPLIT_CHOICES = ("test", "val", "train", "all")
SCHEMA_ID = "imgcls-eval"
SCHEMA_VERSION = "1.2"


@dataclass
class Selection:
    """The records an evaluation scores, with their resolved image paths."""

    records: list[dict]
    paths: list[str]
    split: str
    n_unsplit: int  # records without a split field counted as test
    n_unlabelled: int


def select_records(records: Sequence[dict], resolve: Callable[[dict], Path], split: str, source: str) -> Selection:
    """Records of ``split`` ('all' for every one); raise a clear error when none are left."""
    if split not in SPLIT_CHOICES:
        raise UsageProblem(f"--split {split!r}: expected one of {', '.join(SPLIT_CHOICES)}")
    if not records:
        raise DataError(f"{source}: the manifest has no records")
    if split == "all":
        chosen = list(records)
        n_unsplit = 0
    else:
        chosen = [r for r in records if (r.get("split") or "test") == split]
        n_unsplit = sum(1 for r in chosen if not r.get("split")) if split == "test" else 0
    if not chosen:
        counts = Counter(r.get("split") or "(none)" for r in records)
        have = ", ".join(f"{name} {n}" for name, n in sorted(counts.items()))
        others = [s for s in ("test", "val", "train") if counts.get(s)]
        hint = f"--split {others[0]}" if others else "--split all"
        raise DataError(f"{source}: no records in split {split!r} (splits here: {have}); pass {hint} or --split all")
    labelled = [r for r in chosen if r.get("label") is not None]
    if not labelled:
        raise DataError(f"{source}: none of the {len(chosen)} records of split {split!r} has a label; "
                        f"eval needs labels (use imgcls predict for unlabelled images)")
    return Selection(labelled, [str(resolve(r)) for r in labelled], split, n_unsplit, len(chosen) - len(labelled))


@dataclass
class ModelEvaluation:
    """A finished evaluation: the JSON report plus the arrays predictions and plots need."""

    path: Path
    label: str
    info: Any
    report: dict[str, Any]
    records: list[dict]
    paths: list[str]
    y_true: np.ndarray
    probs: np.ndarray


def map_labels(records: Sequence[dict], classes: Sequence[str], model_path: Path,
               ignore_unknown: bool) -> tuple[list[int], np.ndarray, Counter]:
    """Positions of records whose label the model knows, their class indices, and unknown label counts."""
    index = {name: i for i, name in enumerate(classes)}
    unknown: Counter = Counter(r["label"] for r in records if r["label"] not in index)
    if unknown and not ignore_unknown:
        listed = ", ".join(f"{name!r} ({n})" for name, n in sorted(unknown.items())[:5])
        more = " ..." if len(unknown) > 5 else ""
        raise DataError(
            f"{model_path}: the manifest has labels this model does not know: {listed}{more}; "
            f"model classes: {', '.join(classes[:10])}{' ...' if len(classes) > 10 else ''}. "
            f"Pass --ignore-unknown to leave those images out (they are counted apart)"
        )
    keep = [i for i, r in enumerate(records) if r["label"] in index]
    y_true = np.array([index[records[i]["label"]] for i in keep], dtype=np.int64)
    return keep, y_true, unknown


def describe_model(path: Path, info: Any, model: Any) -> dict[str, Any]:
    from imgcls.evaluation.inference import model_label

    count = model.count_parameters() if hasattr(model, "count_parameters") else sum(p.numel() for p in model.parameters())
    return {
        "path": str(path.resolve()),
        "name": model_label(path),
        "arch": info.arch,
        "classes": list(info.classes),
        "image_size": info.image_size,
        "channels": info.channels,
        "parameters": int(count),
        "created": info.created or None,
        "manifest_hash": info.manifest_hash or None,
    }


def _no_progress(total: int, description: str):
    import contextlib

    return contextlib.nullcontext(lambda n: None)


def evaluate_model(
    model_path: str | os.PathLike,
    selection: Selection,
    *,
    device: str = "cpu",
    batch_size: int = 64,
    workers: int | None = None,
    tta: bool = False,
    top_k: int | None = None,
    bins: int = 15,
    n_errors: int = 10,
    ignore_unknown: bool = False,
    cache_dir: Path | None = None,
    progress: Callable[[int, str], Any] | None = None,
    overrides: Any = None,
) -> ModelEvaluation:
    """Run one model over the selection and build its report (see docs/eval-json-schema.json).

    With ``cache_dir`` the decoded images come from (or go to) the decoded-image cache
    shared with train (:mod:`imgcls.cache`); without it they are decoded in a thread
    pool that streams batches to the model. ``progress(total, description)`` returns a
    context manager yielding ``advance(n)``. An ONNX model runs through onnxruntime
    (:mod:`imgcls.evaluation.backends`; ``overrides``: --classes/--size for a foreign file).
    """
    from imgcls.evaluation import backends
    from imgcls.evaluation import metrics as M
    from imgcls.evaluation.inference import decode_all, model_label, predict_array, predict_batches
    from imgcls.models.io import resolve_model_path

    progress = progress or _no_progress
    path = resolve_model_path(model_path)
    info = backends.read_info(path, overrides)  # cheap: check labels before loading weights
    keep, y_true, unknown = map_labels(selection.records, info.classes, path, ignore_unknown)
    if not keep:
        raise DataError(f"{path}: none of the {len(selection.records)} selected images has a label this model knows")
    records = [selection.records[i] for i in keep]
    paths = [selection.paths[i] for i in keep]
    model, info = backends.load(path, device, overrides)
    name = model_label(path)
    policy = None
    if tta:
        from imgcls.console import info as say
        from imgcls.evaluation.tta import policy_for

        policy = policy_for(info)
        say(f"{name}: TTA with {policy.describe()}")

    probs = np.empty((len(paths), len(info.classes)))
    plain = np.empty_like(probs) if policy is not None else None
    start = time.perf_counter()
    if cache_dir is not None:
        from imgcls.cache import cached_array, decoded_key

        key = decoded_key(paths, info.image_size, info.channels, [r.get("sha256") for r in records])

        def build() -> np.ndarray:
            with progress(len(paths), f"decode for {name}") as advance:
                return decode_all(paths, info.image_size, info.channels, workers=workers, batch_size=batch_size,
                                  on_batch=advance)

        try:
            images = cached_array(cache_dir, "decoded", key, build)
        except DataError as exc:
            raise DataError(f"{exc} (eval needs every selected image: fix the file, or drop its record "
                            f"from the manifest, e.g. with jq)") from None
        # images/s times the inference loop only: with several models, the first one would
        # otherwise pay the decoding that the others then find in the cache
        decode_seconds = time.perf_counter() - start
        start = time.perf_counter()
        with progress(len(paths), f"eval {name}") as advance:
            for batch in predict_array(model, info, images, batch_size=batch_size, device=device, tta=policy,
                                       on_batch=advance):
                probs[batch.indices] = batch.probs
                if plain is not None:
                    plain[batch.indices] = batch.plain
    else:
        decode_seconds = None  # streamed: decoding overlaps inference and is part of `seconds`
        with progress(len(paths), f"eval {name}") as advance:
            for batch in predict_batches(model, info, paths, batch_size=batch_size, device=device, workers=workers,
                                         tta=policy, on_batch=advance):
                if batch.errors:
                    bad = batch.errors[0]
                    raise DataError(f"{bad.path}: {bad.message} (eval needs every selected image: fix the file, "
                                    f"or drop its record from the manifest, e.g. with jq)")
                probs[batch.indices] = batch.probs
                if plain is not None:
                    plain[batch.indices] = batch.plain
    seconds = time.perf_counter() - start

    scored = M.compute_metrics(y_true, probs, info.classes, top_k=top_k, n_bins=bins)
    correct = probs.argmax(axis=1) == y_true
    report: dict[str, Any] = {
        "model": describe_model(path, info, model),
        "n_images": len(paths),
        "unknown": {"count": int(sum(unknown.values())), "labels": dict(sorted(unknown.items()))},
        **scored,
        "errors": M.error_analysis(y_true, probs, info.classes, paths, scored["confusion_matrix"]["counts"], n_errors),
        "robustness": M.robustness(records, correct),
        "speed": {"device": str(device), "seconds": seconds,
                  "images_per_second": len(paths) / seconds if seconds > 0 else None,
                  "decode_seconds": decode_seconds, "cached": cache_dir is not None, "tta": bool(tta)},
    }
    if policy is not None and plain is not None:
        report["tta"] = tta_comparison(policy, scored, M.compute_metrics(y_true, plain, info.classes, top_k=top_k,
                                                                         n_bins=bins))
    return ModelEvaluation(path, name, info, report, records, paths, y_true, probs)


TTA_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "log_loss", "ece")


def tta_comparison(policy: Any, with_tta: dict[str, Any], without: dict[str, Any]) -> dict[str, Any]:
    """The report's ``tta`` section: the views, and the headline metrics with and without them."""
    pick = {k: with_tta["metrics"][k] for k in TTA_METRICS}
    plain = {k: without["metrics"][k] for k in TTA_METRICS}
    return {**policy.to_json(), "with": pick, "without": plain,
            "accuracy_gain": pick["accuracy"] - plain["accuracy"]}


def comparison_rows(evaluations: Sequence[ModelEvaluation]) -> list[dict[str, Any]]:
    """One row per model: the side-by-side table of ``--model A --model B``."""
    rows = []
    for ev in evaluations:
        r = ev.report
        rows.append({
            "model": r["model"]["name"],
            "path": r["model"]["path"],
            "arch": r["model"]["arch"],
            "n_images": r["n_images"],
            "accuracy": r["metrics"]["accuracy"],
            "balanced_accuracy": r["metrics"]["balanced_accuracy"],
            "macro_f1": r["metrics"]["macro_f1"],
            "ece": r["metrics"]["ece"],
            "log_loss": r["metrics"]["log_loss"],
            "parameters": r["model"]["parameters"],
            "images_per_second": r["speed"]["images_per_second"],
            "accuracy_without_tta": r["tta"]["without"]["accuracy"] if "tta" in r else None,
            "per_class_f1": {c["class"]: c["f1"] for c in r["per_class"]},
        })
    return rows


def build_document(evaluations: Sequence[ModelEvaluation], selection: Selection, *, manifest: str,
                   settings: dict[str, Any]) -> dict[str, Any]:
    """The whole ``--json`` document: the same shape for one model or several."""
    from imgcls import __version__
    from imgcls.evaluation.agreement import agreement

    return {
        "schema": SCHEMA_ID,
        "schema_version": SCHEMA_VERSION,
        "imgcls_version": __version__,
        "manifest": manifest,
        "split": selection.split,
        "n_selected": len(selection.records) + selection.n_unlabelled,
        "n_unlabelled": selection.n_unlabelled,
        "n_unsplit_as_test": selection.n_unsplit,
        "settings": settings,
        "models": [ev.report for ev in evaluations],
        "comparison": comparison_rows(evaluations),
        "agreement": agreement(evaluations, int(settings.get("errors", 10))),
    }


def prediction_records(ev: ModelEvaluation) -> list[dict[str, Any]]:
    """The evaluated records with ``pred``, ``prob`` (of pred) and ``probs`` (class -> p) added."""
    classes = ev.info.classes
    out = []
    for record, row in zip(ev.records, ev.probs):
        p = int(row.argmax())
        extra = {"pred": classes[p], "prob": float(row[p]),
                 "probs": {name: float(v) for name, v in zip(classes, row)}}
        out.append({**record, **extra})
    return out


def check_model_given(models: Sequence[str], header: dict | None, source: str) -> list[str]:
    """--model values, else the header's "model" field, else an error saying what to pass."""
    if models:
        return list(models)
    recorded = (header or {}).get("model")
    if isinstance(recorded, str) and recorded:
        if not Path(recorded).exists():
            raise ModelError(f"{source}: the header names model {recorded}, which does not exist; "
                             f"pass --model FILE (or a run folder, e.g. --model runs/latest)")
        return [recorded]
    raise ModelError(f"no model to evaluate: pass --model FILE or --model RUN_DIR (e.g. --model runs/latest), "
                       f"or pipe in the manifest imgcls train printed (its header names the model); "
                       f"{source} has no \"model\" in its header")
