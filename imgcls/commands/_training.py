"""Options and output handling shared by ``train`` and ``finetune`` (no torch at import time)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import click

from imgcls.devices import DEVICES_HELP
from imgcls.errors import UsageProblem
from imgcls.training.config import (AUGMENTS, CLASS_WEIGHTS, FINETUNE_EPOCHS, FINETUNE_RECIPE, OPTIMIZERS, SCHEDULES,
                                    TrainConfig, describe_augment_preset)

# Every option default below is the library's (imgcls.training.config is torch-free).
DEFAULTS = TrainConfig()


def _opt(*args: Any, **kwargs: Any) -> Callable:
    return click.option(*args, **kwargs)


class WorkersType(click.ParamType):
    """A number of worker processes (0 or more), or "auto"."""

    name = "workers"

    def convert(self, value: Any, param: Any, ctx: Any) -> int | str:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        text = str(value).strip().lower()
        if text == "auto":
            return "auto"
        if text.isdigit():
            return int(text)
        self.fail(f"{value!r} is not a number of workers (0 or more) or 'auto'", param, ctx)

    def shell_complete(self, ctx: Any, param: Any, incomplete: str) -> list:
        from click.shell_completion import CompletionItem

        return [CompletionItem("auto")] if "auto".startswith(incomplete) else []


WORKERS = WorkersType()


def loop_options(inherit: bool) -> Callable:
    """Optimisation and data options. ``inherit``: defaults come from the parent model (finetune)."""

    def d(name: str) -> Any:
        return None if inherit else getattr(DEFAULTS, name)

    def show(name: str) -> Any:
        return "as the parent run" if inherit else True

    augment_help = "; ".join(f"{name} = {describe_augment_preset(name)}" for name in AUGMENTS if name != "none")

    def decorate(func: Callable) -> Callable:
        options = [
            _opt("--epochs", type=click.IntRange(min=1), default=FINETUNE_EPOCHS if inherit else DEFAULTS.epochs,
                 show_default=True,
                 help="Maximum number of epochs (early stopping may end sooner)."),
            _opt("--batch-size", type=click.IntRange(min=1), default=d("batch_size"), show_default=show("batch_size"),
                 help="Training images per step, per process: under torchrun the global batch is the number "
                      "of processes times this (the learning rate is not scaled for you)."),
            _opt("--optimizer", type=click.Choice(OPTIMIZERS), default=d("optimizer"), show_default=show("optimizer"),
                 help="AdamW (decoupled weight decay), Adam, or SGD with Nesterov momentum."),
            _opt("--weight-decay", type=click.FloatRange(min=0), default=d("weight_decay"),
                 show_default=show("weight_decay"),
                 help="Weight decay (not applied to biases and normalisation layers)."),
            _opt("--momentum", type=click.FloatRange(0, 1), default=d("momentum"), show_default=show("momentum"),
                 help="SGD momentum (--optimizer sgd only)."),
            _opt("--schedule", type=click.Choice(SCHEDULES), default=None,
                 help="Learning-rate schedule, per step: cosine decay to 0 over --epochs; onecycle: warm-up "
                      "from 1/5 of the rate over the first 30% of the steps, then cosine decay (torch's "
                      "OneCycleLR, momentum cycled 0.95-0.85; fastai's fine_tune schedule; early stopping "
                      "waits for the peak); plateau (x0.2 after 2 epochs without a better validation loss); "
                      f"or none. Default: {FINETUNE_RECIPE['schedule']} when fine-tuning trained weights (finetune; "
                      f"train from pretrained weights without --freeze), {DEFAULTS.schedule} otherwise."),
            _opt("--label-smoothing", type=click.FloatRange(0, 0.5), default=None,
                 help="Label smoothing of the training loss (validation loss is plain cross-entropy). Default: "
                      f"{FINETUNE_RECIPE['label_smoothing']} when fine-tuning trained weights (finetune; train "
                      f"from pretrained weights without --freeze), {DEFAULTS.label_smoothing:g} otherwise (measured: "
                      "it helped fine-tuning "
                      "and hurt the scratch cnn on the cat/dog photos)."),
            _opt("--mixup", type=click.FloatRange(min=0), default=None, metavar="ALPHA",
                 help="Mixup: each training batch is blended with a shuffled copy of itself, weight drawn from "
                      "Beta(ALPHA, ALPHA), labels blended alike (torchvision's v2.MixUp; timm uses 0.8). "
                      "0: off. Validation, precise BN and the saved model see plain images. With --freeze the "
                      "backbone then runs on every batch (its features change with the blend). Default: "
                      f"{FINETUNE_RECIPE['mixup']} when fine-tuning trained weights (finetune; train from "
                      f"pretrained weights without --freeze), {DEFAULTS.mixup:g} otherwise (measured: it helped "
                      "fine-tuning on "
                      "Fashion-MNIST and hurt the scratch cnn on both data sets)."),
            _opt("--cutmix", type=click.FloatRange(min=0), default=d("cutmix"), show_default=show("cutmix"), metavar="ALPHA",
                 help="CutMix: a box of each training image is pasted from another, box area from Beta(ALPHA, "
                      "ALPHA), labels mixed by area (torchvision's v2.CutMix; timm uses 1.0). 0: off. With "
                      "--mixup too, each batch gets one of the two at random. Off by default: it did not help "
                      "the scratch cnn consistently in the recipes study."),
            _opt("--ema", type=click.FloatRange(0, 1, max_open=True), default=d("ema"), show_default=show("ema"),
                 metavar="DECAY",
                 help="Keep an exponential moving average of the weights (torch's swa_utils.AveragedModel), "
                      "updated every step with DECAY (e.g. 0.99-0.999; warmed up as min(DECAY, (1+n)/(10+n)) "
                      "after n steps). Each epoch validates both; the saved model is the average when its "
                      "validation loss is lower (history.jsonl: \"weights\": \"ema\" or \"live\"). "
                      "Checkpoints carry it for --resume. 0: off (by default: it changed accuracy by less "
                      "than the seeds did in the recipes study, and costs a second validation per epoch)."),
            _opt("--precise-bn", type=click.IntRange(min=0), default=d("precise_bn"), show_default=show("precise_bn"),
                 metavar="N",
                 help="Before each validation, recompute the running statistics of the BatchNorm layers that "
                      "train, on up to N plain training images (a seeded sample), so the model in eval mode "
                      "(validation, the saved file) normalises with statistics of its current weights: on "
                      "short runs the running averages lag far behind. Frozen blocks and --freeze-bn layers "
                      "keep theirs. Costs about one forward pass over N images per epoch. 0: off."),
            _opt("--class-weights", type=click.Choice(CLASS_WEIGHTS), default=d("class_weights"),
                 show_default=show("class_weights"),
                 help="auto: weight the training loss by n / (classes x count) per class, for imbalanced data."),
            _opt("--patience", type=click.IntRange(min=0), default=d("patience"), show_default=show("patience"),
                 help="Early stopping: stop after this many epochs without a lower validation loss "
                      "(0: never). The best epoch's weights are always the ones saved."),
            _opt("--freeze-bn/--train-bn", default=None,
                 help="Keep the backbone's BatchNorm layers in inference mode (running statistics fixed; their "
                      "scale and shift still train). Default: on when starting from trained weights (pretrained "
                      "backbones, finetune), off from scratch. Small batches of other images would otherwise "
                      "overwrite the statistics the features depend on."),
            _opt("--augment", type=click.Choice(AUGMENTS), default=d("augment"), show_default=show("augment"),
                 help=f"On-the-fly augmentation of training images: {augment_help} (standard: Keras "
                      "ImageDataGenerator style; imgcls augment --preset writes the same as files)."),
            _opt("--flip/--no-flip", default=d("flip"), show_default=show("flip"),
                 help="Random horizontal flips in the light/standard/strong presets. Use --no-flip for digits, "
                      "text and anything whose mirror image is another class."),
            _opt("--seed", type=int, default=d("seed"), show_default=show("seed"),
                 help="Seeds weights, data order, augmentation and a held-out validation split: the same seed "
                      "on the CPU gives identical weights."),
            _opt("--device", default=DEFAULTS.device, show_default=True,
                 help=f"{DEVICES_HELP}. Under torchrun each "
                      "process takes the GPU of its LOCAL_RANK (nccl; gloo on the CPU)."),
            _opt("--amp/--no-amp", default=DEFAULTS.amp, show_default=True,
                 help="Mixed precision on CUDA (bf16 where supported, else fp16 with a gradient scaler). "
                      "No effect on CPU/MPS."),
            _opt("--workers", type=WORKERS, default=DEFAULTS.workers, show_default=True, metavar="N|auto",
                 help="DataLoader worker processes, used for --augment strong and for data sets too large "
                      "to hold decoded in memory (IMGCLS_PRELOAD_LIMIT_MB, default 4096); otherwise batches "
                      "come straight from memory and no worker starts. auto: from the CPUs this process may "
                      "use (shared by the torchrun processes of the machine): min(8, CPUs - 1) on CUDA/MPS, "
                      "min(4, CPUs / 2) on the CPU, never more than batches per epoch. 0: decode in the main "
                      "process. Workers stay alive between epochs; memory is pinned on CUDA; 2 batches "
                      "prefetched per worker. -v shows the choice. The result does not depend on the number."),
            _opt("--threads", type=click.IntRange(min=0), default=DEFAULTS.threads, show_default=True,
                 help="CPU threads for PyTorch (0: its default, one per core). On a CPU shared with other "
                      "jobs, fewer threads than cores avoids threads waiting on each other."),
            _opt("--compile/--no-compile", default=DEFAULTS.compile, show_default=True,
                 help="Run the training and validation steps through torch.compile (needs a C/C++ compiler). "
                      "Off by default: compiling costs 30-60 s up front, and on the 2-core CPU it was measured "
                      "slower than eager mode for imgcls' small CNNs (docs/benchmarks.md); try it on a GPU or for "
                      "long runs. Not used on the frozen-feature path (the head alone is a single Linear layer)."),
            _opt("--cache/--no-cache", default=DEFAULTS.cache, show_default=True,
                 help="Keep decoded, resized images in the on-disk cache shared with eval and predict, so the "
                      "next run on the same unchanged files skips decoding (entries keyed by the files as they "
                      "are now: path, size, modification and change times; the image size and channels; "
                      "damaged entries are rebuilt). With a "
                      "frozen backbone its features are cached too, keyed also by a hash of the backbone's "
                      "weights, the mean/std, the precision and the augmented view: a changed image, weights "
                      "file or preprocessing is never served stale features. --no-cache: nothing is read or "
                      "written there (frozen features are still computed once per run, in memory)."),
            _opt("--cache-dir", type=click.Path(file_okay=False), default=DEFAULTS.cache_dir, metavar="DIR",
                 help="Where the decoded-image and feature caches live. Default: $IMGCLS_CACHE, else "
                      "~/.cache/imgcls."),
            _opt("--feature-cache/--no-feature-cache", default=DEFAULTS.feature_cache, show_default=True,
                 help="With a frozen backbone (and --augment none, or --feature-views K), compute its features "
                      "once and train the head on them (identical result, epochs cost almost nothing). "
                      "--no-feature-cache runs the backbone every step."),
            _opt("--val-fraction", type=click.FloatRange(0.01, 0.5), default=DEFAULTS.val_fraction, show_default=True,
                 help="Only when the manifest has no val records: hold out this stratified fraction of the "
                      "training images for validation (with a warning)."),
            _opt("--checkpoint/--no-checkpoint", default=DEFAULTS.checkpoint, show_default=True,
                 help="Write checkpoint.safetensors (for --resume) as often as --save-interval allows."),
            _opt("--save-interval", type=click.FloatRange(min=0), default=DEFAULTS.save_interval, show_default=True,
                 metavar="SECONDS",
                 help="Write the best model and the checkpoint after the first epoch, then at most once per "
                      "SECONDS (at the end of the first epoch that finds them due), and always at the end: last "
                      "epoch, early stopping, Ctrl-C, SIGTERM or an error. Short epochs (a frozen backbone) then "
                      "cost no file writes; long ones are saved every epoch as before. 0: after every epoch. "
                      "A run killed without warning (kill -9, out of memory, power loss) loses at most the "
                      "epochs of the last SECONDS plus the one under way; --resume continues from the last "
                      "checkpoint written."),
            _opt("--out", type=click.Path(file_okay=False), default=None, metavar="DIR",
                 help="Run folder to create (must be new or empty). Default: runs/<YYYYmmdd-HHMMSS>-<arch>."),
            _opt("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True), default="-", show_default=True,
                 metavar="FILE", help="Where the manifest goes on, with \"model\" and \"run\" in its header "
                      "('-': stdout; not printed when stdout is a terminal)."),
        ]
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def parse_floats_option(value: str | None, name: str) -> list[float] | None:
    if value is None:
        return None
    from imgcls.models.weights import parse_floats

    return parse_floats(value, name)


def check_run_outputs(output: str, out: str | None, manifest: str | None) -> None:
    """Before reading or decoding anything: -o can be written (and is not the input manifest), --out can be the run."""
    from imgcls.fsutil import check_output

    if output != "-":
        check_output(output, "-o", inputs=[manifest] if manifest else ())
    if out is not None:
        from imgcls.training.rundir import RunDir

        RunDir.check_new(out)


def emit_manifest(output: str, header: dict, records: list, model_path: Any, run_dir: Any,
                  inputs: Sequence[str] = ()) -> None:
    """The input manifest, passed through, with the model and run recorded in the header."""
    from pathlib import Path

    from imgcls.manifest import write_manifest
    from imgcls.training._console import info

    out_header = {k: v for k, v in header.items() if not k.startswith("_")}
    out_header["model"] = str(Path(model_path).resolve())
    out_header["run"] = str(Path(run_dir).resolve())
    if output == "-" and sys.stdout.isatty():
        info(f"model: {out_header['model']} (stdout is a terminal: the manifest is not printed; pipe it on, "
             f"e.g. | imgcls eval)")
        return
    write_manifest(output, out_header, records, option="-o", inputs=inputs)


def report_result(result: Any, command: str) -> None:
    """Summary on stderr; Ctrl-C: say what is usable and exit 130."""
    from imgcls.training._console import info

    fit = result.fit
    if fit.interrupted:
        if result.model_path is not None:
            msg = (f"interrupted after epoch {fit.history[-1]['epoch'] if fit.history else 0}: the best model so far "
                   f"(epoch {fit.best_epoch}) is in {result.model_path}; continue with: imgcls {command} --resume {result.run_dir}")
        else:
            msg = "interrupted before the first epoch ended: no model written"
        from imgcls import signals
        from imgcls.console import visible

        signal = getattr(result, "signal", None) or signals.received()
        if signal == 2:  # Ctrl-C: "interrupted" says it
            signal = None
        if signal is not None:
            msg = f"stopped by signal {signal}: {msg}"
        click.echo(f"imgcls {command}: {visible(msg)}", err=True)
        sys.exit(128 + signal if signal is not None else 130)
    best = [h for h in fit.history if h["epoch"] == fit.best_epoch]
    acc = ""
    if best:
        ema = best[-1].get("weights") == "ema"
        acc = f", val acc {best[-1]['ema_val_acc' if ema else 'val_acc']:.3f}" + (", EMA weights" if ema else "")
    if best and best[-1].get("head") in ("logreg", "ncm"):  # fitted in one step: no epochs to speak of
        info(f"saved {result.model_path} ({best[-1]['head']} head, val loss {fit.best_val_loss:.4f}{acc})")
        return
    info(f"saved {result.model_path} (best epoch {fit.best_epoch}, val loss {fit.best_val_loss:.4f}{acc})")


def check_no_terminal_stdin(manifest: str) -> None:
    if manifest == "-" and sys.stdin.isatty():
        raise UsageProblem("no manifest given: pass a manifest file or pipe one in (e.g. imgcls prepare DIR | imgcls train)")


# --resume continues a run with its own settings: only these may change on the command line.
RESUME_OVERRIDES = ("epochs", "patience", "device", "workers", "threads", "compile", "cache", "cache_dir",
                    "save_interval")
RESUME_MAY_CHANGE = ("resume", *RESUME_OVERRIDES, "manifest", "output", "debug", "quiet", "verbose")


def continue_run(command: str, resume: str, manifest: str, output: str, loop: dict[str, Any]) -> None:
    """``train --resume`` / ``finetune --resume``: refuse changed settings, continue, pass the manifest on."""
    from imgcls.commands._common import open_input
    from imgcls.commands._ranks import distributed_launch, is_main_rank
    from imgcls.manifest import read_all
    from imgcls.training import resume as resume_run

    ctx = click.get_current_context()
    from_command_line = [p.name for p in ctx.command.params
                         if ctx.get_parameter_source(p.name) == click.core.ParameterSource.COMMANDLINE]
    changed = [name for name in from_command_line if name not in RESUME_MAY_CHANGE]
    if changed:
        raise UsageProblem(f"--resume continues a run with its own settings; not allowed with: "
                           f"{', '.join('--' + n.replace('_', '-') for n in changed)}")
    check_run_outputs(output, None, manifest)
    header = records = root = None
    if manifest != "-" or (not sys.stdin.isatty() and not distributed_launch()):
        header, records, reader = read_all(open_input(manifest))
        root = reader.root
    overrides = {k: loop[k] for k in RESUME_OVERRIDES if k in from_command_line}
    result, header, records = resume_run(resume, header=header, records=records, root=root, overrides=overrides)
    report_result(result, command)
    if is_main_rank():
        emit_manifest(output, header, records, result.model_path, result.run_dir, inputs=[manifest])
