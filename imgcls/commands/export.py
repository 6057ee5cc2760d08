"""imgcls export: a model file as ONNX or TorchScript, checked against the torch model."""

from __future__ import annotations

import sys

import click

from imgcls.commands._common import common_options
from imgcls.export import EXPORTERS, FORMATS, ExportConfig

DEFAULTS = ExportConfig()


@click.command("export")
@click.argument("model", required=False, metavar="[MODEL|RUN_DIR|-]")
@click.option("-f", "--format", "fmt", type=click.Choice(FORMATS), default=DEFAULTS.format, show_default=True,
              help="onnx (runs anywhere onnxruntime does, and in imgcls predict/eval without torch) or "
                   "torchscript (torch.jit.load from C++ or Python).")
@click.option("-o", "--output", metavar="FILE",
              help="Where to write the exported model (atomically; '-' for stdout). Default: beside the model, "
                   "model.onnx (model-int8.onnx with --int8) or model.pt.")
@click.option("--check/--no-check", default=DEFAULTS.check, show_default=True,
              help="Run the exported model on a few images (random, flat grey, and calibration images with "
                   "--int8) in batches of 3 and of 1, compare its probabilities with the torch model's and "
                   "print the largest difference; above --tolerance it is an error and nothing is written.")
@click.option("--tolerance", type=click.FloatRange(min=0), default=DEFAULTS.tolerance, show_default=True,
              help="Largest absolute difference of probabilities --check accepts (float exports).")
@click.option("--exporter", type=click.Choice(EXPORTERS), default=DEFAULTS.exporter, show_default=True,
              help="ONNX only: torch's TorchScript-based exporter (legacy: fast, opset 17), its torch.export "
                   "one (dynamo: needs onnxscript, several seconds), or auto: legacy where this torch has it, "
                   "dynamo when it fails.")
@click.option("--int8", is_flag=True,
              help="ONNX only: quantise to int8 with onnxruntime (static, per-channel weights, calibrated on "
                   "real images: --calibration, or the records of the manifest piped in). Faster on the CPU; "
                   "imgcls eval scores it next to the float model. The check reports, not enforces, its "
                   "difference from the torch model.")
@click.option("--calibration", metavar="MANIFEST|FOLDER",
              help="Images to calibrate --int8 on: a manifest (its train records, else all) or a folder. "
                   "Default: the manifest on stdin.")
@click.option("--calibration-images", type=click.IntRange(min=1), default=DEFAULTS.calibration_images,
              show_default=True, help="How many calibration images --int8 uses (spread evenly over the set).")
@common_options
def command(model: str | None, fmt: str, output: str | None, check: bool, tolerance: float, exporter: str,
            int8: bool, calibration: str | None, calibration_images: int) -> None:
    """Export a model to ONNX or TorchScript for use outside imgcls.

    \b
      imgcls export runs/latest                      # runs/<run>/model.onnx
      imgcls export model.safetensors -o cls.onnx --format onnx
      imgcls prepare d/ | imgcls train | imgcls export | imgcls eval   # eval scores the ONNX model

    MODEL is a model.safetensors file, a run folder, or '-' for the manifest imgcls
    train prints (its header names the model). Without MODEL: the manifest on stdin
    when one is piped in, else $IMGCLS_MODEL, else runs/latest. When the model came
    from stdin, the manifest goes on to stdout with the exported ONNX model as its
    "model" (the safetensors file stays as "model_source").

    The exported model takes a float32 batch N x C x S x S (any N), preprocessed as
    imgcls-export(1) describes, and returns logits and probabilities. It carries
    classes, input size, channels, mean/std, architecture and imgcls version (ONNX
    metadata_props, TorchScript extra file imgcls.json). imgcls predict and eval run an
    ONNX file through onnxruntime, without torch. Needs the onnx extra
    (pip install 'imgcls[onnx]') for ONNX.
    """
    from pathlib import Path

    from imgcls.console import info, warn
    from imgcls.errors import UsageProblem
    from imgcls.evaluation.onnx_backend import is_onnx_path
    from imgcls.evaluation.predicting import resolve_model
    from imgcls.export import default_output, require_onnx_export
    from imgcls.fsutil import check_output

    if fmt != "onnx":
        if int8:
            raise UsageProblem("--int8: only for --format onnx (onnxruntime's quantisation)")
        if exporter != DEFAULTS.exporter:
            raise UsageProblem(f"--exporter {exporter}: only for --format onnx")
    if calibration is not None and not int8:
        raise UsageProblem("--calibration: only with --int8")
    header = records = reader = None
    if model == "-" or (model is None and not sys.stdin.isatty()):
        from imgcls.commands._common import open_input
        from imgcls.evaluation.evaluate import check_model_given
        from imgcls.manifest import read_all

        _, records, reader = read_all(open_input("-"))
        header = reader.header
        model_path, _ = resolve_model(check_model_given([], header, reader.name)[0])
        source = f"the header of {reader.name}"
    else:
        model_path, source = resolve_model(model)
        source = "MODEL" if model else source
    if is_onnx_path(model_path):
        raise UsageProblem(f"{model_path}: already an ONNX model; export reads a model.safetensors file or run folder")
    if int8 and calibration is None and records is None:
        raise UsageProblem("--int8 needs images to calibrate on: --calibration MANIFEST|FOLDER, or pipe in a "
                           "manifest (imgcls train ... | imgcls export --int8)")
    if fmt == "onnx":
        require_onnx_export()
    dest = output or str(default_output(model_path, fmt, int8))
    if dest == "-" and sys.stdout.isatty():
        raise UsageProblem("-o -: stdout is a terminal; give a file name (the model is binary)")
    inputs = [str(model_path)] + ([calibration] if calibration else [])
    target = check_output(dest, "-o", inputs=inputs)
    passthrough = header is not None and dest != "-"

    from imgcls.export import export_model
    from imgcls.models.io import load_model

    net, minfo = load_model(model_path, "cpu")
    info(f"model: {model_path} (from {source}; {minfo.arch}, {len(minfo.classes)} classes, {minfo.image_size} px, "
         f"{minfo.channels} ch) -> {fmt}{' int8' if int8 else ''}")
    images = None
    if int8:
        images = _calibration_images(calibration, records, reader, minfo, calibration_images)
        info(f"calibrating on {len(images)} images from {calibration or (reader.name if reader else '-')}")
    config = ExportConfig(format=fmt, check=check, tolerance=tolerance, exporter=exporter, int8=int8,
                          calibration_images=calibration_images)
    from imgcls.console import detail

    result = export_model(net, minfo, model_path, config, calibration=images, on_stage=detail)
    for note in result.notes:
        warn(note)
    if result.check is not None:
        c = result.check
        info(f"check: max |p({fmt}) - p(torch)| = {c.max_abs_diff:.2e} on {c.n_inputs} images, batches of "
             f"{' and '.join(map(str, c.batches))} (tolerance {tolerance:g}): ok")
    if result.int8_check is not None:
        c = result.int8_check
        info(f"int8: max |p(int8) - p(torch)| = {c.max_abs_diff:.2e}, same top-1 class on {c.agreement:.0%} of "
             f"{c.n_inputs} images (reported, not enforced: imgcls eval -m {Path(dest).name} scores both)")
    from imgcls.fsutil import write_output

    write_output(target, result.data, inputs=inputs)
    how = f"{result.exporter} exporter, " if result.exporter else ""
    size = len(result.data)
    shown = f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.0f} kB"
    info(f"{fmt}{' int8' if int8 else ''} model written to {dest} ({shown}; {how}{result.seconds:.1f} s)")
    if passthrough:
        assert header is not None and records is not None  # read together from stdin
        _pass_on(header, records, model_path, Path(dest), fmt)


def _calibration_images(calibration, records, reader, minfo, limit: int):
    """Up to ``limit`` decoded images (uint8), evenly spread; unreadable ones skipped with a warning."""
    import numpy as np

    from imgcls.console import warn
    from imgcls.errors import DataError
    from imgcls.evaluation.inference import iter_decoded

    if calibration is not None:
        from pathlib import Path

        from imgcls.evaluation.predicting import _looks_like_manifest, gather_inputs

        if Path(calibration).is_file() and _looks_like_manifest(Path(calibration)):
            from imgcls.manifest import read_all

            _, found, manifest = read_all(calibration)
            paths = _train_first(found, manifest)
        else:
            paths, _ = gather_inputs([calibration])  # a folder (recursively) or one image
    else:
        paths = _train_first(records, reader)
    if not paths:
        raise DataError(f"{calibration or reader.name}: no images to calibrate --int8 on")
    if len(paths) > limit:
        paths = [paths[round(i * (len(paths) - 1) / (limit - 1))] for i in range(limit)] if limit > 1 else paths[:1]
    arrays, bad = [], 0
    for _, array, errors in iter_decoded(paths, minfo.image_size, minfo.channels, 16, workers=2):
        bad += len(errors)
        if array is not None:
            arrays.append(array)
    if bad:
        warn(f"{bad} calibration images could not be read and were skipped")
    if not arrays:
        raise DataError(f"{calibration or reader.name}: none of the calibration images could be read")
    return np.concatenate(arrays)


def _train_first(records, reader) -> list[str]:
    chosen = [r for r in records if r.get("split") == "train"] or list(records)
    return [str(reader.resolve(r)) for r in chosen]


def _pass_on(header: dict, records: list, model_path, dest, fmt: str) -> None:
    """The manifest that came in, on to stdout: an ONNX export becomes the header's "model"."""
    from imgcls.manifest import write_manifest

    out = {k: v for k, v in header.items() if not k.startswith("_")}
    if fmt == "onnx":
        out["model_source"] = str(model_path.resolve())
        out["model"] = str(dest.resolve())
    else:
        out[fmt] = str(dest.resolve())
    if sys.stdout.isatty():
        return
    write_manifest("-", out, records)
