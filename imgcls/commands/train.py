"""``imgcls train``: a manifest in, a run folder (model.safetensors ...) out, the manifest passed on."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from imgcls.commands._common import common_options, open_input
from imgcls.commands._training import (DEFAULTS, check_run_outputs, continue_run, check_no_terminal_stdin,
                                       emit_manifest, loop_options, parse_floats_option, report_result)
from imgcls.models.catalog import arch_help
from imgcls.models.heads import DEFAULT_FROZEN_HEAD, HEADS
from imgcls.training.config import BACKBONE_LR_RATIO, FINETUNE_RECIPE, PRETRAINED_LR, TrainConfig, learning_rates

if TYPE_CHECKING:
    from imgcls.manifest import ManifestReader

HEAD_HELP = (
    "How the head of a frozen backbone (--freeze) is made from its features, which are computed once. "
    "logreg: multinomial logistic regression fitted by L-BFGS (scikit-learn) on the L2-normalised features, "
    "its penalty C chosen by cross-validated log-loss on the training images (5-fold up to 2,000 images, one "
    "stratified 80/20 hold-out above; on the val split when a class has a single training image); seconds "
    "even on 10,000 images. ncm: nearest class mean of the L2-normalised features, with one temperature fitted "
    "on the val split (its val loss is therefore optimistic). linear: Dropout + Linear trained by SGD for "
    "--epochs with the optimisation options below (the only choice for --augment without --feature-views). "
    "logreg and ncm fit in one step: --epochs, --lr, --batch-size, --optimizer, --schedule, --patience, "
    "--label-smoothing and --dropout do not apply; history.jsonl gets one line (epoch 1) and no checkpoint "
    "is written. All three end as an ordinary Linear head (logreg and ncm behind a parameter-free L2 "
    "normalisation), so eval, predict and finetune work unchanged and a fine-tune starts from it. "
    f"Default with --freeze: {DEFAULT_FROZEN_HEAD}, because in benchmarks/heads_study.py (docs/benchmarks.md: "
    "mobilenet_v2 features of Fashion-MNIST and cat/dog photos, 1 to 500 images per class, several seeds) "
    "it matched or beat a plain scikit-learn LogisticRegressionCV probe on the same features at every size "
    "(within the seeds' spread) and beat the SGD-trained linear head by 1-4 points at 10 images per class or "
    "fewer; ncm was as good up to 10 per class, but fell behind from 50 on Fashion-MNIST.")

WEIGHTS_NAME_HELP = (
    "Which of the architecture's pretrained weights to start from: a torchvision weights name "
    "(IMAGENET1K_V1, IMAGENET1K_V2, IMAGENET1K_SWAG_E2E_V1, ...; --list-archs shows each model's, the default "
    "starred, other input sizes as @PX) or DEFAULT; for timm/NAME a pretrained tag (e.g. augreg_in21k). "
    "Default: the architecture's default weights. The input size and normalisation follow the chosen weights "
    "(vit_b_16 with IMAGENET1K_SWAG_E2E_V1 runs at 384 px) unless --image-size, --mean or --std say "
    "otherwise. With --weights FILE it only names the preprocessing to assume when the file records none.")


def _rate(value: float) -> str:
    """2e-3, not 0.002: learning rates as people write them."""
    return f"{value:.0e}".replace("e-0", "e-")


def man_sections() -> dict[str, str]:
    """imgcls-train(1)'s ARCHITECTURES section, from the generated architecture table."""
    from imgcls.models import catalog

    families: dict[str, list[dict]] = {}
    for a in catalog.torchvision_archs():
        families.setdefault(a["family"], []).append(a)
    paragraphs = [
        "Scratch CNNs (input size and channels from the data): "
        + "; ".join(f"{a['name']}: {a['description']}" for a in catalog.scratch_archs()) + ".",
        f"torchvision's {len(catalog.torchvision_archs())} classification models, by family (the "
        "torchvision module defining them), with the default input size (that of the default weights), "
        "the blocks --unfreeze counts, and the weights --weights-name can pick (the default first):",
    ]
    for family, rows in sorted(families.items()):
        items = []
        for a in rows:
            names = [a["default_weights"]] + [w["name"] for w in a["weights"] if w["name"] != a["default_weights"]]
            items.append(f"{a['name']} ({a['default_size']} px, {a['blocks']} blocks; {', '.join(n for n in names if n)})")
        paragraphs.append(f"{family}: " + "; ".join(items) + ".")
    paragraphs.append("timm/NAME: any model of timm.list_models() (pip install 'imgcls[timm]'), optionally with a "
                      "pretrained tag (timm/NAME.TAG, or --weights-name TAG); imgcls train --list-archs timm/PATTERN "
                      "lists them.")
    return {"ARCHITECTURES": "\n\n".join(paragraphs)}


def _weights_column(row: dict) -> str:
    """IMAGENET1K_V2* (the default starred), other sizes noted: IMAGENET1K_SWAG_E2E_V1@384."""
    parts = []
    for w in row.get("weights", []):
        text = w["name"] + ("*" if w["name"] == row.get("default_weights") else "")
        if w.get("size") and w["size"] != row.get("default_size"):
            text += f"@{w['size']}"
        parts.append(text)
    return ",".join(parts) or "-"


def _list_archs(pattern: str, as_json: bool) -> None:
    """The architecture table (name, backbone parameters, sizes, blocks, weights) from the generated catalog."""
    import json

    from imgcls.models import catalog

    if pattern.lower().startswith(catalog.TIMM_PREFIX):
        rows = _timm_rows(pattern[len(catalog.TIMM_PREFIX):])
    else:
        from imgcls.models.weights import cache_status

        rows = []
        for a in catalog.scratch_archs():
            if catalog.matches(a["name"], a["family"], pattern):
                rows.append({"name": a["name"], "family": "scratch", "source": "scratch", "parameters": a["params"],
                             "default_size": None, "min_size": 8, "channels": None, "blocks": a["blocks"],
                             "feature_dim": a["feature_dim"], "pretrained": "no", "default_weights": None, "weights": [],
                             "options": a["options"], "description": a["description"]})
        for a in catalog.torchvision_archs():
            if catalog.matches(a["name"], a["family"], pattern):
                rows.append({"name": a["name"], "family": a["family"], "source": "torchvision",
                             "parameters": a["params"], "default_size": a["default_size"], "min_size": a["min_size"],
                             "channels": 3, "blocks": a["blocks"], "feature_dim": a["feature_dim"],
                             "pretrained": cache_status(a["name"]) if a["weights"] else "no",
                             "default_weights": a["default_weights"], "weights": a["weights"], "options": [],
                             "description": a["description"]})
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    if not rows:
        from imgcls.errors import UsageProblem

        raise UsageProblem(f"--list-archs {pattern}: no architecture matches (try a family such as vit, or timm/PATTERN)")
    head = ["name", "params", "size", "channels", "blocks", "pretrained", "weights", "description"]
    table = [[r["name"], f"{r['parameters'] / 1e6:.2f}M" if r["parameters"] is not None else "-",
              str(r["default_size"] or "data"), str(r["channels"] or "data"),
              str(r["blocks"]) if r["blocks"] is not None else "-", r["pretrained"], _weights_column(r),
              r["description"]] for r in rows]
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(head)]
    for line in [head, *table]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(line[:-1], widths)) + "  " + line[-1])


def _timm_rows(pattern: str) -> list[dict]:
    """timm's pretrained models matching PATTERN (a glob, or a substring), from the installed timm."""
    from imgcls.models.timm_models import cache_status, require_timm

    timm = require_timm("timm/" + (pattern or "..."))
    glob = pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
    by_arch: dict[str, list[str]] = {}
    for name in timm.list_pretrained(glob):
        arch, _, tag = name.partition(".")
        by_arch.setdefault(arch, []).append(tag)
    for arch in timm.list_models(glob):
        by_arch.setdefault(arch, [])
    rows = []
    for arch, tags in sorted(by_arch.items()):
        cfg = timm.get_pretrained_cfg(arch)
        size = int(cfg.input_size[-1]) if cfg is not None and cfg.input_size else None
        rows.append({"name": f"timm/{arch}", "family": timm.models.model_entrypoint(arch).__module__.rsplit(".", 1)[-1],
                     "source": "timm", "parameters": None, "default_size": size, "min_size": 32, "channels": 3,
                     "blocks": None, "feature_dim": None,
                     "pretrained": cache_status(f"timm/{arch}") if tags else "no",
                     "default_weights": cfg.tag if cfg is not None else None,
                     "weights": [{"name": t, "size": None} for t in tags], "options": [],
                     "description": f"timm {arch}"})
    return rows


def _find_lr(header: dict, records: list, reader: ManifestReader, cfg: TrainConfig, plot: str | None) -> None:
    """--find-lr: the sweep's JSON on stdout, the suggestion on stderr, the curve in ``plot``."""
    import json

    from imgcls.training import lr_find
    from imgcls.training._console import info
    from imgcls.training.run import find_lr

    result = find_lr(header, records, reader.root, cfg, name=reader.name)
    written = str(lr_find.write_plot(result, plot)) if plot else None
    doc = result.to_json(written)
    sugg = doc["suggestions"]
    others = ", ".join(f"{k} {v:.2g}" for k, v in sugg.items() if k != "valley" and v is not None)
    info(f"suggested --lr {doc['suggested_lr']:.2g} (valley; {others}); {doc['steps']} steps"
         + (", stopped when the loss diverged" if doc["diverged"] else "")
         + (f"; curve in {written}" if written else ""))
    click.echo(json.dumps(doc))


@click.command("train")
@click.argument("manifest", default="-", metavar="[MANIFEST]")
@click.option("-a", "--arch", default=DEFAULTS.arch, show_default=True, metavar="NAME", help=arch_help())
@click.option("--list-archs", "list_archs", is_flag=False, flag_value="", default=None, metavar="[PATTERN]",
              help="List the architectures as a table on stdout, and exit: name, backbone parameters (without the "
                   "ImageNet head), default input size, channels, blocks for --unfreeze, pretrained weights "
                   "(cached / download / no), the weights names for --weights-name, description. PATTERN filters "
                   "by name or family: a substring (vit, efficientnet_v2, resnet) or a glob (regnet_y_*); "
                   "timm/PATTERN lists timm's models (needs timm).")
@click.option("--json", "as_json", is_flag=True, help="With --list-archs: JSON instead of a table.")
@click.option("--image-size", type=click.IntRange(min=1), default=None, metavar="PX",
              help="Square input size. Default: the size the pretrained weights were trained at (224 for most "
                   "torchvision models, 384 for efficientnet_v2_s, 299 for inception_v3; --list-archs shows "
                   "each); for scratch models the most common image side in the training data, clamped to 8..64. "
                   "ViT and MaxViT are built for the size they run at (a multiple of the patch size, of 224 px "
                   "for MaxViT; a ViT's position embedding is resampled to it).")
@click.option("--channels", type=click.Choice(["1", "3"]), default=None,
              help="Input channels of scratch models. Default: 1 if every training image is grayscale, else 3. "
                   "torchvision backbones always take 3 (gray images are converted).")
@click.option("--pretrained/--no-pretrained", default=None,
              help="Start torchvision and timm backbones from their pretrained weights (default: on for them; "
                   "scratch models have none). torchvision's come from the torch hub cache "
                   "($TORCH_HOME/hub/checkpoints), timm's from the Hugging Face hub cache (HF_HOME); either is "
                   "downloaded there when missing. Offline: copy the file there, or use --weights.")
@click.option("--weights-name", default=None, metavar="NAME", help=WEIGHTS_NAME_HELP)
@click.option("--weights", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Start from a state dict in FILE instead: .safetensors, or .pth read with "
                   "torch.load(weights_only=True) only (a torchvision or timm state dict, or an imgcls model "
                   "file). ImageNet head keys are ignored; every backbone key must fit. Normalization: the file's "
                   "\"mean\"/\"std\" metadata (safetensors), else that of the architecture's pretrained "
                   "weights (torchvision's meta, timm's pretrained_cfg).")
@click.option("--mean", default=None, metavar="M[,M,M]",
              help="Per-channel normalization mean on [0,1] pixels (overrides the weights' own). "
                   "Default: from the weights; 0.5 when training from scratch.")
@click.option("--std", default=None, metavar="S[,S,S]",
              help="Per-channel normalization std (overrides the weights' own). Default: from the weights; 0.5 from scratch.")
@click.option("--freeze", is_flag=True,
              help="Train the head only: the backbone is frozen and kept in eval mode (BatchNorm statistics do not "
                   "drift). Its features are computed once (with --augment none) and the head is made from them "
                   f"(--head, default {DEFAULT_FROZEN_HEAD}); they are also kept in the on-disk cache "
                   "(--cache), so a later run on the same unchanged images, weights and preprocessing skips the "
                   "backbone. With augmentation see --feature-views.")
@click.option("--head", type=click.Choice(HEADS), default=None, help=HEAD_HELP + " Only with --freeze.")
@click.option("--feature-views", type=click.IntRange(min=0), default=DEFAULTS.feature_views, show_default=True, metavar="K",
              help="With --freeze and --augment light/standard/strong: run the backbone once over K augmented "
                   "views of the training images (K backbone passes in all, cached like plain features; each view "
                   "fixed by --seed and its number) and train the head on them, epoch e on view (e-1) mod K. "
                   "Validation always uses the plain images. 0: the backbone runs on every augmented batch "
                   "(fresh augmentation each epoch, one backbone pass per epoch). Without augmentation the one "
                   "plain view is used. Kept in the model's training config.")
@click.option("--width", type=click.IntRange(min=1), default=None, help="cnn, cnn-gru: channels of the first block (doubles per block; arch default 32).")
@click.option("--depth", type=click.IntRange(min=1), default=None, help="cnn, cnn-gru: number of conv blocks (arch default 4 / 3).")
@click.option("--hidden", type=click.IntRange(min=1), default=None, help="cnn-gru: GRU hidden size (arch default 128).")
@click.option("--block-dropout", type=click.FloatRange(0, 0.9), default=None, help="cnn, cnn-gru: dropout after each conv block (arch default 0.1).")
@click.option("--dropout", type=click.FloatRange(0, 0.95), default=DEFAULTS.dropout, show_default=True, help="Dropout before the final linear layer (the head).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help=f"Learning rate (of the head). Default: {_rate(DEFAULTS.lr)} from scratch, {_rate(PRETRAINED_LR)} for a "
                   "pretrained backbone (whose own rate is --backbone-lr-ratio times this).")
@click.option("--backbone-lr", type=click.FloatRange(min=0), default=None,
              help="Learning rate of a pretrained, unfrozen backbone. Default: --lr x --backbone-lr-ratio.")
@click.option("--backbone-lr-ratio", type=click.FloatRange(min=0), default=BACKBONE_LR_RATIO, show_default=True,
              help="Backbone rate relative to --lr when starting from pretrained weights (discriminative rates).")
@click.option("--freeze-epochs", type=click.IntRange(min=0), default=DEFAULTS.freeze_epochs, show_default=True, metavar="N",
              help="Starting from pretrained weights (--pretrained or --weights) without --freeze: first train "
                   "the new head alone for up to N epochs on the frozen backbone (its features of the plain "
                   "images computed once, so this costs about one backbone pass; no augmentation, mixup or EMA "
                   "there; early stopping applies), then unfreeze every block with discriminative rates "
                   "(--backbone-lr) and the onecycle schedule for --epochs more, starting from the warm-up's "
                   "best weights (fastai's fine_tune). History phases: \"warmup\", then \"train\". 0: no warm-up.")
@loop_options(inherit=False)
@click.option("--find-lr", is_flag=True,
              help="Run the learning-rate range test instead of training (fastai's lr_find): 100 steps with the "
                   "rate growing from 1e-7 to 10 (every group keeping its ratio to --lr; with a warm-up, the head "
                   "on the frozen backbone), stopping when the loss diverges. Prints the suggested --lr on "
                   "stderr and the sweep as JSON on stdout (suggested_lr: fastai's valley; suggestions: valley, "
                   "minimum/10, steep; lrs, losses). No run folder is created, the weights are thrown away and "
                   "the manifest is not passed on.")
@click.option("--find-lr-plot", type=click.Path(dir_okay=False, allow_dash=False), default=None, metavar="FILE",
              help="With --find-lr: also draw the loss against the rate, suggestions marked, as a PNG in FILE "
                   "(needs matplotlib: the plots extra).")
@click.option("--resume", type=click.Path(exists=True), default=None, metavar="RUN",
              help="Continue an interrupted run (its folder, or runs/latest) from its last checkpoint, in that "
                   "folder. The configuration and data are the run's own (manifest.jsonl inside it); only "
                   "--epochs (to extend), --patience, --device and --workers may change.")
@common_options
def command(manifest: str, arch: str, list_archs: str | None, as_json: bool, image_size: int | None,
            channels: str | None, pretrained: bool | None, weights_name: str | None, weights: str | None,
            mean: str | None, std: str | None, freeze: bool, head: str | None,
            feature_views: int, width: int | None, depth: int | None, hidden: int | None, block_dropout: float | None, dropout: float,
            lr: float | None, backbone_lr: float | None, backbone_lr_ratio: float, freeze_epochs: int,
            find_lr: bool, find_lr_plot: str | None, resume: str | None, **loop: Any) -> None:
    """Train a classifier on a manifest's train split, selecting it on the val split.

    Reads the manifest (from prepare) from MANIFEST or stdin and writes a run folder
    (--out, default runs/<time>-<arch>): model.safetensors (weights plus everything
    eval and predict need: arch, ordered classes, input size, channels, mean/std,
    training config, manifest hash), history.jsonl (one line per epoch),
    learning_curves.png (with matplotlib), checkpoint.safetensors (for --resume) and
    manifest.jsonl (the data it used); runs/latest points at the newest run. The
    manifest goes on to stdout with "model" and "run" in its header, so pipelines chain:

    \b
      imgcls prepare shapes/ | imgcls train --arch cnn | imgcls eval
      imgcls prepare flowers/ | imgcls train --arch mobilenet_v2 --freeze | imgcls finetune | imgcls eval
      imgcls train --resume runs/latest --epochs 40 > data.jsonl

    The saved weights are those of the epoch with the lowest validation loss. Without
    val records a stratified --val-fraction of the training images is held out (with a
    warning). Records without a split count as training data; test records are not
    used. Progress goes to stderr: a bar per epoch in a terminal, one line per epoch
    otherwise. Ctrl-C stops cleanly (exit 130; SIGTERM likewise, exit 143): the best
    model so far and the last epoch's checkpoint are written to the run folder. While
    training, they are written after the first epoch and then at most every
    --save-interval seconds.
    """
    from imgcls.commands._ranks import is_main_rank, refuse_stdin_manifest, rank_guard

    with rank_guard("train"):  # under torchrun: rank 0 speaks; a failing rank ends the job
        from imgcls.errors import UsageProblem

        if list_archs is not None:
            _list_archs(list_archs, as_json)
            return

        from pathlib import Path

        from imgcls.manifest import read_all
        from imgcls.training import TrainConfig
        from imgcls.training import train as train_run

        output = loop.pop("output")
        out = loop.pop("out")
        if find_lr_plot is not None and not find_lr:
            raise UsageProblem("--find-lr-plot needs --find-lr")
        if resume is not None:
            if find_lr:
                raise UsageProblem("--find-lr and --resume exclude each other")
            continue_run("train", resume, manifest, output, loop)
            return

        if head is not None and not freeze:
            raise UsageProblem(f"--head {head} chooses how a frozen backbone's head is made: add --freeze "
                               f"(a training backbone always gets the SGD-trained linear head)")
        if feature_views and not freeze:
            raise UsageProblem("--feature-views needs --freeze: a backbone that trains changes its features every step")
        if feature_views and not loop["feature_cache"]:
            raise UsageProblem("--feature-views computes features once; it cannot be combined with --no-feature-cache")
        refuse_stdin_manifest(manifest, "train")
        check_no_terminal_stdin(manifest)
        check_run_outputs(output, out, manifest)  # before any data is read: -o writable, --out usable
        options = {k: v for k, v in {"width": width, "depth": depth, "hidden": hidden, "block_dropout": block_dropout}.items()
                   if v is not None}
        from imgcls.models.registry import get_spec

        spec = get_spec(arch)
        unknown = sorted(set(options) - set(spec.options))
        if unknown:
            takes = ", ".join("--" + o.replace("_", "-") for o in spec.options) or "no architecture options"
            raise UsageProblem(f"--arch {arch} does not take {', '.join('--' + o.replace('_', '-') for o in unknown)} "
                               f"(it takes: {takes})")
        from_pretrained = weights is not None or (spec.pretrainable and pretrained is not False)
        lr, backbone_lr = learning_rates(lr, backbone_lr, backbone_lr_ratio, from_pretrained=from_pretrained,
                                         backbone_trains=not freeze)
        fine_tuning = from_pretrained and not freeze  # the recipe of fine-tuning trained weights applies
        for key, value in FINETUNE_RECIPE.items():
            if loop[key] is None:
                loop[key] = value if fine_tuning else getattr(DEFAULTS, key)
        if (loop["mixup"] or loop["cutmix"]) and freeze and feature_views:
            raise UsageProblem("--mixup/--cutmix blend images, not fixed feature views: drop --feature-views")
        header, records, reader = read_all(open_input(manifest))
        cfg = TrainConfig(
            arch=arch, image_size=image_size or 0, channels=int(channels) if channels else 0,
            mean=parse_floats_option(mean, "--mean") or [], std=parse_floats_option(std, "--std") or [],
            pretrained=pretrained, weights=weights, weights_name=weights_name, arch_options=options, dropout=dropout,
            trainable_blocks=0 if freeze else None, head=head, feature_views=feature_views, lr=lr,
            backbone_lr=backbone_lr, freeze_epochs=freeze_epochs,
            **loop,
        )
        if find_lr:
            _find_lr(header, records, reader, cfg, find_lr_plot)
            return
        result = train_run(header, records, reader.root, cfg, out=Path(out) if out else None, name=reader.name)
        report_result(result, "train")
        if is_main_rank():
            emit_manifest(output, header, records, result.model_path, result.run_dir, inputs=[manifest])
