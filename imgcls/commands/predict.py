"""imgcls predict: labels for new images with a trained model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from imgcls.commands._common import common_options
from imgcls.commands._onnx import onnx_options
from imgcls.commands._inference import inference_options
from imgcls.evaluation.config import PREDICT
from imgcls.evaluation.predicting import CACHE_MIN_IMAGES, SORT_KEYS


@click.command("predict")
@click.argument("inputs", nargs=-1, metavar="[IMAGE|FOLDER|MANIFEST|-]...")
@inference_options("predict", PREDICT,
                   model_help="Model file or run folder. Default: $IMGCLS_MODEL, else runs/latest in the current "
                              "folder.",
                   cache_note=f" Used for {CACHE_MIN_IMAGES} images or more: fewer are decoded faster than a cache "
                              "lookup and write. Only a set whose every image decoded is stored.")
@click.option("-k", "--top-k", type=click.IntRange(min=1), default=3, show_default=True,
              help="How many labels (with probabilities) to give per image.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON line per image even on a terminal (the default when stdout is piped): "
                   '{"path", "label", "prob", "top_k": [{"label", "prob"}, ...]}; an unreadable image gives '
                   '{"path", "error", "reason"}.')
@click.option("--sort", "sort_by", type=click.Choice(SORT_KEYS), default="input", show_default=True,
              help="Order of the output. margin: smallest gap between the two most probable labels first; "
                   "entropy: most uncertain over all classes first (active labelling: label these first). "
                   "Both add \"margin\" and \"entropy\" to each line; unreadable images come last. "
                   "Sorting waits for the last image.")
@click.option("--table", "as_table", is_flag=True, help="A table for people even when stdout is piped.")
@click.option("--tta", is_flag=True,
              help="Test-time augmentation: average the softmax over views the model was trained to see: the "
                   "image, four small shifts, and the mirror image only if the model was trained with flips "
                   "(as imgcls eval --tta; stderr says which views). Costs one forward pass per view.")
@click.option("--explain", "explain_dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Write a Grad-CAM overlay per image to DIR (where the model looked for the label it gave; "
                   "brighter = more weight), named NNNNNN-<file stem>-gradcam.png by input position, and add "
                   "its path to each JSON line as \"overlay\". Needs the explain extra (grad-cam).")
@onnx_options
@common_options
def command(inputs: tuple[str, ...], model: str | None, top_k: int, as_json: bool, sort_by: str, as_table: bool, tta: bool,
            explain_dir: Path | None, batch_size: int, workers: int | None, device: str, cache_dir: Path | None,
            no_cache: bool, overrides) -> None:
    """Predict labels of images with a trained model.

    \b
      imgcls predict photo.jpg
      imgcls predict holiday/ --top-k 5 --model runs/latest
      find . -name '*.jpg' | imgcls predict - | jq -r 'select(.prob > 0.9) | .path'

    INPUTS are image files, folders (searched recursively for image files; hidden
    files and folders skipped), manifests (.jsonl/.json, or any file starting with
    '{'), or '-' for paths on stdin, one per line (a manifest piped in works too).
    With no INPUTS and a pipe on stdin, '-' is assumed.

    The model is --model, else $IMGCLS_MODEL, else runs/latest; stderr says which.
    An ONNX file (imgcls export) runs through onnxruntime, without torch.
    Each image is preprocessed exactly as the model was trained (size, channels,
    mean/std from its file), so predict and eval give the same probabilities;
    grayscale and colour images are converted to the model's channels.

    On a terminal the results are a table; piped (or --json) one JSON line per image
    in input order. An unreadable image gets an error line; the others are still
    predicted and the exit status is 1 at the end.

    From --cache-dir's threshold on, decoded images go through the on-disk cache
    that train and eval share: predicting the same unchanged files again (another
    model, a cron job) skips decoding; -v says whether it was a hit.
    """
    from imgcls.console import detail, info, warn
    from imgcls.errors import DataError, UsageProblem
    from imgcls.evaluation.predicting import gather_inputs, resolve_model

    if as_json and as_table:
        raise UsageProblem("--json and --table exclude each other")
    if no_cache and cache_dir is not None:
        raise UsageProblem("--cache-dir and --no-cache exclude each other")
    if not inputs:
        if sys.stdin.isatty():
            raise UsageProblem("no images given: pass image files, folders, a manifest, or '-' for paths on stdin")
        inputs = ("-",)
    from imgcls.evaluation import backends

    model_path, source = resolve_model(model)
    backends.check_options([model_path], tta=tta, explain=explain_dir is not None)
    if explain_dir is not None:
        from imgcls.evaluation.explain import require_gradcam

        require_gradcam("--explain")
    paths, notes = gather_inputs(inputs, stdin=sys.stdin)
    for note in notes:
        warn(note)
    if not paths:
        raise DataError("no images to predict: " + "; ".join(notes or ["the inputs list no image"]))

    from imgcls.evaluation.inference import predict_batches
    from imgcls.evaluation.predicting import cache_for, rows_in_order
    from imgcls.evaluation.progress import progress_bar

    device = backends.resolve_device(device, [model_path])
    net, minfo = backends.load(model_path, device, overrides)
    runtime = " via onnxruntime" if backends.is_onnx_path(model_path) else ""
    info(f"model: {model_path} (from {source}; {minfo.arch}{runtime}, {len(minfo.classes)} classes, "
         f"{minfo.image_size} px, {minfo.channels} ch)")
    cache = cache_for(len(paths), cache_dir, enabled=not no_cache)
    policy = None
    if tta:
        from imgcls.evaluation.tta import policy_for

        policy = policy_for(minfo)
        info(f"TTA: {policy.describe()}")
    detail(f"{len(paths)} images, device {device}" + (", TTA" if tta else "")
           + (f", decoded-image cache {cache}" if cache is not None else
              ", no decoded-image cache" + (f" (fewer than {CACHE_MIN_IMAGES} images)" if not no_cache else "")))
    k = min(top_k, len(minfo.classes))
    table_mode = as_table or (not as_json and sys.stdout.isatty())
    n_errors = 0
    rows = []
    explainer = None
    if explain_dir is not None:
        from imgcls.evaluation.explain import Explainer

        explainer = Explainer(net, minfo, explain_dir, device=device, batch_size=batch_size)
    with progress_bar(len(paths), "predict", min_total=batch_size + 1) as advance:
        batches = predict_batches(net, minfo, paths, batch_size=batch_size, device=device, workers=workers, tta=policy,
                                  on_batch=advance, cache_dir=cache)
        results = rows_in_order(batches, paths, minfo.classes, k, scores=sort_by != "input")
        for row in explainer.annotate(results) if explainer else results:
            n_errors += "error" in row
            if table_mode or sort_by != "input":
                rows.append(row)
            else:
                click.echo(_json_line(row))
    if sort_by != "input":
        from imgcls.evaluation.predicting import sort_rows

        rows = sort_rows(rows, sort_by)
        if not table_mode:
            for row in rows:
                click.echo(_json_line(row))
    if table_mode:
        _print_table(rows, k)
    if explainer is not None:
        info(f"{explainer.written} Grad-CAM overlays written to {explain_dir}")
    if n_errors:
        raise DataError(f"{n_errors} of {len(paths)} images could not be read (see their error lines)")


def _json_line(row: dict) -> str:
    """One result as standard JSON: no NaN (null instead); a file name that is not UTF-8 is written escaped."""
    from imgcls.manifest import _finite

    try:
        line = json.dumps(row, ensure_ascii=False, allow_nan=False)
    except ValueError:
        line = json.dumps(_finite(row), ensure_ascii=False, allow_nan=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        line = json.dumps(_finite(row), ensure_ascii=True)
    return line


def _print_table(rows: list[dict], k: int) -> None:
    """The table for people (stdout is a terminal, or --table): names are plain text, control characters visible."""
    from imgcls.console import print_renderable, styled, table as make_table

    columns: list = [("image", {"overflow": "fold"}), "label", ("prob", {"justify": "right"})]
    if k > 1:
        columns.append(f"next {k - 1}")
    table = make_table(*columns)
    for row in rows:
        if "error" in row:
            cells = [row["path"], styled("error", "red"), "", styled(row["error"], "red")]
        else:
            others = ", ".join(f"{t['label']} {t['prob']:.2f}" for t in row["top_k"][1:])
            cells = [row["path"], styled(row["label"], "bold"), f"{row['prob']:.3f}", others]
        table.add_row(*cells[: 4 if k > 1 else 3])
    print_renderable(table, file=sys.stdout)
