"""imgcls eval: metrics, error analysis, robustness and model comparison on a manifest."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import click

from imgcls.commands._common import common_options, open_input
from imgcls.commands._onnx import onnx_options
from imgcls.commands._inference import inference_options
from imgcls.evaluation.config import EVAL


def _sanitize(obj: Any) -> Any:
    """JSON has no NaN: non-finite floats become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _sanitize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_sanitize(v) for v in obj]
    return obj


@click.command("eval")
@click.argument("manifest", default="-", metavar="[MANIFEST]")
@inference_options("eval", EVAL, many_models=True,
                   model_help="Model to evaluate: a model.safetensors file or a run folder (runs/latest works). "
                              "Repeat to compare models side by side. Default: the \"model\" named in the manifest "
                              "header (what imgcls train/finetune print).")
@click.option("--split", type=click.Choice(["test", "val", "train", "all"]), default="test", show_default=True,
              help="Records to score. Records without a split count as test (a manifest without splits "
                   "is taken as a held-out set).")
@click.option("--json", "as_json", is_flag=True,
              help="Write the whole report as one JSON document to stdout (schema: docs/eval-json-schema.json). "
                   "Without it stdout stays empty.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Write the same JSON document to FILE (atomically).")
@click.option("--predictions", metavar="FILE",
              help="Write per-image predictions as a manifest: the scored records plus \"pred\", \"prob\" "
                   "(probability of pred) and \"probs\" (class -> probability). '-' for stdout. One model only.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Write pictures to DIR: confusion_matrix.png, reliability.png, learning_curves.png "
                   "(from the run's history.jsonl) and worst_errors.png, plus index.html (as --html). The "
                   "charts need matplotlib (the plots extra); the contact sheet and index.html do not. "
                   "Several models: one subfolder of pictures each, one index.html.")
@click.option("--html", "html_file", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Write the report as one self-contained HTML page (works offline and from file://; "
                   "inline SVG charts and pictures; the --json document embedded): summary, per-class table, "
                   "confusion matrix, calibration, learning curves, the --errors most confident mistakes with "
                   "Grad-CAM overlays (with the explain extra, grad-cam), confused pairs, robustness and, with "
                   "several --model, a comparison.")
@click.option("--top-k", type=click.IntRange(min=1), default=None,
              help="k of the top-k accuracy. Default: 5, or classes - 1 when there are fewer classes.")
@click.option("--bins", type=click.IntRange(min=1, max=1000), default=15, show_default=True,
              help="Equal-width confidence bins of the expected calibration error (ECE).")
@click.option("--errors", "n_errors", type=click.IntRange(min=0), default=10, show_default=True,
              help="How many most-confident mistakes and most-confused class pairs to list.")
@click.option("--ignore-unknown", is_flag=True,
              help="Leave out images whose label the model does not know (counted apart in the report) "
                   "instead of stopping with an error. Labels are matched by class name, not position.")
@click.option("--tta", is_flag=True,
              help="Test-time augmentation: average the softmax over views the model was trained to see: the "
                   "image, four small shifts (half the trained shift, or 1/32 of the side for models trained "
                   "without shifts) and the mirror image only if the model was trained with flips (read from the "
                   "model file; a file without that record gets no mirror). The report gives accuracy and log loss "
                   "with and without TTA side by side (--json: .models[].tta, .comparison[].accuracy_without_tta); "
                   "the other metrics are those of the TTA predictions. Costs one forward pass per view.")
@onnx_options
@common_options
def command(manifest: str, models: tuple[str, ...], split: str, as_json: bool, output: Path | None,
            predictions: str | None, report_dir: Path | None, html_file: Path | None, top_k: int | None,
            bins: int, n_errors: int, ignore_unknown: bool, batch_size: int, workers: int | None, device: str, tta: bool,
            cache_dir: Path | None, no_cache: bool, overrides) -> None:
    """Evaluate a model on a manifest: metrics, errors, calibration, robustness.

    Reads the manifest from MANIFEST or stdin ('-'), takes the records of --split
    (test by default) and runs the model the header names (imgcls train adds it) or
    each --model given:

    \b
      imgcls prepare flowers/ | imgcls train | imgcls eval
      imgcls eval data.jsonl --model runs/latest --json | jq '.models[0].metrics'
      imgcls eval data.jsonl -m runs/a -m runs/b      # side-by-side comparison

    Reports accuracy, balanced and top-k accuracy, per-class precision/recall/F1,
    macro and weighted averages, the confusion matrix, log loss and expected
    calibration error (scikit-learn), the most confident mistakes, the most confused
    pairs and classes never predicted. Records carrying "perturbation"/"severity"
    (imgcls perturb) are also grouped by them against clean accuracy (records
    without a perturbation).

    An ONNX model (imgcls export) runs through onnxruntime, without torch; an int8
    one is scored next to the float model it was quantised from.

    Manifest labels are matched to the model's classes by name. Every selected image
    must be readable. The report is printed on stderr; stdout carries only --json or
    --predictions - output, so nothing is printed there by default.
    """
    from imgcls.commands._ranks import is_main_rank

    if not is_main_rank():
        # Under torchrun, rank 0 evaluates alone (as a single process on its own device); the
        # other ranks end at once with status 0: scoring is cheap next to training, and one
        # process keeps the report, --predictions and the stdout stream exactly as without torchrun.
        return

    from imgcls.cache import resolve_cache_dir
    from imgcls.console import info
    from imgcls.errors import UsageProblem
    from imgcls.evaluation.evaluate import (
        build_document,
        check_model_given,
        evaluate_model,
        prediction_records,
        select_records,
    )
    from imgcls.evaluation import backends
    from imgcls.evaluation.progress import progress_bar
    from imgcls.manifest import read_all

    if no_cache and cache_dir is not None:
        raise UsageProblem("--cache-dir and --no-cache exclude each other")
    if predictions == "-" and as_json:
        raise UsageProblem("--predictions - and --json both want stdout: write one of them to a file "
                           "(--predictions FILE or -o report.json)")
    from imgcls.fsutil import check_output

    # Before any work: the outputs can be written, and none of them is the input manifest.
    inputs = [manifest]
    output_target = check_output(output, "-o", inputs=inputs) if output is not None else None
    predictions_target = check_output(predictions, "--predictions", inputs=inputs) if predictions else None
    html_target = check_output(html_file, "--html", inputs=inputs) if html_file is not None else None
    named = [(t, f"{option} {value}") for t, option, value in
             ((output_target, "-o", output), (predictions_target, "--predictions", predictions),
              (html_target, "--html", html_file)) if t is not None and t.path is not None]
    for i, (target, label) in enumerate(named):
        for other, other_label in named[i + 1:]:
            if target.path == other.path:
                raise UsageProblem(f"{label} and {other_label} name the same file")
    if report_dir is not None and report_dir.exists() and not report_dir.is_dir():
        raise UsageProblem(f"--report {report_dir}: exists and is not a folder")
    header, records, reader = read_all(open_input(manifest))
    model_paths = check_model_given(models, reader.header, reader.name)
    if predictions and len(model_paths) > 1:
        raise UsageProblem("--predictions takes one model; run eval once per model to write their predictions")
    model_paths = backends.with_float_sources(model_paths, overrides)
    backends.check_options(model_paths, tta=tta)
    selection = select_records(records, reader.resolve, split, reader.name)
    device = backends.resolve_device(device, model_paths)

    cache = resolve_cache_dir(cache_dir, enabled=not no_cache)

    def progress(total: int, description: str):
        return progress_bar(total, description, min_total=batch_size + 1)

    evaluations = [
        evaluate_model(path, selection, device=device, batch_size=batch_size, workers=workers, tta=tta, top_k=top_k,
                       bins=bins, n_errors=n_errors, ignore_unknown=ignore_unknown, cache_dir=cache,
                       progress=progress, overrides=overrides)
        for path in model_paths
    ]
    document = _sanitize(build_document(
        evaluations, selection, manifest=reader.name,
        settings={"top_k": top_k, "bins": bins, "errors": n_errors, "tta": tta, "device": device,
                  "batch_size": batch_size, "ignore_unknown": ignore_unknown, "cache": cache is not None}))

    from imgcls.evaluation.report import render

    render(document)
    text = json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    if output_target is not None:
        from imgcls.fsutil import write_output

        write_output(output_target, text, inputs=inputs)
        info(f"report written to {output}")
    if predictions:
        from imgcls.manifest import write_manifest

        ev = evaluations[0]
        out_header = {**(reader.header or header), "classes": list(ev.info.classes),
                      "predictions": {"model": str(ev.path.resolve()), "split": split, "tta": tta}}
        out_header.pop("_inferred", None)
        n = write_manifest(predictions_target, out_header, _sanitize(prediction_records(ev)), inputs=inputs)
        if predictions != "-":
            info(f"{n} predictions written to {predictions}")
    if as_json:
        click.echo(text, nl=False)
    pages = [p for p in (html_target, report_dir / "index.html" if report_dir is not None else None) if p]
    if pages:
        from imgcls.evaluation.htmlassets import write_pages

        write_pages(evaluations, document, pages, device=device, inputs=inputs)
    if report_dir is not None:
        _write_pictures(evaluations, report_dir)


def _write_pictures(evaluations, folder: Path) -> None:
    from imgcls.console import detail, info
    from imgcls.evaluation.plots import MissingPlots, write_report

    missing: MissingPlots | None = None
    used: set[str] = set()
    for k, ev in enumerate(evaluations):
        target = folder
        if len(evaluations) > 1:
            name = ev.label if ev.label not in used else f"{ev.label}-{k + 1}"
            used.add(name)
            target = folder / name
        try:
            written, notes = write_report(ev.report, ev.path, target)
        except MissingPlots as exc:
            missing = exc
            continue
        for note in notes:
            detail(note)
        info(f"pictures written to {target}: {', '.join(p.name for p in written)}")
    if missing is not None:
        raise missing
