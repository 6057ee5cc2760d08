"""imgcls audit: label errors, near-duplicates (leakage across splits), outliers and ambiguous images."""

from __future__ import annotations

import json
from pathlib import Path

import click

from imgcls.audit import CHECKS, AuditConfig
from imgcls.commands._common import common_options, open_input

D = AuditConfig()


def _checks(ctx, param, value):
    if value is None:
        return CHECKS
    names = [v.strip() for v in value.split(",") if v.strip()]
    bad = [n for n in names if n not in CHECKS]
    if bad or not names:
        raise click.BadParameter(f"{', '.join(bad) or 'nothing'}: choose from {', '.join(CHECKS)}")
    return tuple(n for n in CHECKS if n in names)


@click.command("audit")
@click.argument("manifest", default="-", metavar="[MANIFEST]")
@click.option("-a", "--arch", default=D.arch, show_default=True, metavar="NAME",
              help="Frozen backbone whose features the checks use (as imgcls train --arch; see train "
                   "--list-archs). Its pretrained weights come as in train: torchvision's through the torch "
                   "hub cache, or --weights FILE.")
@click.option("--weights", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Backbone weights: a .safetensors or .pth state dict (as imgcls train --weights; its "
                   "\"mean\"/\"std\" metadata is used).")
@click.option("--weights-name", default=None, metavar="NAME",
              help="Which of torchvision's pretrained weights of --arch (e.g. IMAGENET1K_V1; default: DEFAULT).")
@click.option("--pretrained/--no-pretrained", default=None,
              help="Pretrained backbone weights (default: on for torchvision backbones). --no-pretrained audits "
                   "with a random backbone: only for trying the command out.")
@click.option("-m", "--model", metavar="FILE|RUN_DIR", default=None,
              help="Use a trained imgcls model's features (its backbone, size and normalisation) instead of "
                   "--arch. Features of a model trained on these very labels have partly learned their "
                   "errors: a frozen pretrained backbone finds more.")
@click.option("--model-probs", is_flag=True,
              help="With --model: score labels with the model's own probabilities instead of the K-fold "
                   "probe. Only sound for images the model did not train on (a new batch, a test split).")
@click.option("--image-size", type=click.IntRange(min=8), default=None, metavar="PX",
              help="Backbone input size. Default: the architecture's (224 for torchvision backbones). Small "
                   "images (28-32 px) lose little at 96-160 px and the pass is 2-5x faster.")
@click.option("--mean", default=None, metavar="M[,M,M]", help="Normalisation mean (default: the weights').")
@click.option("--std", default=None, metavar="S[,S,S]", help="Normalisation std (default: the weights').")
@click.option("--checks", callback=_checks, default=None, metavar="LIST", show_default=",".join(CHECKS),
              help=f"Which checks, comma-separated: {', '.join(CHECKS)}. Without labels (and ambiguous) "
                   "cleanlab is not needed.")
@click.option("--folds", type=click.IntRange(min=2), default=D.folds, show_default=True,
              help="K of the out-of-fold probabilities over train+val (the manifest's \"fold\" from prepare "
                   "--folds is used when every train/val record has one). Test records are scored by a probe "
                   "fit on all of train+val.")
@click.option("--max-label-score", type=click.FloatRange(0, 1), default=D.max_label_score, show_default=True,
              help="Flag a label only when cleanlab's find_label_issues flags it AND its label-quality score "
                   "(the out-of-fold probability of the given label) is below this. Lower: fewer, surer "
                   "suspects. Chosen on Fashion-MNIST with 5% flipped labels (docs/benchmarks.md).")
@click.option("--duplicate-residual", type=click.FloatRange(0, 1), default=D.duplicate_residual, show_default=True,
              help="Near-duplicates: a candidate pair (neighbours by grey thumbnail or by features) is a copy when, "
                   "after registering one image onto the other (scale and shift per axis: crops of up to 10 % "
                   "and resizes), the RMS grey difference of the blurred 32 px thumbnails is at most this (0-1 "
                   "scale; identical files always count). Chosen on Fashion-MNIST and cats-vs-dogs photos with "
                   "planted re-encoded, resized, cropped copies (docs/benchmarks.md); an absolute grey level, so "
                   "very low-contrast images may need less.")
@click.option("--outlier-iqr", type=click.FloatRange(min=0), default=D.outlier_iqr, show_default=True,
              help="Outliers: mean cosine distance to the --neighbours nearest images above Q3 + this x IQR "
                   "of that distance (cleanlab Datalab's fence).")
@click.option("--neighbours", type=click.IntRange(min=1), default=D.neighbours, show_default=True,
              help="Nearest neighbours per image (outliers; near-duplicate candidates).")
@click.option("--ambiguous-margin", type=click.FloatRange(0, 1), default=D.ambiguous_margin, show_default=True,
              help="Ambiguous: the top two out-of-fold probabilities are closer than this, and together at "
                   f"least {D.ambiguous_mass}.")
@click.option("--seed", type=int, default=D.seed, show_default=True, help="Seed of the folds and the probe.")
@click.option("-o", "--output", default="-", show_default=True, metavar="FILE",
              help="Where the manifest goes, findings attached ('-': stdout). Written atomically.")
@click.option("--json", "json_file", default=None, metavar="FILE",
              help="Write the findings as one JSON document to FILE ('-': stdout, then give the manifest "
                   "another -o or it is not written).")
@click.option("--html", "html_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="FILE",
              help="Write a self-contained HTML page (as eval --html): summary, leakage, suspected label errors "
                   "with thumbnails, duplicate groups side by side, outliers, ambiguous images.")
@click.option("--sheet", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE",
              help="Write a contact sheet (PNG) of the --top suspects captioned given -> suggested label.")
@click.option("--top", type=click.IntRange(min=1), default=40, show_default=True,
              help="Suspects shown on the contact sheet, the page and stderr (-v: all on stderr).")
@click.option("--batch-size", type=click.IntRange(min=1), default=D.batch_size, show_default=True,
              help="Images per backbone batch on a GPU (the CPU picks its own size).")
@click.option("--device", default=D.device, show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Decoded-image and feature cache shared with train, eval and predict. Default: "
                   "$IMGCLS_CACHE, else ~/.cache/imgcls.")
@click.option("--no-cache", is_flag=True, help="Neither read nor write the caches.")
@common_options
def command(manifest, arch, weights, weights_name, pretrained, model, model_probs, image_size, mean, std, checks,
            folds, max_label_score, duplicate_residual, outlier_iqr, neighbours, ambiguous_margin, seed,
            output, json_file, html_file, sheet, top, batch_size, device, cache_dir, no_cache):
    """Find label errors, near-duplicates, leakage and outliers in a manifest.

    \b
      imgcls audit data.jsonl --html audit.html > audited.jsonl
      imgcls audit data.jsonl | jq -c 'select(.audit == null)' | imgcls train
      jq -c 'select(.audit)' audited.jsonl > suspects.jsonl   # review, then:
      imgcls prepare data.jsonl --exclude suspects.jsonl > clean.jsonl

    Every image is embedded once by a frozen pretrained backbone (--arch, default
    mobilenet_v2 with torchvision's ImageNet weights; or --weights FILE; or the
    backbone of a trained model, --model); features are cached like train --freeze's.

    \b
    label      out-of-fold probabilities of a logistic-regression probe on the features
               (K folds over train+val, duplicates kept in one fold), scored by confident
               learning (cleanlab's find_label_issues); suggested label and score given
    duplicate  near-copies (re-encoded, resized, slightly cropped): neighbours by thumbnail
               or features, verified by registering one onto the other; one copy of each
               group is kept (test, then val, then train), the others are flagged; across
               splits it is leakage, listed first
    outlier    far from every other image in feature space
    ambiguous  the probabilities split between two labels

    The manifest goes on to stdout with an "audit" object on each flagged record
    (fields: imgcls-manifest(5)) and "audited" in the header, so
    select(.audit == null) keeps the clean part and the header. A summary goes to
    stderr. The image files are never modified. Defaults were measured on
    Fashion-MNIST and cats-vs-dogs photos (docs/design/audit.md, docs/benchmarks.md).
    """
    from imgcls.console import info
    from imgcls.errors import UsageProblem
    from imgcls.manifest import read_all

    if json_file == "-" and output == "-":
        output = None  # the document has stdout; the manifest goes nowhere unless -o FILE
    if no_cache and cache_dir is not None:
        raise UsageProblem("--cache-dir and --no-cache exclude each other")
    if model and (weights or weights_name or pretrained is not None):
        raise UsageProblem("--model brings its own backbone: drop --weights/--weights-name/--pretrained")
    if model_probs and not model:
        raise UsageProblem("--model-probs needs --model FILE")
    if model and (image_size or mean or std):
        raise UsageProblem("--model brings its own preprocessing: drop --image-size/--mean/--std")
    if model_probs and "labels" not in checks and "ambiguous" not in checks:
        raise UsageProblem("--model-probs only affects the labels and ambiguous checks")
    if "labels" in checks:
        from imgcls.audit.labels import require_cleanlab

        require_cleanlab()
    from imgcls.commands._training import parse_floats_option

    cfg = AuditConfig(arch=arch, weights=weights, weights_name=weights_name, pretrained=pretrained, model=model,
                      model_probs=model_probs, image_size=image_size or 0,
                      mean=parse_floats_option(mean, "--mean") or [], std=parse_floats_option(std, "--std") or [],
                      folds=folds, max_label_score=max_label_score, duplicate_residual=duplicate_residual,
                      neighbours=neighbours, outlier_iqr=outlier_iqr,
                      ambiguous_margin=ambiguous_margin, checks=checks, seed=seed, batch_size=batch_size,
                      device=device, cache=not no_cache, cache_dir=cache_dir)
    header, records, reader = read_all(open_input(manifest))
    from imgcls.audit.run import audit

    result = audit(header, records, reader.root, cfg, name=reader.name)
    from imgcls.audit.report import render_summary

    render_summary(result, top)
    text = json.dumps(result.document, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    if json_file and json_file != "-":
        from imgcls.fsutil import write_text_atomic

        write_text_atomic(json_file, text)
        info(f"findings written to {json_file}")
    if sheet is not None:
        from imgcls.audit.report import write_sheet

        if write_sheet(result, sheet, top):
            info(f"contact sheet of {min(top, len(result.suspects))} suspects written to {sheet}")
        else:
            info(f"no suspects: no contact sheet written to {sheet}")
    if html_file is not None:
        from imgcls.audit.html import write_page

        write_page(result, html_file, top)
    if output is not None:
        from imgcls.manifest import write_manifest

        write_manifest(output, result.header, result.records)
        if output != "-":
            info(f"manifest written to {output}")
    if json_file == "-":
        click.echo(text, nl=False)
