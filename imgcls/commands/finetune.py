"""``imgcls finetune``: continue training a saved model with (part of) its backbone unfrozen."""

from __future__ import annotations

from typing import Any

import click

from imgcls.commands._common import common_options, open_input
from imgcls.commands._training import check_run_outputs, continue_run, check_no_terminal_stdin, emit_manifest, loop_options, report_result
from imgcls.training.config import BACKBONE_LR_RATIO, PRETRAINED_LR


class Unfreeze(click.ParamType):
    """A block count or ``all``."""

    name = "N|all"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, int):
            return value
        text = str(value).strip().lower()
        if text == "all":
            return "all"
        try:
            n = int(text)
        except ValueError:
            self.fail(f"{value!r} is neither a number of blocks nor 'all'", param, ctx)
        if n < 0:
            self.fail("must be 0 or more", param, ctx)
        return n



@click.command("finetune")
@click.argument("manifest", default="-", metavar="[MANIFEST]")
@click.option("-m", "--model", default=None, metavar="FILE|RUN",
              help="The model to fine-tune: a model.safetensors file or a run folder (runs/latest works). "
                   "Default: the \"model\" in the manifest header (what imgcls train printed).")
@click.option("--unfreeze", type=Unfreeze(), default="all", show_default=True,
              help="Train the last N backbone blocks (stages; imgcls train --list-archs shows how many each "
                   "architecture has) plus the head, or all of them. 0 trains the head only.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=PRETRAINED_LR, show_default=True,
              help="Peak learning rate of the head (the backbone's is --backbone-lr-ratio times this). Chosen by "
                   "measurement (docs/benchmarks.md, recipes study): with the onecycle warm-up, 1e-3 beat 3e-4 "
                   "and 1e-4 (the old default) on Fashion-MNIST at 500 per class and on the cat/dog photos.")
@click.option("--backbone-lr", type=click.FloatRange(min=0), default=None,
              help="Learning rate of the unfrozen backbone blocks. Default: --lr x --backbone-lr-ratio.")
@click.option("--backbone-lr-ratio", type=click.FloatRange(min=0), default=BACKBONE_LR_RATIO, show_default=True,
              help="Backbone rate relative to --lr (discriminative learning rates).")
@loop_options(inherit=True)
@click.option("--resume", type=click.Path(exists=True), default=None, metavar="RUN",
              help="Continue an interrupted fine-tuning run from its last checkpoint (same as imgcls train --resume).")
@common_options
def command(manifest: str, model: str | None, unfreeze: int | str, lr: float, backbone_lr: float | None,
            backbone_lr_ratio: float, resume: str | None, **loop: Any) -> None:
    """Fine-tune a trained model: unfreeze the last N backbone blocks and train on.

    Takes the model from --model or from the manifest header that imgcls train
    printed, so the classic transfer-learning recipe is one pipeline:

    \b
      imgcls prepare flowers/ | imgcls train --arch mobilenet_v2 --freeze \\
        | imgcls finetune --unfreeze 3 | imgcls eval

    Input size, channels, normalization and classes are the model's own; the
    manifest's classes are matched by name and must all be known to the model.
    Optimisation settings default to those the model was trained with (batch size,
    optimizer, weight decay, augmentation, ...), except the fine-tuning recipe: the
    onecycle schedule (warm-up, then cosine) at --lr for the head and a tenth of it for
    the backbone, --mixup 0.2 and --label-smoothing 0.1. The starting model's validation loss is
    the mark to beat: if no epoch improves on it, the saved model is the starting
    one. Writes a NEW run folder (--out, default runs/<time>-<arch>-finetune) whose
    history.jsonl continues the parent run's (epoch numbers go on; "phase" tells
    train from finetune), and passes the manifest on with the new model in its header.
    """
    from imgcls.commands._ranks import is_main_rank, refuse_stdin_manifest, rank_guard

    with rank_guard("finetune"):  # under torchrun: rank 0 speaks; a failing rank ends the job
        from pathlib import Path

        from imgcls.errors import UsageProblem
        from imgcls.manifest import read_all
        from imgcls.training import finetune as finetune_run

        output = loop.pop("output")
        out = loop.pop("out")
        if resume is not None:
            continue_run("finetune", resume, manifest, output, loop)
            return

        refuse_stdin_manifest(manifest, "finetune")
        check_no_terminal_stdin(manifest)
        check_run_outputs(output, out, manifest)  # before any data is read: -o writable, --out usable
        header, records, reader = read_all(open_input(manifest))
        model_path = model or (reader.header or {}).get("model")
        if not model_path:
            raise UsageProblem("no model to fine-tune: pass --model FILE|RUN, or pipe in the manifest imgcls train printed "
                               "(its header names the model)")
        if not Path(model_path).exists():
            from imgcls.errors import ModelError

            where = "--model" if model else f"{reader.name}: header \"model\""
            raise ModelError(f"{where}: {model_path}: no such model file or run folder")
        overrides = {k: v for k, v in loop.items() if v is not None}
        overrides["lr"] = lr
        overrides["backbone_lr"] = backbone_lr
        result = finetune_run(header, records, reader.root, model_path, overrides,
                              unfreeze=None if unfreeze == "all" else int(unfreeze),
                              backbone_lr_ratio=backbone_lr_ratio, out=Path(out) if out else None, name=reader.name)
        report_result(result, "finetune")
        if is_main_rank():
            emit_manifest(output, header, records, result.model_path, result.run_dir, inputs=[manifest])
