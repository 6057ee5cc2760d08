"""One audit: embed, check, attach findings to records, build the JSON document."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.audit import AuditConfig
from imgcls.errors import DataError
from imgcls.manifest import Header, Record, resolve_path
from imgcls.training._console import warn

SCHEMA = "imgcls-audit"
SCHEMA_VERSION = "1.0"


@dataclass
class AuditResult:
    header: Header
    records: list[Record]  # the input records, "audit" attached to flagged ones
    document: dict[str, Any]
    suspects: list[dict[str, Any]]  # for the contact sheet and the page, worst first


def _r(x: float, digits: int = 4) -> float | None:
    x = float(x)
    return round(x, digits) if np.isfinite(x) else None


def audit(header: Header, records: Sequence[Record], root: Path, cfg: AuditConfig, *,
          name: str = "manifest") -> AuditResult:
    from imgcls import __version__
    from imgcls.audit.duplicates import colour_loader, find_duplicates, grey_thumbnails, neighbours
    from imgcls.audit.embed import embed
    from imgcls.audit.labels import find_label_errors, normalise, require_cleanlab
    from imgcls.audit.outliers import find_ambiguous, find_outliers
    from imgcls.cache import resolve_cache_dir
    from imgcls.images import ImageRejected
    from imgcls.training.data import unreadable_since_prepare

    t_start = time.perf_counter()
    checks = set(cfg.checks)
    if "labels" in checks:
        require_cleanlab()
    if not records:
        raise DataError(f"{name}: no records to audit")
    classes = list(header["classes"])
    index = {c: i for i, c in enumerate(classes)}
    # findings of an earlier audit are replaced, never mixed with these
    records = [{k: v for k, v in r.items() if k != "audit"} for r in records]
    n = len(records)
    labels = np.array([index[r["label"]] if r.get("label") is not None else -1 for r in records])
    splits = [r.get("split") for r in records]
    paths = [str(resolve_path(r, root)) for r in records]
    timing: dict[str, float] = {}

    t0 = time.perf_counter()
    emb = embed(cfg, records, root, classes)
    timing["features_s"] = time.perf_counter() - t0
    probs_given = None
    if cfg.model_probs:
        probs_given = _model_probs(emb, classes, labels, header, records)

    t0 = time.perf_counter()
    unit = normalise(emb.features.astype(np.float32))
    k = max(1, cfg.neighbours)
    nn_idx, nn_sim = neighbours(unit, k)
    timing["neighbours_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    try:
        gray = grey_thumbnails(paths, resolve_cache_dir(cfg.cache_dir, enabled=cfg.cache))
        dups = find_duplicates(gray, unit, nn_idx, [r.get("sha256") for r in records], splits, paths,
                               max_residual=cfg.duplicate_residual, candidates=cfg.duplicate_candidates,
                               colour=colour_loader(paths))
    except ImageRejected as exc:
        raise unreadable_since_prepare(exc) from None
    timing["duplicates_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    pool = np.array([s in (None, "train", "val") for s in splits])
    held = np.array([s == "test" for s in splits])
    lab = None
    if "labels" in checks or "ambiguous" in checks:
        if "labels" not in checks:
            require_cleanlab()
        lab = find_label_errors(emb.features, labels, pool, held, dups.group, [r.get("fold") for r in records],
                                len(classes), folds=cfg.folds, c=cfg.probe_c, max_score=cfg.max_label_score,
                                seed=cfg.seed, probs=probs_given)
        if probs_given is None and lab.folds < 2:
            warn(f"{name}: too few labelled train/val images per class for {cfg.folds}-fold probabilities: "
                 f"no label check")
    timing["labels_s"] = time.perf_counter() - t0
    outl = find_outliers(nn_idx, nn_sim, labels, cfg.outlier_iqr) if "outliers" in checks else None
    amb = None
    if "ambiguous" in checks and lab is not None:
        amb = find_ambiguous(np.nan_to_num(lab.probs), lab.scored, cfg.ambiguous_margin, cfg.ambiguous_mass)
    timing["total_s"] = time.perf_counter() - t_start

    # -- findings onto records --------------------------------------------------------------
    findings: list[dict[str, Any]] = [{} for _ in range(n)]
    label_items = []
    if lab is not None and "labels" in checks:
        for i in np.flatnonzero(lab.issue).tolist():
            given, sugg = int(labels[i]), int(lab.suggested[i])
            item = {"given": classes[given], "suggested": classes[sugg], "score": _r(lab.score[i]),
                    "p_given": _r(lab.probs[i, given]), "p_suggested": _r(lab.probs[i, sugg])}
            findings[i]["label"] = item
            label_items.append((i, item))
        label_items.sort(key=lambda t: (t[1]["score"], paths[t[0]]))
    groups: dict[int, list[int]] = {}
    for i, g in enumerate(dups.group):
        groups.setdefault(int(g), []).append(i)
    pair_stats = {(a, b): (r, s) for a, b, r, s in dups.pairs}
    dup_groups = []
    for g, members in groups.items():
        if len(members) < 2:
            continue
        keep = int(dups.keeper[members[0]])
        group_splits = sorted({splits[i] or "none" for i in members})
        leak = len({splits[i] for i in members}) > 1
        entries = []
        for i in sorted(members, key=lambda i: (i != keep, paths[i])):
            r, s = pair_stats.get((min(i, keep), max(i, keep)), (0.0, 1.0))
            entries.append({"path": paths[i], "split": splits[i], "label": records[i].get("label"),
                            "kept": i == keep, "residual": None if i == keep else _r(r),
                            "similarity": None if i == keep else _r(s)})
            if i != keep:
                findings[i]["duplicate"] = {"of": paths[keep], "split": splits[keep], "residual": _r(r),
                                            "similarity": _r(s), "leak": splits[i] != splits[keep]}
        dup_groups.append({"kept": paths[keep], "splits": group_splits, "leak": leak, "members": entries})
    dup_groups.sort(key=lambda gr: (not gr["leak"], gr["kept"]))
    outlier_items = []
    if outl is not None:
        for i in np.flatnonzero(outl.outlier).tolist():
            item = {"distance": _r(outl.distance[i]), "fence": _r(outl.fence),
                    "nearest_class": classes[outl.nearest_class[i]] if outl.nearest_class[i] >= 0 else None}
            findings[i]["outlier"] = item
            outlier_items.append((i, item))
        outlier_items.sort(key=lambda t: (-t[1]["distance"], paths[t[0]]))
    amb_items = []
    if amb is not None:
        for i in np.flatnonzero(amb.ambiguous).tolist():
            if "label" in findings[i]:
                continue
            item = {"between": [classes[int(c)] for c in amb.pair[i]], "probs": [_r(p) for p in amb.pair_probs[i]]}
            findings[i]["ambiguous"] = item
            amb_items.append((i, item))
        amb_items.sort(key=lambda t: (abs(t[1]["probs"][0] - t[1]["probs"][1]), paths[t[0]]))
    out_records = []
    order = ("label", "duplicate", "outlier", "ambiguous")
    for rec, f in zip(records, findings):
        if f:
            rec = {**rec, "audit": {"issues": [k for k in order if k in f], **{k: f[k] for k in order if k in f}}}
        out_records.append(rec)

    # -- the document --------------------------------------------------------------------------
    def where(i: int) -> dict[str, Any]:
        return {"path": paths[i], "split": splits[i], "label": records[i].get("label")}

    counts = {
        "records": n,
        "labelled": int((labels >= 0).sum()),
        "flagged": sum(1 for f in findings if f),
        "label": len(label_items),
        "duplicate": sum(1 for f in findings if "duplicate" in f),
        "leak": sum(1 for f in findings if f.get("duplicate", {}).get("leak")),
        "duplicate_groups": len(dup_groups),
        "leak_groups": sum(1 for g in dup_groups if g["leak"]),
        "outlier": len(outlier_items),
        "ambiguous": len(amb_items),
    }
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("cache_dir",)}
    settings["checks"] = list(cfg.checks)
    settings["embedding"] = emb.settings
    document: dict[str, Any] = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "imgcls_version": __version__, "manifest": name,
        "counts": counts, "settings": settings,
        "timing": {k: round(v, 2) for k, v in timing.items()} | {"features_cached": emb.cached},
        "leakage": [g for g in dup_groups if g["leak"]],
        "labels": None if lab is None or "labels" not in checks else {
            "checked": int(lab.scored.sum()), "folds": lab.folds, "fold_source": lab.fold_source,
            "probe_accuracy": _r(lab.probe_accuracy),
            "cleanlab_issues": lab.cleanlab_issues, "max_score": cfg.max_label_score,
            "issues": [{**where(i), **item} for i, item in label_items]},
        "duplicates": None if "duplicates" not in checks else {
            "candidates": dups.candidates, "pairs": len(dups.pairs), "max_residual": cfg.duplicate_residual,
            "groups": dup_groups},
        "outliers": None if outl is None else {
            "fence": _r(outl.fence), "items": [{**where(i), **item} for i, item in outlier_items]},
        "ambiguous": None if amb is None else {"items": [{**where(i), **item} for i, item in amb_items]},
    }
    if "duplicates" not in checks:  # the pairs were computed (cheap) but are not findings
        for rec in out_records:
            a = rec.get("audit")
            if a and "duplicate" in a:
                a.pop("duplicate")
                a["issues"].remove("duplicate")
                if not a["issues"]:
                    rec.pop("audit")
        document["leakage"] = []
        counts["duplicate"] = counts["leak"] = counts["duplicate_groups"] = counts["leak_groups"] = 0
        counts["flagged"] = sum(1 for r in out_records if "audit" in r)
    suspects = [{**where(i), "kind": "label", "caption": f"{item['given']} -> {item['suggested']}",
                 "note": f"score {item['score']:.2f}"} for i, item in label_items]
    suspects += [{**where(i), "kind": "outlier", "caption": f"{records[i].get('label') or '-'}: outlier",
                  "note": f"dist {item['distance']:.2f}"} for i, item in outlier_items]
    suspects += [{**where(i), "kind": "ambiguous", "caption": " / ".join(item["between"]),
                  "note": f"{item['probs'][0]:.2f} / {item['probs'][1]:.2f}"} for i, item in amb_items]
    out_header = {k: v for k, v in header.items() if k != "audited"}
    out_header["audited"] = {"imgcls_version": __version__, "checks": list(cfg.checks),
                             "embedding": emb.description, "counts": counts}
    return AuditResult(out_header, out_records, document, suspects)


def _model_probs(emb: Any, classes: list[str], labels: np.ndarray, header: Header,
                 records: Sequence[Record]) -> np.ndarray:
    """The model's probabilities in the manifest's class order (by name)."""
    from imgcls.manifest import manifest_hash

    model_classes = emb.model_classes or []
    unknown = sorted({classes[int(y)] for y in labels if y >= 0} - set(model_classes))
    if unknown:
        raise DataError(f"--model-probs: labels the model does not know: {', '.join(unknown[:5])}")
    if emb.model_manifest_hash and emb.model_manifest_hash == manifest_hash(header, records):
        warn("--model-probs: the model was trained on this manifest, so its probabilities are not out-of-fold: "
             "labels it learned by heart look right to it (drop --model-probs for the K-fold probe)")
    out = np.zeros((len(labels), len(classes)))
    for j, c in enumerate(classes):
        if c in model_classes:
            out[:, j] = emb.probs[:, model_classes.index(c)]
    return out
