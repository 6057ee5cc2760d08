"""imgcls perturb: robustness test sets, corruption families x 5 severities (Pillow/NumPy, no torch)."""

from __future__ import annotations

import time

import click

from imgcls.commands._common import common_options, open_input
from imgcls.commands._lazyhelp import LazyEpilogCommand


def _severity_help() -> str:
    """The severity table for --help (built on demand: it needs imgcls.perturb)."""
    from imgcls.perturb import severity_rows

    lines = [f"{family}: {values}  ({meaning})" for family, values, meaning in severity_rows()]
    return "\b\nSeverity table, levels 1 / 2 / 3 / 4 / 5:\n  " + "\n  ".join(lines)


def _table_lines() -> list[str]:
    from imgcls.perturb import severity_rows

    rows = severity_rows()
    w1 = max(len(r[0]) for r in rows)
    w2 = max(len(r[1]) for r in rows)
    return [f"{'family':<{w1}}  {'severity 1 / 2 / 3 / 4 / 5':<{w2}}  meaning"] + [
        f"{family:<{w1}}  {values:<{w2}}  {meaning}" for family, values, meaning in rows]


def man_sections() -> dict[str, str]:
    """Man page sections built from imgcls.perturb.SEVERITY_TABLE (for imgcls.manpage), so they cannot drift."""
    intro = ("Each family has five levels, 1 mild to 5 severe (the ImageNet-C convention); the parameters "
             "are fixed, so results compare between runs. Sizes that depend on the image are relative to its "
             "shorter side.")
    return {"SEVERITY LEVELS": intro + "\n\n" + "\n".join("    " + line for line in _table_lines())}


def _list(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    for line in _table_lines():
        click.echo(line)
    ctx.exit(0)


EPILOG = """\b
Examples:
  imgcls perturb m.jsonl --out pert/ | imgcls eval --model runs/latest
  imgcls perturb m.jsonl --out pert/ --kinds rotation,shift,gaussian_noise --severity 1,3,5
  imgcls perturb m.jsonl --out pert/ --kinds thin,thick,shrink --severity 3 --no-clean

\b
Output records: for each selected record, the clean record itself (unless --no-clean),
then one record per family and severity with perturbation, severity, origin (the
source's path), origin_sha256, transform (the parameters used) and the new file's
sha256/width/height/mode; label, split and other fields are kept. Records of other
splits and already-perturbed records are left out. Files: <out>/<family>/<severity>/
<hash>.png (lossless, so only the perturbation changes pixels), named from a hash of
the source record, never from a label or path.

\b
Random choices (a rotation's sign, a shift's direction, noise, the occluder's and the
shrunk object's place, the elastic field) come from --seed and the image, so a run is
reproducible. thin/thick: the foreground is what contrasts with the image's border
colour (bright strokes on a dark background, as MNIST, or dark ink on a light one);
thin erodes it, thick dilates it, with sub-pixel radii (worked at 4x on small images).
An unreadable source image stops the run (exit 1) and every file it planned is removed.
"""


@click.command(cls=LazyEpilogCommand, epilog=EPILOG, epilog_factory=_severity_help)
@click.argument("manifest", default="-", metavar="[MANIFEST]")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for the perturbed images (required). Must be new or empty unless --force.")
@click.option("--kinds", default="all", show_default=True, metavar="LIST",
              help="Comma-separated perturbation families (see the table below or --list), or all.")
@click.option("--severity", "severity_text", default="1-5", show_default=True, metavar="LEVELS",
              help="Severity levels, ImageNet-C style 1 (mild) to 5: a level (3), a range (1-5) or a list (1,3,5).")
@click.option("--split", type=click.Choice(["test", "val", "train", "all"]), default="test", show_default=True,
              help="Which records to perturb; records of other splits are left out of the output.")
@click.option("--clean/--no-clean", default=True, show_default=True,
              help="Also print the clean (unperturbed) records, so `| imgcls eval` compares clean and perturbed "
                   "accuracy in one run.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Random seed; results depend only on it and on each source record (path and sha256).")
@click.option("--fill", type=click.Choice(["border", "black", "white"]), default="border", show_default=True,
              help="Colour of areas uncovered by rotation, shift, zoom_out and shrink: border (the median colour of "
                   "the image's edge, i.e. its background), black or white.")
@click.option("--jobs", "-j", type=click.IntRange(min=0), default=0, show_default=True,
              help="Worker processes (0 = all usable cores). Small runs (< 1000 images) stay in one process.")
@click.option("--force", is_flag=True, default=False,
              help="Write into a non-empty --out (files with the same names are replaced, others kept).")
@click.option("--list", "list_", is_flag=True, expose_value=False, is_eager=True, callback=_list,
              help="Print the families and their severity parameters, then exit.")
@common_options
def command(manifest, out_dir, kinds, severity_text, split, clean, seed, fill, jobs, force):
    """Write perturbed copies of the test images and print them as a manifest.

    Reads a manifest (file or - for stdin), applies each perturbation family at each
    severity to every record of --split (default test), writes the images into --out
    and prints a manifest whose records carry perturbation, severity and origin, plus
    the clean records: pipe it into `imgcls eval` for the robustness table.
    Uses Pillow and NumPy only, on all cores.
    """
    from imgcls import console
    from imgcls.errors import UsageProblem
    from imgcls.manifest import read_all, write_manifest
    from imgcls.perturb import PerturbConfig, parse_kinds, parse_severities, perturb_manifest

    if out_dir is None:
        raise UsageProblem("--out DIR is required: the folder the perturbed images are written to")
    families = parse_kinds(kinds)
    severities = parse_severities(severity_text)

    header, records, reader = read_all(open_input(manifest))
    started = time.perf_counter()
    new_header, out_records, written = perturb_manifest(
        header, records, reader.resolve, out_dir,
        PerturbConfig(families, severities, split=split, clean=clean, seed=seed, fill=fill, jobs=jobs, force=force),
        emit=lambda h, r: write_manifest("-", h, r),
    )
    elapsed = time.perf_counter() - started
    sources = written // max(1, len(families) * len(severities))
    rate = written / elapsed if elapsed > 0 else 0.0
    console.info(f"perturb: {sources} {split if split != 'all' else ''} images x {len(families)} families x "
                 f"{len(severities)} severities = {written} images written to {new_header['perturb']['out']} "
                 f"({elapsed:.1f} s, {rate:.0f} images/s)".replace("  ", " "))
