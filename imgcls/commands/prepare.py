"""``imgcls prepare``: folders of images (or manifests) -> a checked, split manifest."""

from __future__ import annotations

import contextlib
import os
from collections import Counter

import click

from imgcls.commands._common import common_options, open_input
from imgcls.console import detail, get_console, info, is_interactive, print_renderable, settings, warn
from imgcls.errors import UsageProblem

MAX_LISTED_REJECTS = 10


class SplitSize(click.ParamType):
    """A fraction (0.15) or a whole count (100)."""

    name = "SIZE"

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        from imgcls.prepare import parse_size

        try:
            return parse_size(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _class_list(ctx, param, value):
    if value is None:
        return None
    names = [v.strip() for v in value.split(",")]
    if not all(names):
        raise click.BadParameter("class names must be non-empty (e.g. --classes cat,dog)")
    if len(set(names)) != len(names):
        raise click.BadParameter("a class is listed twice")
    return names


@click.command(context_settings={"show_default": True})
@click.argument("src", nargs=-1, required=True, metavar="SRC...")
@click.option("--val", type=SplitSize(), default="0.15", show_default=True,
              help="Validation split: a fraction (< 1) of each class (rounded, halves up), or a whole count "
                   "of images in all (shared across classes in proportion to their size). 0 = no validation split.")
@click.option("--test", type=SplitSize(), default="0.15", show_default=True,
              help="Test split, as --val. 0 = no test split.")
@click.option("--folds", type=click.IntRange(min=2), default=None,
              help="Also assign K stratified cross-validation folds over the train+val images "
                   "(records get \"fold\": 0..K-1; duplicates share a fold).")
@click.option("--classes", callback=_class_list, default=None, metavar="A,B,...",
              help="Keep only these classes, in this order (the order defines class indices).")
@click.option("--top", type=click.IntRange(min=1), default=None, metavar="N",
              help="Keep the N classes with the most usable images (ties: alphabetical).")
@click.option("--min-per-class", type=click.IntRange(min=1), default=None, metavar="N",
              help="Drop classes with fewer than N usable images (applied before --top).")
@click.option("--max-per-class", type=click.IntRange(min=1), default=None, metavar="N",
              help="Keep at most N TRAINING images per class (seeded subsample after the split, for "
                   "limited-data studies): val/test stay the same for every N, and the images kept "
                   "for a smaller N are a subset of those kept for a larger one.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed for the split, folds and subsampling. Same seed + same images = same manifest.")
@click.option("--resplit", is_flag=True, default=False,
              help="Ignore the splits of pre-split folders and input manifests and split afresh.")
@click.option("--dedup", is_flag=True, default=False,
              help="Keep one copy of identical images (first path in sorted order); the other copies "
                   "are rejected with reason 'duplicate'. Without it, all copies are kept in one split.")
@click.option("--exclude", "exclude", multiple=True, metavar="FILE",
              help="Leave out the images FILE names, before decoding: a manifest (e.g. the flagged records of "
                   "imgcls audit: jq -c 'select(.audit)') or paths one per line. Matched by absolute path; "
                   "the files themselves are not touched. Repeatable.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True, allow_dash=True), default="-",
              show_default=True, help="Write the manifest here (atomically: complete or not at all); - is stdout.")
@click.option("--rejects", "rejects_path", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write rejected files as JSON Lines: {path, reason, message, label}.")
@click.option("--relative", is_flag=True, default=False,
              help="Write paths relative to the header's root instead of absolute paths (absolute is the "
                   "default so that jq-filtered streams without the header still work).")
@click.option("--jobs", "-j", type=click.IntRange(min=0), default=0, show_default=True,
              help="Processes decoding images; 0 = all available cores.")
@click.option("--sample", type=click.Choice(["digits"]), default=None,
              help="Materialise a built-in sample into SRC (one folder, created) and prepare it: digits = "
                   "scikit-learn's 1,797 8x8 handwritten digits as SRC/<digit>/NNNNN.png.")
@click.option("--import", "import_format", type=click.Choice(["idx", "cifar"]), default=None,
              help="Import downloaded files into the LAST argument (a folder, created) as "
                   "DEST/{train,test}/<class>/NNNNN.png, then prepare it (val is drawn from train). "
                   "idx: MNIST-family IDX images/labels files, gzipped or not (or their folder); names with "
                   "t10k/test are the test split. cifar: CIFAR-10/100 python batches (folder, files, or "
                   "the .tar.gz), read without running pickled code.")
@click.option("--class-names", default=None, metavar="A,B,...|PRESET",
              help="With --import: class names for labels 0,1,2,...; or a preset: fashion-mnist, mnist, "
                   "cifar10. Default: IDX \"0\"..\"9\"; CIFAR the names in its meta file.")
@click.option("--coarse", is_flag=True, default=False,
              help="With --import cifar on CIFAR-100: use the 20 coarse superclasses.")
@click.option("--force", is_flag=True, default=False,
              help="With --sample/--import: write into a non-empty DEST (same-name files are replaced, "
                   "nothing is deleted). Without it DEST must be new, empty, or hold this same import.")
@common_options
def command(src, val, test, folds, classes, top, min_per_class, max_per_class, seed, resplit, dedup, exclude,
            output, rejects_path, relative, jobs, sample, import_format, class_names, coarse, force):
    """Check, deduplicate and split images into a manifest.

    \b
    SRC is one or more of:
      FOLDER/<class>/...              one subfolder per class (nested folders allowed)
      FOLDER/{train,val,test}/<class>/ pre-split: kept as is (valid/validation = val);
                                       a missing val or test split is drawn from train
      MANIFEST.jsonl or -             existing manifests: merged, filtered, re-checked;
                                       their splits are kept unless --resplit

    \b
    Every image is decoded (all cores). Hidden entries and files without an image
    extension are ignored and counted. Empty, truncated, non-image, unreadable and
    decompression-bomb files, dangling symlinks, symlink loops, FIFOs and devices,
    names that are not UTF-8, and float or 32-bit images whose values have no 8-bit
    meaning are rejected (listed on stderr, and in --rejects). 16-bit images are
    scaled to 8 bits (0..65535 -> 0..255), float images from 0..1. Your files are
    never modified; -o and --rejects refuse to overwrite an input.

    \b
    Identical files (same SHA-256) always land in the same split. Identical files
    filed under different classes are a labelling problem: all copies are rejected
    as 'conflicting-labels'. In a pre-split layout, a duplicate across splits is kept
    only in the most held-out split (test, then val) and rejected elsewhere.

    \b
    The split is stratified per class and seeded, and depends only on image content:
    renaming or moving files does not change it. Tiny classes: a class keeps at least
    one training image; a 2-image class gets 1 test image (or val without --test);
    3+ images get at least one per requested split; a 1-image class is train only.

    \b
    Order of work: --exclude and --classes (before decoding), decode checks, duplicates,
    --min-per-class, --top, split, --max-per-class, --folds. Classes are sorted by
    name; input manifests keep their header order, folders written by --sample or
    --import keep the dataset's label order, and --classes sets its own.
    Symlinks are followed. Image extensions: .png .jpg .jpeg .bmp .gif .tif .tiff
    .webp .ppm .pgm .pbm .jfif.

    The manifest goes to stdout (or -o): a header (classes, root, seed, val, test,
    folds, counts) then one record per image (path, label, split, fold, sha256,
    width, height, mode; paths absolute unless --relative). A summary (classes x
    splits, imbalance, ignored, rejected, duplicates) goes to stderr.

    \b
    Examples:
      imgcls prepare --sample digits digits/ > digits.jsonl
      imgcls prepare flowers/ --val 0.1 --test 0.2 -o flowers.jsonl --rejects bad.jsonl
      imgcls prepare --import idx --class-names fashion-mnist \\
          /data/fashion-mnist/ fashion/ -o fashion.jsonl
      imgcls prepare flowers.jsonl --top 5 --max-per-class 20 --folds 5
    """
    from imgcls.prepare import PrepareOptions, check_sizes, prepare

    if sample and import_format:
        raise UsageProblem("--sample and --import cannot be combined")
    if (class_names or coarse) and not import_format:
        raise UsageProblem("--class-names and --coarse only apply to --import")
    if force and not (sample or import_format):
        raise UsageProblem("--force only applies to --sample and --import (prepare never writes into SRC)")
    check_sizes(val, test)
    sources = list(src)
    if "-" in sources and not (sample or import_format):
        open_input("-")  # refuses a terminal: a manifest must be piped in
    from imgcls.fsutil import check_output, write_output

    # Before any work: both outputs can be written, neither is a folder or an input manifest.
    out_target = check_output(output, "-o", inputs=sources)
    rejects_target = check_output(rejects_path, "--rejects", inputs=sources) if rejects_path else None
    if (rejects_target is not None and out_target.path is not None and out_target.path == rejects_target.path):
        raise UsageProblem(f"-o {output} and --rejects {rejects_path} name the same file")
    facts = {}
    if sample or import_format:
        sources, facts = _materialise(sources, sample, import_format, class_names, coarse, force, jobs)

    options = PrepareOptions(val=val, test=test, folds=folds, classes=classes, top=top,
                             min_per_class=min_per_class, max_per_class=max_per_class, seed=seed,
                             relative=relative, resplit=resplit, dedup=dedup, jobs=jobs or None,
                             exclude=list(exclude))
    with _progress() as progress:
        result = prepare(sources, options, progress=progress, facts=facts)

    from imgcls.manifest import dumps, write_manifest

    # Neither output may replace a file this run read: an image, a reject, an input manifest.
    inputs = [*sources, *(os.path.join(result.header.get("root") or "", r["path"]) for r in result.records),
              *(r.path for r in result.rejects)]
    if rejects_target is not None:
        write_output(rejects_target, "".join(dumps(r.as_dict()) + "\n" for r in result.rejects), inputs=inputs)
    write_manifest(out_target, result.header, result.records, inputs=inputs)
    _report(result, output)


def _materialise(args, sample, import_format, class_names, coarse, force, jobs):
    """Run an importer; returns the folder to prepare and header facts."""
    from imgcls import importers

    if sample:
        if len(args) != 1:
            raise UsageProblem(f"--sample {sample} takes exactly one argument: the folder to create (DEST)")
        dest = args[0]
        result = importers.import_sample(sample, dest, force=force, jobs=jobs or None)
        facts = {"source": f"sample:{sample}"}
    else:
        if len(args) < 2:
            raise UsageProblem(
                f"--import {import_format}: give the downloaded file(s) and then DEST, the folder to create")
        *inputs, dest = args
        names = importers.parse_class_names(class_names)
        if import_format == "idx":
            if names is None and importers.looks_like_fashion(inputs):
                warn("these look like Fashion-MNIST files: add --class-names fashion-mnist to name the classes "
                     "(using 0..9)")
            result = importers.import_idx(inputs, dest, class_names=names, force=force, jobs=jobs or None)
        else:
            result = importers.import_cifar(inputs, dest, class_names=names, coarse=coarse, force=force,
                                            jobs=jobs or None)
        facts = {"source": f"import:{import_format}"}
    counts = ", ".join(f"{k} {v}" for k, v in result.counts.items())
    if result.reused:
        info(f"{dest}: already holds this import ({result.files} images: {counts}); reusing it")
    else:
        info(f"imported {result.description} into {dest} ({counts}, {len(result.classes)} classes)")
    return [str(dest)], facts


@contextlib.contextmanager
def _progress():
    """A live bar on an interactive stderr; nothing otherwise."""
    if not is_interactive() or settings.verbosity < 0:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("checking images"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=get_console(), transient=True) as bar:
        task = bar.add_task("check", total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _report(result, output) -> None:
    """The human summary on stderr."""
    from imgcls.console import table as make_table
    from imgcls.prepare import imbalance_ratio

    stats = result.stats
    counts = result.counts()
    splits = [s for s in ("train", "val", "test") if any(c[s] for c in counts.values())]
    table = make_table(box=None, pad_edge=False, show_footer=True)
    table.add_column("class", footer="total")
    totals: Counter[str] = Counter()
    for s in splits:
        totals.update({s: sum(c[s] for c in counts.values())})
    for s in splits:
        table.add_column(s, justify="right", footer=str(totals[s]))
    table.add_column("total", justify="right", footer=str(len(result.records)))
    for cls in result.classes:
        row = counts[cls]
        table.add_row(cls, *(str(row[s]) for s in splits), str(sum(row.values())))
    print_renderable(table)

    info(f"{len(result.records)} images, {len(result.classes)} classes, imbalance {imbalance_ratio(result):.2f} "
         f"(largest/smallest class); checked {stats.checked} files in {stats.check_seconds:.1f}s "
         f"with {stats.jobs} process{'es' if stats.jobs != 1 else ''}")
    if result.header.get("folds"):
        per_fold = Counter(r["fold"] for r in result.records if "fold" in r)
        info("folds: " + ", ".join(f"{f}: {per_fold[f]}" for f in range(result.header["folds"])))
    if stats.ignored:
        parts = []
        if stats.hidden:
            parts.append(f"{stats.hidden} hidden")
        if stats.non_image:
            exts = ", ".join(f"{e} {n}" for e, n in stats.non_image.most_common(5))
            parts.append(f"{sum(stats.non_image.values())} non-image ({exts})")
        if stats.loose:
            parts.append(f"{stats.loose} outside class folders")
        info(f"ignored: {', '.join(parts)}")
    if stats.excluded or stats.exclude_unmatched:
        info(f"--exclude: left out {stats.excluded} image(s)"
             + (f"; {stats.exclude_unmatched} listed path(s) matched no input image" if stats.exclude_unmatched else ""))
    if stats.same_file_twice:
        info(f"{stats.same_file_twice} file(s) named twice in the input were kept once")
    if stats.duplicate_groups:
        info(f"duplicates: {stats.duplicate_groups} group(s) of identical images, {stats.duplicate_copies} extra "
             f"cop{'ies' if stats.duplicate_copies != 1 else 'y'}; each group stays in one split")
    if stats.straddling_groups:
        info(f"{stats.straddling_groups} duplicate group(s) straddled the given splits: kept only in the most "
             f"held-out split (see rejects: duplicate-across-splits)")
    if stats.capped:
        info(f"--max-per-class: left out {stats.capped} training images")
    for cls, why in stats.dropped_classes.items():
        detail(f"dropped class {cls!r}: {why}")
    if stats.dropped_classes:
        info(f"dropped {len(stats.dropped_classes)} class(es) (-v lists them)")
    conflicts = stats.conflicting_groups
    for members in conflicts[:5]:
        warn("identical images filed under different classes (a labelling problem; all copies rejected as "
             "conflicting-labels): " + "; ".join(f"{p} ({lab})" for lab, p in members))
    if len(conflicts) > 5:
        warn(f"... and {len(conflicts) - 5} more groups of identical images under different classes (see --rejects)")
    if result.rejects:
        by_reason = Counter(r.reason for r in result.rejects)
        reasons = ", ".join(f"{k} {v}" for k, v in by_reason.most_common())
        warn(f"rejected {len(result.rejects)} file(s): {reasons}")
        limit = None if settings.verbosity >= 1 else MAX_LISTED_REJECTS
        for r in result.rejects[:limit]:
            info(f"  rejected [{r.reason}] {r.path}: {r.message}")
        if limit is not None and len(result.rejects) > limit:
            info(f"  ... and {len(result.rejects) - limit} more (-v lists all; --rejects FILE saves them)")
    for message in result.warnings:
        warn(message)
    if output != "-":
        info(f"wrote {output}")
