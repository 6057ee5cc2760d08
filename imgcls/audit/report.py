"""The audit's summary on stderr and its contact sheet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imgcls.training._console import detail, info, warn


def render_summary(result: Any, top: int) -> None:
    from imgcls.console import settings

    doc = result.document
    c = doc["counts"]
    info(f"audited {c['records']} images ({c['labelled']} labelled): {c['flagged']} flagged: "
         f"{c['label']} suspected label errors, {c['duplicate']} near-duplicate copies in {c['duplicate_groups']} "
         f"groups, {c['outlier']} outliers, {c['ambiguous']} ambiguous")
    for g in doc["leakage"][:top]:  # leakage first: it invalidates held-out scores
        others = [m for m in g["members"] if not m["kept"]]
        warn(f"leakage: {g['kept']} ({'/'.join(g['splits'])}) has {len(others)} near-cop"
             f"{'ies' if len(others) != 1 else 'y'} in another split: " + "; ".join(
                 f"{m['path']} ({m['split']}, residual {m['residual']}, similarity {m['similarity']})"
                 for m in others[:3]))
    if len(doc["leakage"]) > top:
        warn(f"... and {len(doc['leakage']) - top} more groups straddling splits (see --json / --html)")
    labels = doc.get("labels")
    if labels is not None:
        info(f"labels: {labels['checked']} checked with {labels['folds']}-fold probabilities ({labels['fold_source']}); "
             f"probe accuracy {labels['probe_accuracy']}; cleanlab flagged {labels['cleanlab_issues']}, "
             f"{len(labels['issues'])} below score {labels['max_score']}")
    limit = None if settings.verbosity >= 1 else top
    shown = result.suspects[:limit]
    for s in shown:
        info(f"  {s['kind']:<9} {s['caption']:<30} {s['note']:<14} {s['path']}")
    if len(result.suspects) > len(shown):
        info(f"  ... and {len(result.suspects) - len(shown)} more (-v lists all; --json, --html)")
    t = doc["timing"]
    detail(f"time: features {t['features_s']}s{' (cached)' if t['features_cached'] else ''}, neighbours "
           f"{t['neighbours_s']}s, duplicates {t['duplicates_s']}s, labels {t['labels_s']}s; total {t['total_s']}s")


def sheet_items(result: Any, top: int) -> list[tuple[str, str, str]]:
    return [(s["path"], s["caption"][:21], f"{s['note']}"[:21]) for s in result.suspects[:top]]


def write_sheet(result: Any, path: Path, top: int) -> Path | None:
    from imgcls.evaluation.plots import captioned_sheet

    items = sheet_items(result, top)
    if not items:
        return None
    return captioned_sheet(items, Path(path))
