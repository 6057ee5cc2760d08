"""imgcls augment: write augmented copies of the training images (Pillow/NumPy, no torch)."""

from __future__ import annotations

import time

import click

from imgcls.commands._common import common_options, open_input
from imgcls.commands._lazyhelp import LazyEpilogCommand
from imgcls.training.config import AUGMENTS, describe_augment_preset

OFFLINE_PRESETS = tuple(name for name in AUGMENTS if name != "none")


def _ops_help() -> str:
    """The --ops syntax and table for --help (built on demand: it needs imgcls.augment)."""
    from imgcls.augment import OPS_SYNTAX, ops_table

    lines = [f"{syntax} [{default}]: {meaning}" if default else f"{syntax}: {meaning}"
             for syntax, default, meaning in ops_table()]
    return OPS_SYNTAX.replace("\n", " ") + "\n\n\b\nOperations (OP[:VALUE] [default VALUE]: meaning):\n  " + "\n  ".join(lines)


def man_sections() -> dict[str, str]:
    """Man page sections built from imgcls.augment's tables (for imgcls.manpage), so they cannot drift."""
    from imgcls.augment import OPS_SYNTAX, PRESETS, describe_pipeline, ops_table

    rows = ops_table()
    width = max(len(s) for s, _, _ in rows)
    table = "\n".join(f"    {syntax:<{width}}  {default:<5}  {meaning}" for syntax, default, meaning in rows)
    presets = "\n".join(f"    {name:<9} {describe_pipeline(ops)}" for name, ops in PRESETS.items())
    return {"OPERATIONS": OPS_SYNTAX.replace("\n", " ") + "\n\n" + table,
            "PRESETS": "The offline twins of imgcls train --augment:\n\n" + presets}


def _list_ops(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from imgcls.augment import PRESETS, describe_pipeline, ops_table

    rows = ops_table()
    width = max(len(s) for s, _, _ in rows)
    for syntax, default, meaning in rows:
        click.echo(f"{syntax:<{width}}  {default:<5}  {meaning}")
    click.echo("")
    for name, ops in PRESETS.items():
        click.echo(f"preset {name}: {describe_pipeline(ops)}")
    ctx.exit(0)


EPILOG = """\b
Examples:
  imgcls prepare data/ | imgcls augment --out data-aug/ --copies 4 > aug.jsonl
  imgcls augment m.jsonl --out aug/ --ops rotate:20,shift:0.1,flip,noise:0.05@0.5
  imgcls augment m.jsonl --out bal/ --balance --preset light     # oversample minority classes

\b
Files: <out>/<class index>/<hash>-<copy>.<ext>, named from a hash of the source record,
never from a label or path. Records: each source is followed by its copies, with
origin (the source's path), origin_sha256, transform (the ops and the parameters
actually applied, in order; they replay exactly) and a new sha256/width/height/mode;
other fields (label, fold, unknown ones) are kept, split is train. Val and test records
and earlier copies pass through untouched and are never augmented.

\b
If any source image cannot be read the run stops with an error naming it (exit 1) and
removes every file it planned to write: the output is complete or absent.
"""


@click.command(cls=LazyEpilogCommand, epilog=EPILOG, epilog_factory=_ops_help)
@click.argument("manifest", default="-", metavar="[MANIFEST]")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for the augmented images (required). Must be new or empty unless --force.")
@click.option("--copies", type=click.IntRange(min=0), default=None,
              help="Augmented copies per training image. Default 2; with --balance/--per-class default 0 "
                   "(each class is filled up to the target x (1 + copies)).")
@click.option("--preset", type=click.Choice(OFFLINE_PRESETS), default="standard", show_default=True,
              help="Ops preset, the offline twin of `imgcls train --augment` (the same magnitudes): "
                   + "; ".join(f"{name} = {describe_augment_preset(name)}" for name in OFFLINE_PRESETS)
                   + " (standard: Keras ImageDataGenerator-like; strong's TrivialAugmentWide is the op trivial, "
                     "one op with a random magnitude). --list-ops shows each preset's ops.")
@click.option("--ops", "ops_text", default=None, metavar="SPEC",
              help="Explicit ops instead of --preset, e.g. rotate:15,shift:0.1,flip (syntax below; --list-ops).")
@click.option("--flip/--no-flip", default=True, show_default=True,
              help="Keep the flips of the preset or --ops. --no-flip drops them: for digits, text and anything "
                   "whose mirror image is another class (as train's --no-flip).")
@click.option("--balance", is_flag=True, default=False,
              help="Oversample minority classes with augmented copies up to the majority class's count of "
                   "training images (originals are never dropped).")
@click.option("--per-class", type=click.IntRange(min=1), default=None,
              help="Like --balance, but fill every class up to N training images.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Random seed; each copy's parameters depend only on the seed, the source record "
                   "(path and sha256) and the copy number, not on --jobs.")
@click.option("--format", "fmt", type=click.Choice(["png", "jpg"]), default="png", show_default=True,
              help="Image format of the copies (png: lossless, fast compression; jpg: quality 95).")
@click.option("--fill", type=click.Choice(["edge", "border", "black", "white"]), default="edge", show_default=True,
              help="Areas uncovered by rotate/shift/zoom/shear: edge repeats the nearest edge pixel (Keras' "
                   "fill_mode=nearest, as train's on-the-fly augmentation); border = the median colour of the "
                   "image's edge; black; white.")
@click.option("--jobs", "-j", type=click.IntRange(min=0), default=0, show_default=True,
              help="Worker processes (0 = all usable cores). Small runs (< 1000 images) stay in one process.")
@click.option("--force", is_flag=True, default=False,
              help="Write into a non-empty --out (files with the same names are replaced, others kept).")
@click.option("--list-ops", is_flag=True, expose_value=False, is_eager=True, callback=_list_ops,
              help="Print the operations, their default values and the presets, then exit.")
@common_options
def command(manifest, out_dir, copies, preset, ops_text, flip, balance, per_class, seed, fmt, fill, jobs, force):
    """Write augmented copies of the training images and print the extended manifest.

    Reads a manifest (file or - for stdin), writes --copies augmented versions of each
    TRAINING image into --out, and prints a manifest on stdout with the original
    records plus the copies; its header gains an "augment" fact (ops, seed, folder).
    Validation and test records pass through untouched: augmentation never leaks into
    evaluation. Uses Pillow and NumPy only, on all cores.
    """
    from imgcls import console
    from imgcls.augment import AugmentConfig, augment_manifest, describe_pipeline, pipeline_for
    from imgcls.errors import UsageProblem
    from imgcls.manifest import read_all, write_manifest

    ctx = click.get_current_context()
    if out_dir is None:
        raise UsageProblem("--out DIR is required: the folder the augmented images are written to")
    preset_given = ctx.get_parameter_source("preset") not in (click.core.ParameterSource.DEFAULT, None)
    if ops_text is not None and preset_given:
        raise UsageProblem("--ops and --preset both given: use one (a preset name may appear inside --ops)")
    ops = pipeline_for(preset, ops_text, flip=flip)
    if not ops:
        raise UsageProblem("no operations left to apply (--no-flip removed the only one)")
    balancing = balance or per_class is not None
    if copies is None:
        copies = 0 if balancing else 2
    if not balancing and copies == 0:
        raise UsageProblem("--copies 0 without --balance/--per-class would write nothing")

    header, records, reader = read_all(open_input(manifest))
    if header.get("_inferred") and records:
        console.detail("no manifest header: classes taken from the sorted labels")

    started = time.perf_counter()
    new_header, out_records, plan = augment_manifest(
        header, records, reader.resolve, out_dir,
        AugmentConfig(ops, copies=copies, balance=balance, per_class=per_class, seed=seed, fill=fill, fmt=fmt,
                      jobs=jobs, force=force),
        emit=lambda h, r: write_manifest("-", h, r),
    )
    elapsed = time.perf_counter() - started

    sources = len(plan.sources)
    rate = plan.total / elapsed if elapsed > 0 else 0.0
    console.info(f"augment: {plan.total} copies of {sources} training images written to "
                 f"{new_header['augment']['out']} ({elapsed:.1f} s, {rate:.0f} images/s); ops {describe_pipeline(ops)}")
    if balancing:
        before = ", ".join(f"{k or '(unlabelled)'} {v}" for k, v in sorted(plan.per_class_before.items()))
        after = ", ".join(f"{k or '(unlabelled)'} {v}" for k, v in sorted(plan.per_class_after.items()))
        console.info(f"training images per class: {before} -> {after}")
    if not records or not any(r.get("split", "train") == "train" for r in records):
        console.warn("the manifest has no training records: nothing was augmented")
