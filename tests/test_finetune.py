"""imgcls finetune: unfreezing the last N blocks, discriminative rates, history continuation, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import read_jsonl
from safetensors.torch import load_file, save_file
from test_train import make_manifest

from imgcls.manifest import read_all, write_manifest

TINY = ["--arch", "cnn", "--width", "8", "--depth", "2", "--batch-size", "8"]


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    return load_file(str(path / "model.safetensors" if path.is_dir() else path))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny cnn trained for 2 epochs, and the manifest stream train printed."""
    from click.testing import CliRunner

    from imgcls.cli import cli

    root = tmp_path_factory.mktemp("ft")
    manifest = make_manifest(root)
    result = CliRunner().invoke(cli, ["train", str(manifest), *TINY, "--epochs", "2", "--out", str(root / "parent")],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return root, manifest, result.stdout


def test_finetune_pipeline_continues_history(invoke, trained, tmp_path):
    root, manifest, stream = trained
    parent = root / "parent"
    out = tmp_path / "ft"
    result = invoke(["finetune", "--unfreeze", "1", "--epochs", "2", "--out", str(out)], input=stream)
    assert result.exit_code == 0, result.stderr
    lines = read_jsonl(result.stdout)
    assert lines[0]["model"] == str((out / "model.safetensors").resolve())
    assert lines[1:] == read_jsonl(stream)[1:]
    history = read_jsonl((out / "history.jsonl").read_text())
    assert [(h["epoch"], h["phase"]) for h in history] == [(1, "train"), (2, "train"), (3, "finetune"),
                                                           (4, "finetune")]
    assert "starting point" in result.stderr and "epoch 4/4" in result.stderr
    from imgcls.models.io import read_model_info

    info = read_model_info(out)
    assert info.parent == str((parent / "model.safetensors").resolve())
    assert info.trainable_blocks == 1
    assert info.config["phase"] == "finetune" and info.config["lr"] == 1e-3
    assert info.config["backbone_lr"] == pytest.approx(1e-4)
    # the fine-tuning recipe, whatever the parent trained with (cosine, no mixup, no smoothing)
    assert (info.config["schedule"], info.config["mixup"], info.config["label_smoothing"]) == ("onecycle", 0.2, 0.1)
    lrs = [h["lr"] for h in history if h["phase"] == "finetune"]
    assert lrs[-1] < 1e-6 < lrs[0]  # annealed to (nearly) 0 by the last epoch
    assert info.config["batch_size"] == 8  # inherited from the parent run
    before, after = _tensors(parent), _tensors(out)
    frozen = [k for k in before if k.startswith("backbone.0.")]  # block 0 (of 2) stays frozen, BN stats too
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    if info.extra["best_epoch"] > 2:  # an epoch improved on the start: the unfrozen block moved
        assert not all(torch.equal(before[k], after[k]) for k in before if k.startswith("backbone.1."))
    assert not (parent / "history.jsonl").read_text().count("finetune")  # the parent run is untouched


def test_finetune_discriminative_learning_rates(trained, tmp_path):
    from imgcls.training import finetune

    root, manifest, _ = trained
    header, records, reader = read_all(manifest)
    seen = {}

    def groups(trainer, record):  # the peak rate of the warm-up + cosine (onecycle: finetune's default)
        seen.update({g["name"]: g["max_lr"] for g in trainer.optimizer.param_groups})

    finetune(header, records, reader.root, root / "parent", {"epochs": 1, "lr": 3e-4}, unfreeze=None,
             backbone_lr_ratio=0.5, out=tmp_path / "a", callbacks=[groups])
    assert seen["head"] == pytest.approx(3e-4) and seen["backbone"] == pytest.approx(1.5e-4)
    assert seen["head-no-decay"] == pytest.approx(3e-4) and seen["backbone-no-decay"] == pytest.approx(1.5e-4)
    seen.clear()
    finetune(header, records, reader.root, root / "parent", {"epochs": 1, "lr": 3e-4, "backbone_lr": 1e-6},
             unfreeze=0, out=tmp_path / "b", callbacks=[groups])
    assert set(seen) == {"head", "head-no-decay"}  # frozen backbone: the optimizer never sees it


def test_finetune_defaults_are_the_librarys(invoke, trained, tmp_path):
    """The rate rule and recipe the finetune command states and applies are imgcls.training.config's."""
    from imgcls.commands.finetune import command
    from imgcls.training.config import BACKBONE_LR_RATIO, FINETUNE_EPOCHS, FINETUNE_RECIPE, PRETRAINED_LR

    options = {p.name: p.default for p in command.params}
    assert options["lr"] == PRETRAINED_LR and options["backbone_lr_ratio"] == BACKBONE_LR_RATIO
    assert options["epochs"] == FINETUNE_EPOCHS
    # every other optimisation option inherits from the parent run (None)
    assert all(options[k] is None for k in ("batch_size", "optimizer", "weight_decay", "augment", *FINETUNE_RECIPE))
    text = " ".join(invoke(["finetune", "--help"]).stdout.split())
    assert BACKBONE_LR_RATIO == 0.1 and "a tenth of it for the backbone" in text
    assert (f"{FINETUNE_RECIPE['schedule']} schedule" in text and f"--mixup {FINETUNE_RECIPE['mixup']}" in text
            and f"--label-smoothing {FINETUNE_RECIPE['label_smoothing']}" in text)
    # the library applies the same rule when the caller gives no rate (the command always gives one)
    from imgcls.models.io import read_model_info
    from imgcls.training import finetune

    root, manifest, _ = trained
    header, records, reader = read_all(manifest)
    finetune(header, records, reader.root, root / "parent", {"epochs": 1}, unfreeze=None, out=tmp_path / "ft")
    used = read_model_info(tmp_path / "ft").config
    assert used["lr"] == PRETRAINED_LR and used["backbone_lr"] == pytest.approx(PRETRAINED_LR * BACKBONE_LR_RATIO)
    assert {k: used[k] for k in FINETUNE_RECIPE} == FINETUNE_RECIPE


def test_finetune_no_improvement_keeps_the_starting_weights(trained, tmp_path, monkeypatch):
    from imgcls.training import finetune
    from imgcls.training.loop import Trainer

    root, manifest, _ = trained
    scripted = iter([0.5, 0.9, 0.8])
    real = Trainer.evaluate
    monkeypatch.setattr(Trainer, "evaluate", lambda self, feed: (next(scripted), real(self, feed)[1]))
    header, records, reader = read_all(manifest)
    result = finetune(header, records, reader.root, root / "parent", {"epochs": 2}, unfreeze=None,
                      out=tmp_path / "ft")
    from imgcls.models.io import read_model_info

    # nothing beat the starting point, which is the parent's best epoch
    assert result.fit.best_epoch == read_model_info(root / "parent").extra["best_epoch"]
    before, after = _tensors(root / "parent"), _tensors(tmp_path / "ft")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_finetune_frozen_then_unfrozen_transfer_recipe(invoke, tmp_path):
    import torchvision

    manifest = make_manifest(tmp_path)
    torch.manual_seed(7)
    state = torchvision.models.get_model("mobilenet_v3_small", weights=None).state_dict()
    weights = tmp_path / "imagenet.safetensors"
    save_file(state, str(weights), metadata={"mean": "[0.5, 0.5, 0.5]", "std": "[0.5, 0.5, 0.5]"})
    frozen = invoke(["train", str(manifest), "--arch", "mobilenet_v3_small", "--weights", str(weights), "--freeze",
                     "--image-size", "32", "--epochs", "2", "--batch-size", "8", "--out", str(tmp_path / "frozen")])
    assert frozen.exit_code == 0, frozen.stderr
    result = invoke(["finetune", "--unfreeze", "2", "--epochs", "1", "--lr", "1e-3", "--out", str(tmp_path / "ft")],
                    input=frozen.stdout)
    assert result.exit_code == 0, result.stderr
    from imgcls.models import get_model
    from imgcls.models.io import read_model_info

    info = read_model_info(tmp_path / "ft")
    assert (info.image_size, info.mean, info.trainable_blocks) == (32, [0.5] * 3, 2)
    model = get_model("mobilenet_v3_small", num_classes=3)
    after = _tensors(tmp_path / "ft")
    names = {id(p): n for n, p in model.named_parameters()}
    early = [names[id(p)] for b in model.blocks[:-2] for p in b.parameters()]
    late = [names[id(p)] for b in model.blocks[-2:] for p in b.parameters()]
    assert all(torch.equal(after[k], state[k[len("backbone."):]]) for k in early)
    if info.extra["best_epoch"] > read_model_info(tmp_path / "frozen").extra["best_epoch"]:  # an epoch improved
        assert not all(torch.equal(after[k], state[k[len("backbone."):]]) for k in late)


def test_finetune_classes_matched_by_name(invoke, trained, tmp_path):
    root, manifest, _ = trained
    header, records, _ = read_all(manifest)
    reordered = tmp_path / "reordered.jsonl"
    write_manifest(reordered, dict(header, classes=list(reversed(header["classes"]))), records)
    result = invoke(["finetune", str(reordered), "--model", str(root / "parent"), "--epochs", "1",
                     "--out", str(tmp_path / "ok")])
    assert result.exit_code == 0, result.stderr
    from imgcls.models.io import read_model_info

    assert read_model_info(tmp_path / "ok").classes == header["classes"]  # the model's own order

    extra = tmp_path / "extra.jsonl"
    new = dict(records[0], label="triangle")
    write_manifest(extra, dict(header, classes=[*header["classes"], "triangle"]), [*records, new])
    result = invoke(["finetune", str(extra), "--model", str(root / "parent"), "--out", str(tmp_path / "bad")])
    assert result.exit_code == 1 and "triangle" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "bad").exists()


def test_finetune_bad_model_files(invoke, trained, tmp_path):
    root, manifest, _ = trained
    good = (root / "parent" / "model.safetensors").read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good[: len(good) // 2])
    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(3)}, str(foreign))
    for path, expected in ((truncated, "truncated.safetensors"), (foreign, "not an imgcls model"),
                           (tmp_path / "missing.safetensors", "no such model")):
        result = invoke(["finetune", str(manifest), "--model", str(path), "--out", str(tmp_path / "x")])
        assert result.exit_code == 1, result.stderr
        assert expected in result.stderr and "Traceback" not in result.stderr
        assert not (tmp_path / "x").exists()
    no_model = invoke(["finetune", str(manifest)])
    assert no_model.exit_code == 2 and "no model to fine-tune" in no_model.stderr
    too_many = invoke(["finetune", str(manifest), "--model", str(root / "parent"), "--unfreeze", "5"])
    assert too_many.exit_code == 2 and "2 blocks" in too_many.stderr
    word = invoke(["finetune", str(manifest), "--model", str(root / "parent"), "--unfreeze", "most"])
    assert word.exit_code == 2


def test_finetune_resume_after_interrupt(invoke, trained, tmp_path, monkeypatch):
    from imgcls.training.loop import Trainer

    root, manifest, stream = trained
    real = Trainer.train_epoch
    calls = []

    def train_epoch(self, advance):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, advance)

    monkeypatch.setattr(Trainer, "train_epoch", train_epoch)
    out = tmp_path / "ft"
    result = invoke(["finetune", "--epochs", "3", "--out", str(out)], input=stream)
    assert result.exit_code == 130 and "finetune --resume" in result.stderr
    monkeypatch.setattr(Trainer, "train_epoch", real)
    resumed = invoke(["finetune", "--resume", str(out), "-o", str(tmp_path / "o.jsonl")])
    assert resumed.exit_code == 0, resumed.stderr
    history = read_jsonl((out / "history.jsonl").read_text())
    assert [(h["epoch"], h["phase"]) for h in history][-3:] == [(3, "finetune"), (4, "finetune"), (5, "finetune")]


def test_finetune_batchnorm_statistics_frozen_by_default(invoke, trained, tmp_path):
    """Checked on the checkpoint (the weights after the last epoch, whichever epoch was best)."""
    from imgcls.training.checkpoint import load_checkpoint

    root, manifest, stream = trained
    before = _tensors(root / "parent")
    stats = [k for k in before if k.startswith("backbone.") and ("running_mean" in k or "running_var" in k)]
    kept = invoke(["finetune", "--epochs", "1", "--out", str(tmp_path / "kept")], input=stream)
    moved = invoke(["finetune", "--epochs", "1", "--train-bn", "--out", str(tmp_path / "moved")], input=stream)
    assert kept.exit_code == 0 and moved.exit_code == 0, kept.stderr + moved.stderr
    kept_t = load_checkpoint(tmp_path / "kept").model_state()
    moved_t = load_checkpoint(tmp_path / "moved").model_state()
    assert stats and all(torch.equal(before[k], kept_t[k]) for k in stats)
    assert not all(torch.equal(before[k], moved_t[k]) for k in stats)
    weights = [k for k in before if k.startswith("backbone.") and k.endswith(".weight")]
    assert not all(torch.equal(before[k], kept_t[k]) for k in weights)  # the BN-frozen backbone still learns


@pytest.mark.parametrize("head", ["logreg", "ncm"])
def test_finetune_from_a_closed_form_head_starts_from_its_weights(invoke, tmp_path, head):
    from imgcls.models import get_model
    from imgcls.models.io import read_model_info

    manifest = make_manifest(tmp_path)
    torch.manual_seed(1)
    weights = tmp_path / "w.safetensors"
    save_file(get_model("cnn", num_classes=3, in_channels=3, width=8, depth=2).state_dict(), str(weights))
    frozen = invoke(["train", str(manifest), *TINY, "--freeze", "--head", head, "--weights", str(weights),
                     "--out", str(tmp_path / "frozen")])
    assert frozen.exit_code == 0, frozen.stderr
    parent_val_loss = read_jsonl((tmp_path / "frozen" / "history.jsonl").read_text())[0]["val_loss"]
    result = invoke(["finetune", "--unfreeze", "1", "--epochs", "1", "--out", str(tmp_path / "ft")], input=frozen.stdout)
    assert result.exit_code == 0, result.stderr
    start = next(line for line in result.stderr.splitlines() if "starting point: val loss" in line)
    assert float(start.split("val loss ")[1].split()[0]) == pytest.approx(parent_val_loss, abs=1e-4)
    info = read_model_info(tmp_path / "ft")
    assert info.head_norm == "l2" and info.config["head"] == "linear"  # the same layout, now trained by SGD
    history = read_jsonl((tmp_path / "ft" / "history.jsonl").read_text())
    assert [(h["epoch"], h["phase"]) for h in history] == [(1, "train"), (2, "finetune")]
    if info.extra["best_epoch"] == 1:  # no epoch beat the fitted head: the saved model is the parent's
        before, after = _tensors(tmp_path / "frozen"), _tensors(tmp_path / "ft")
        assert all(torch.equal(before[k], after[k]) for k in before)
