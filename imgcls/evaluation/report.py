"""The eval report people read: rich tables on stderr (stdout stays for data)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from imgcls.console import info, print_renderable, settings, styled, table as make_table, warn

MAX_MATRIX_CLASSES = 20


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _score_style(value: float | None) -> str:
    if value is None:
        return "dim"
    return "green" if value >= 0.9 else "yellow" if value >= 0.7 else "red"


def _short(name: str, width: int = 10) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def summary_table(report: dict[str, Any], document: dict[str, Any]):
    m = report["metrics"]
    model = report["model"]
    table = make_table(title=f"eval: {model['name']}", show_header=False, title_justify="left")
    table.add_column("", style="bold")
    table.add_column("")
    table.add_row("model", f"{model['path']} ({model['arch']}, {model['parameters']:,} parameters, "
                           f"{model['image_size']} px, {model['channels']} ch)")
    images = f"{report['n_images']} (split {document['split']})"
    if report["unknown"]["count"]:
        images += f", {report['unknown']['count']} with unknown labels left out"
    table.add_row("images", images)
    table.add_row("accuracy", styled(_pct(m['accuracy']), _score_style(m['accuracy'])))
    tta = report.get("tta")
    if tta:
        without, gain = tta["without"], tta["accuracy_gain"]
        table.add_row("TTA", f"{len(tta['views'])} views ({', '.join(tta['views'])}); {tta['reason']}")
        table.add_row("accuracy: TTA / plain", f"{_pct(m['accuracy'])} / {_pct(without['accuracy'])} "
                                               f"({100 * gain:+.1f} points); log loss {_num(m['log_loss'])} / "
                                               f"{_num(without['log_loss'])}")
    table.add_row("balanced accuracy", _pct(m["balanced_accuracy"]))
    table.add_row(f"top-{m['top_k']} accuracy", _pct(m["top_k_accuracy"]))
    table.add_row("macro F1 / weighted F1", f"{_num(m['macro_f1'])} / {_num(m['weighted_f1'])}")
    table.add_row("log loss", _num(m["log_loss"]))
    table.add_row("ECE", f"{_num(m['ece'])} ({report['calibration']['n_bins']} bins, mean confidence "
                         f"{_pct(m['mean_confidence'])})")
    speed = report["speed"]
    if speed["images_per_second"]:
        where = ("decoded images from the cache" + (f", filled in {speed['decode_seconds']:.1f} s"
                 if (speed.get("decode_seconds") or 0) >= 0.1 else "")) if speed.get("cached") else "decoding on the fly"
        table.add_row("speed", f"{speed['images_per_second']:.1f} images/s on {speed['device']}"
                               + (" with TTA" if speed["tta"] else "") + f" ({where})")
    return table


def per_class_table(report: dict[str, Any]):
    table = make_table(title="per class", title_justify="left")
    for name in ("class", "precision", "recall", "F1", "support", "predicted"):
        table.add_column(name, justify="left" if name == "class" else "right")
    for row in report["per_class"]:
        f1 = row["f1"] if row["support"] else None
        table.add_row(row["class"], _num(row["precision"]), _num(row["recall"]),
                      styled(_num(row['f1']), _score_style(f1)), str(row["support"]),
                      styled(str(row['predicted']), "red") if row["predicted"] == 0 else str(row["predicted"]))
    m = report["metrics"]
    table.add_section()
    table.add_row("macro avg", _num(m["macro_precision"]), _num(m["macro_recall"]), _num(m["macro_f1"]),
                  str(report["n_images"]), "")
    table.add_row("weighted avg", _num(m["weighted_precision"]), _num(m["weighted_recall"]),
                  _num(m["weighted_f1"]), str(report["n_images"]), "")
    return table


def _cell_style(rate: float, diagonal: bool, count: int) -> str:
    if count == 0:
        return "dim"
    if diagonal:
        return "bold green" if rate >= 0.8 else "yellow" if rate >= 0.5 else "bold red"
    return "bold red" if rate >= 0.2 else "red" if rate >= 0.05 else "yellow"


def confusion_table(report: dict[str, Any]):
    cm = report["confusion_matrix"]
    classes = cm["classes"]
    table = make_table(title="confusion matrix (rows: true, columns: predicted; colour: share of the row)",
                  title_justify="left")
    table.add_column("true \\ pred")
    for name in classes:
        table.add_column(_short(name, 8), justify="right")
    for i, (row, rates) in enumerate(zip(cm["counts"], cm["normalized"])):
        cells = [styled(str(count), _cell_style(rate, i == j, count)) for j, (count, rate) in enumerate(zip(row, rates))]
        table.add_row(_short(classes[i], 14), *cells)
    return table


def errors_table(report: dict[str, Any]):
    table = make_table(title="most confident mistakes", title_justify="left")
    table.add_column("image", overflow="fold")
    for name in ("true", "predicted", "p(pred)", "p(true)"):
        table.add_column(name, justify="right" if name.startswith("p(") else "left")
    for e in report["errors"]["most_confident"]:
        table.add_row(e["path"], e["true"], e["pred"], _num(e["prob"], 2), _num(e["prob_true"], 2))
    return table


def pairs_table(report: dict[str, Any]):
    table = make_table(title="most confused pairs", title_justify="left")
    for name in ("true", "predicted as", "count", "share of true"):
        table.add_column(name, justify="right" if name in ("count", "share of true") else "left")
    for p in report["errors"]["confused_pairs"]:
        table.add_row(p["true"], p["pred"], str(p["count"]), _pct(p["rate"]))
    return table


def robustness_table(report: dict[str, Any]):
    rob = report["robustness"]
    table = make_table(title="robustness (accuracy by perturbation and severity)", title_justify="left")
    for name in ("perturbation", "severity", "images", "accuracy", "relative drop"):
        table.add_column(name, justify="left" if name == "perturbation" else "right")
    clean = rob["clean"]
    table.add_row("clean", "", str(clean["n"]), _pct(clean["accuracy"]), "")
    for row in rob["perturbations"]:
        table.add_section()
        for s in row["severities"]:
            table.add_row(row["perturbation"], "-" if s["severity"] is None else str(s["severity"]), str(s["n"]),
                          _pct(s["accuracy"]), _pct(s["relative_drop"]))
        table.add_row(styled(row['perturbation'], "bold"), "mean", str(row["n"]), styled(_pct(row['accuracy']), "bold"),
                      _pct(row["relative_drop"]))
    table.add_section()
    table.add_row(styled("mean over perturbations", "bold"), "", "", styled(_pct(rob['mean_accuracy']), "bold"),
                  _pct(rob["mean_relative_drop"]))
    return table


def render_model(report: dict[str, Any], document: dict[str, Any]) -> None:
    """The full report of one model."""
    print_renderable(summary_table(report, document))
    print_renderable(per_class_table(report))
    n_classes = len(report["confusion_matrix"]["classes"])
    if n_classes <= MAX_MATRIX_CLASSES:
        print_renderable(confusion_table(report))
    else:
        info(f"confusion matrix: {n_classes} classes is too many to print here; "
             f"see --json (.models[].confusion_matrix) or the heatmap of --report DIR", style="dim")
    errors = report["errors"]
    if errors["most_confident"]:
        print_renderable(errors_table(report))
        print_renderable(pairs_table(report))
    if errors["never_predicted"]:
        names = errors["never_predicted"]
        warn(f"the model never predicted {len(names)} of {n_classes} classes: "
             f"{', '.join(names[:10])}{' ...' if len(names) > 10 else ''}")
    if report["robustness"]:
        print_renderable(robustness_table(report))
    if report["unknown"]["count"]:
        labels = ", ".join(f"{k} ({v})" for k, v in report["unknown"]["labels"].items())
        warn(f"{report['unknown']['count']} images with labels the model does not know were left out: {labels}")


def comparison_table(document: dict[str, Any]):
    rows = document["comparison"]
    table = make_table(title=f"model comparison (split {document['split']})", title_justify="left")
    table.add_column("")
    for row in rows:
        table.add_column(_short(row["model"], 24), justify="right")
    best_acc = max((r["accuracy"] or 0) for r in rows)

    def line(label: str, values: Sequence[str]) -> None:
        table.add_row(label, *values)

    line("arch", [r["arch"] for r in rows])
    line("images", [str(r["n_images"]) for r in rows])
    line("accuracy", [styled(_pct(r['accuracy']), "bold green") if (r["accuracy"] or 0) == best_acc
                      else _pct(r["accuracy"]) for r in rows])
    if any(r.get("accuracy_without_tta") is not None for r in rows):
        line("accuracy without TTA", [_pct(r.get("accuracy_without_tta")) for r in rows])
    line("balanced accuracy", [_pct(r["balanced_accuracy"]) for r in rows])
    line("macro F1", [_num(r["macro_f1"]) for r in rows])
    line("ECE", [_num(r["ece"]) for r in rows])
    line("log loss", [_num(r["log_loss"]) for r in rows])
    line("parameters", [f"{r['parameters']:,}" for r in rows])
    line("images/s", ["-" if r["images_per_second"] is None else f"{r['images_per_second']:.1f}" for r in rows])
    classes: list[str] = []
    for r in rows:
        classes += [c for c in r["per_class_f1"] if c not in classes]
    table.add_section()
    for name in classes:
        values = [r["per_class_f1"].get(name) for r in rows]
        line(f"F1 {name}", [styled(_num(v), _score_style(v)) if v is not None else "-" for v in values])
    return table


def render(document: dict[str, Any]) -> None:
    """The report on stderr: one model in full; several side by side (each in full with -v)."""
    if settings.verbosity < 0:
        return
    models = document["models"]
    if document.get("n_unsplit_as_test"):
        info(f"{document['n_unsplit_as_test']} records without a split were counted as test", style="dim")
    if document.get("n_unlabelled"):
        warn(f"{document['n_unlabelled']} selected records have no label and were left out")
    if len(models) == 1:
        render_model(models[0], document)
        return
    if settings.verbosity >= 1:
        for report in models:
            render_model(report, document)
    print_renderable(comparison_table(document))
    for report in models:
        never = report["errors"]["never_predicted"]
        if never:
            warn(f"{report['model']['name']} never predicted: {', '.join(never[:10])}{' ...' if len(never) > 10 else ''}")
