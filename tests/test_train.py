"""imgcls train: the training loop, run folders, checkpoints, resume, weights and bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_class_folder, read_jsonl
from safetensors.torch import load_file, save_file

from imgcls.manifest import make_header, read_all, write_manifest

TINY = ["--arch", "cnn", "--width", "8", "--depth", "2", "--batch-size", "8"]


def make_manifest(root: Path, per_class: int = 10, val: int = 3, size: int = 16, mode: str = "RGB",
                  classes=("circle", "square", "stripe"), extra: dict | None = None) -> Path:
    """A manifest (header + records) over generated images, without going through prepare."""
    make_class_folder(root / "images", per_class=per_class, size=size, classes=classes, mode=mode)
    records = []
    for c in classes:
        for i in range(per_class):
            split = "val" if i < val else "train"
            rec = {"path": str(root / "images" / c / f"{c}_{i:03d}.png"), "label": c, "split": split,
                   "width": size, "height": size, "mode": mode}
            rec.update(extra or {})
            records.append(rec)
    path = root / "data.jsonl"
    write_manifest(path, make_header(list(classes), root=str(root)), records)
    return path


@pytest.fixture
def manifest(tmp_path) -> Path:
    return make_manifest(tmp_path, extra={"note": "kept"})


def _train(invoke, manifest: Path, out: Path, *args: str):
    return invoke(["train", str(manifest), *TINY, "--out", str(out), *args])


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(path) / "model.safetensors" if Path(path).is_dir() else path))


def _library_train(manifest: Path, out: Path, callbacks=(), **cfg):
    from imgcls.training import TrainConfig, train

    header, records, reader = read_all(manifest)
    options = {"arch": "cnn", "arch_options": {"width": 8, "depth": 2}, "batch_size": 8, "epochs": 3, **cfg}
    return train(header, records, reader.root, TrainConfig(**options), out=out, callbacks=callbacks)


# -- the pipeline and the run folder ----------------------------------------------------------

def test_train_prepare_pipeline_through_cli(invoke, tmp_path):
    make_class_folder(tmp_path / "shapes", per_class=10, size=16)
    prepared = invoke(["prepare", str(tmp_path / "shapes"), "--val", "3", "--test", "2"])
    assert prepared.exit_code == 0, prepared.stderr
    out = tmp_path / "run"
    result = invoke(["train", *TINY, "--epochs", "2", "--out", str(out)], input=prepared.stdout)
    assert result.exit_code == 0, result.stderr
    lines = read_jsonl(result.stdout)
    incoming = read_jsonl(prepared.stdout)
    assert lines[0]["model"] == str((out / "model.safetensors").resolve())
    assert lines[0]["run"] == str(out.resolve())
    assert lines[0]["classes"] == incoming[0]["classes"]
    assert lines[1:] == incoming[1:]  # every record passed through untouched, test records included
    history = read_jsonl((out / "history.jsonl").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "phase"} <= set(history[0])
    assert (out / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "checkpoint.safetensors").exists() and (out / "manifest.jsonl").exists()
    assert "epoch 2/2" in result.stderr
    assert (tmp_path / "latest").resolve() == out.resolve()

    from imgcls.models.io import load_model

    model, info = load_model(out)
    assert info.arch == "cnn" and info.classes == ["circle", "square", "stripe"]
    assert (info.image_size, info.channels, info.mean, info.std) == (16, 3, [0.5] * 3, [0.5] * 3)
    assert info.config["epochs"] == 2 and info.config["arch_options"] == {"width": 8, "depth": 2}
    assert len(info.manifest_hash) == 16 and info.extra["best_epoch"] in (1, 2)


def test_train_unknown_fields_pass_through_and_default_run_folder(invoke, manifest, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke(["train", str(manifest), *TINY, "--epochs", "1"])
    assert result.exit_code == 0, result.stderr
    lines = read_jsonl(result.stdout)
    assert all(r["note"] == "kept" for r in lines[1:]) and len(lines) == 31
    run = Path(lines[0]["run"])
    assert run.parent == (tmp_path / "runs").resolve() and run.name.endswith("-cnn")
    assert (tmp_path / "runs" / "latest").resolve() == run
    # a second run in the same second gets its own folder, and latest follows it
    second = invoke(["train", str(manifest), *TINY, "--epochs", "1"])
    run2 = Path(read_jsonl(second.stdout)[0]["run"])
    assert run2 != run and (tmp_path / "runs" / "latest").resolve() == run2


def test_train_latest_falls_back_to_a_text_file(manifest, tmp_path, monkeypatch):
    from imgcls.models.io import resolve_model_path
    from imgcls.training.rundir import RunDir, resolve_run

    def no_symlinks(*args, **kwargs):
        raise OSError("symlinks not supported")

    run = RunDir(tmp_path / "runs" / "a")
    run.path.mkdir(parents=True)
    monkeypatch.setattr(os, "symlink", no_symlinks)
    run.update_latest()
    latest = tmp_path / "runs" / "latest"
    assert latest.is_file() and not latest.is_symlink()
    assert resolve_run(latest) == run.path.resolve()
    assert resolve_model_path(latest) == run.path.resolve() / "model.safetensors"


def test_train_list_archs_table_and_json(invoke):
    table = invoke(["train", "--list-archs"])
    assert table.exit_code == 0
    assert table.stdout.splitlines()[0].split()[:4] == ["name", "params", "size", "channels"]
    for name in ("cnn", "densenet121", "mobilenet_v2", "resnet50", "vgg16"):
        assert any(line.startswith(name + " ") for line in table.stdout.splitlines())
    rows = json.loads(invoke(["train", "--list-archs", "--json"]).stdout)
    by_name = {r["name"]: r for r in rows}
    assert by_name["resnet18"]["default_size"] == 224 and by_name["resnet18"]["blocks"] == 5
    assert 11_000_000 < by_name["resnet18"]["parameters"] < 11_300_000  # backbone without the ImageNet head
    assert by_name["cnn"]["pretrained"] == "no" and by_name["cnn"]["default_size"] is None
    assert len(rows) == 83 and by_name["vit_b_16"]["family"] == "vision_transformer"  # 3 scratch + torchvision's 80
    swag = {w["name"]: w["size"] for w in by_name["vit_b_16"]["weights"]}
    assert swag["IMAGENET1K_SWAG_E2E_V1"] == 384 and by_name["vit_b_16"]["default_weights"] == "IMAGENET1K_V1"
    vit = invoke(["train", "--list-archs", "vit"])
    names = [line.split()[0] for line in vit.stdout.splitlines()[1:]]
    assert names == ["maxvit_t", "vit_b_16", "vit_b_32", "vit_h_14", "vit_l_16", "vit_l_32"]
    assert "IMAGENET1K_SWAG_E2E_V1@384" in vit.stdout
    glob = json.loads(invoke(["train", "--list-archs", "regnet_y_*", "--json"]).stdout)
    assert len(glob) == 8 and all(r["family"] == "regnet" for r in glob)
    assert "no architecture matches" in _one_line_error(invoke(["train", "--list-archs", "zzz"]), 2)


# -- the loop ---------------------------------------------------------------------------------

def test_train_same_seed_same_weights(manifest, tmp_path):
    a = _library_train(manifest, tmp_path / "a", epochs=2, augment="standard")
    b = _library_train(manifest, tmp_path / "b", epochs=2, augment="standard")
    c = _library_train(manifest, tmp_path / "c", epochs=2, augment="standard", seed=1)
    ta, tb, tc = _tensors(a.model_path), _tensors(b.model_path), _tensors(c.model_path)
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert not all(torch.equal(ta[k], tc[k]) for k in ta)


def test_train_early_stopping_stops_and_restores_best(manifest, tmp_path, monkeypatch):
    from imgcls.training.loop import Trainer

    scripted = iter([1.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99])
    real_evaluate = Trainer.evaluate

    def evaluate(self, feed):
        loss, acc = real_evaluate(self, feed)
        return next(scripted), acc

    snapshots = {}

    def remember(trainer, record):
        snapshots[record["epoch"]] = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    result = _library_train(manifest, tmp_path / "r", epochs=7, patience=2, callbacks=[remember])
    assert result.fit.stopped_early and result.fit.best_epoch == 2
    assert [h["epoch"] for h in result.fit.history] == [1, 2, 3, 4]
    saved = _tensors(result.model_path)
    assert all(torch.equal(saved[k], snapshots[2][k]) for k in saved)
    assert not all(torch.equal(saved[k], snapshots[4][k]) for k in saved)


def test_train_freeze_leaves_backbone_bit_identical(manifest, tmp_path, invoke):
    """Both paths: cached features (augment none) and the backbone run every step (augment light)."""
    import torchvision

    torch.manual_seed(3)
    state = torchvision.models.get_model("mobilenet_v3_small", weights=None).state_dict()
    weights = tmp_path / "w.safetensors"
    save_file(state, str(weights), metadata={"mean": "0.5,0.5,0.5", "std": "0.25,0.25,0.25"})
    for name, extra in (("cached", []), ("stepped", ["--augment", "light"])):
        out = tmp_path / name
        result = invoke(["train", str(manifest), "--arch", "mobilenet_v3_small", "--weights", str(weights),
                         "--image-size", "32", "--freeze", "--head", "linear", "--epochs", "2", "--batch-size", "8",
                         "--out", str(out), *extra])
        assert result.exit_code == 0, result.stderr
        saved = _tensors(out)
        backbone = {k[len("backbone."):]: v for k, v in saved.items() if k.startswith("backbone.")}
        assert backbone and all(torch.equal(backbone[k], state[k]) for k in backbone)  # BN statistics too
        first = _tensors(out)  # the head did train
        assert not torch.equal(first["head.1.weight"], torch.zeros_like(first["head.1.weight"]))
        from imgcls.models.io import read_model_info

        info = read_model_info(out)
        assert info.mean == [0.5] * 3 and info.std == [0.25] * 3 and info.trainable_blocks == 0
        assert ("computed once" in result.stderr) == (name == "cached")


def test_train_feature_cache_matches_stepping_the_backbone(manifest, tmp_path):
    a = _library_train(manifest, tmp_path / "a", arch="mobilenet_v3_small", arch_options={}, image_size=32,
                       trainable_blocks=0, head="linear", pretrained=False, epochs=2)
    b = _library_train(manifest, tmp_path / "b", arch="mobilenet_v3_small", arch_options={}, image_size=32,
                       trainable_blocks=0, head="linear", pretrained=False, epochs=2, feature_cache=False)
    ta, tb = _tensors(a.model_path), _tensors(b.model_path)
    assert torch.allclose(ta["head.1.weight"], tb["head.1.weight"], atol=1e-5)


def test_train_checkpoint_round_trip(tmp_path):
    from imgcls.training.checkpoint import load_checkpoint, save_checkpoint

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    sched.step()
    gen = torch.Generator().manual_seed(5)
    torch.randperm(10, generator=gen)
    path = save_checkpoint(tmp_path / "c.safetensors", model=model, optimizer=opt, scheduler=sched,
                           scaler=None, generator=gen, state={"epoch": 3, "history": [{"epoch": 1}]})
    ckpt = load_checkpoint(path)
    assert ckpt.meta["epoch"] == 3 and ckpt.meta["history"] == [{"epoch": 1}]
    model2 = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    model2.load_state_dict(ckpt.model_state())
    opt2 = torch.optim.AdamW(model2.parameters(), lr=0.5)
    opt2.load_state_dict(ckpt.optimizer_state())
    s1, s2 = opt.state_dict(), opt2.state_dict()
    for pid in s1["state"]:
        for key, value in s1["state"][pid].items():
            assert torch.equal(value, s2["state"][pid][key])
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert torch.equal(ckpt.tensors["rng.data"], gen.get_state())
    assert b"pickle" not in path.read_bytes()[:200] and path.read_bytes()[8:9] == b"{"  # safetensors header


def test_train_resume_after_interrupt_matches_uninterrupted_run(manifest, tmp_path, invoke):
    full = _library_train(manifest, tmp_path / "full", epochs=3, augment="light")

    def interrupt(trainer, record):
        if record["epoch"] == 1:
            raise KeyboardInterrupt

    cut = _library_train(manifest, tmp_path / "cut", epochs=3, augment="light", callbacks=[interrupt])
    assert cut.interrupted and cut.model_path is not None
    assert len(read_jsonl((tmp_path / "cut" / "history.jsonl").read_text())) == 1
    result = invoke(["train", "--resume", str(tmp_path / "cut"), "-o", str(tmp_path / "out.jsonl")])
    assert result.exit_code == 0, result.stderr
    assert "resuming" in result.stderr
    history = read_jsonl((tmp_path / "cut" / "history.jsonl").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    ta, tb = _tensors(full.model_path), _tensors(tmp_path / "cut")
    assert all(torch.equal(ta[k], tb[k]) for k in ta)  # same seed, same data order, same weights
    assert read_jsonl((tmp_path / "out.jsonl").read_text())[0]["model"].endswith("cut/model.safetensors")
    # finished: resuming again needs more epochs; --epochs extends
    again = invoke(["train", "--resume", str(tmp_path / "cut")])
    assert again.exit_code == 2 and "--epochs" in again.stderr
    more = invoke(["train", "--resume", str(tmp_path / "cut"), "--epochs", "4", "-o", str(tmp_path / "o2.jsonl")])
    assert more.exit_code == 0, more.stderr
    assert [h["epoch"] for h in read_jsonl((tmp_path / "cut" / "history.jsonl").read_text())] == [1, 2, 3, 4]
    other = invoke(["train", "--resume", str(tmp_path / "cut"), "--lr", "0.1"])
    assert other.exit_code == 2 and "--lr" in other.stderr


def test_train_ctrl_c_exits_130_with_usable_run_folder(invoke, manifest, tmp_path, monkeypatch):
    from imgcls.training.loop import Trainer

    real = Trainer.train_epoch
    calls = []

    def train_epoch(self, advance):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, advance)

    monkeypatch.setattr(Trainer, "train_epoch", train_epoch)
    out = tmp_path / "run"
    result = _train(invoke, manifest, out, "--epochs", "5")
    assert result.exit_code == 130
    assert result.stdout == ""
    assert "interrupted after epoch 1" in result.stderr and "--resume" in result.stderr
    from imgcls.models.io import load_model

    load_model(out)  # the best model so far is complete and loadable
    assert (out / "checkpoint.safetensors").exists()
    # interrupted during the first epoch: no model, no folder left behind
    calls.clear()
    calls.append(1)
    out2 = tmp_path / "run2"
    result = _train(invoke, manifest, out2, "--epochs", "5")
    assert result.exit_code == 130 and "no model written" in result.stderr
    assert not out2.exists()


def test_train_grayscale_data_gives_one_channel_and_data_size(tmp_path):
    manifest = make_manifest(tmp_path, size=12, mode="L")
    result = _library_train(manifest, tmp_path / "r", epochs=1)
    assert (result.config.channels, result.config.image_size) == (1, 12)
    tiny = make_manifest(tmp_path / "tiny", size=4, mode="L")
    result = _library_train(tiny, tmp_path / "r2", epochs=1)
    assert result.config.image_size == 8  # clamped to [8, 64]


def test_train_augment_presets_per_image():
    from imgcls.training.augment import AugmentSpec, preset, random_affine

    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8).repeat(16, 1, 1, 1)
    assert torch.equal(random_affine(x, preset("none")), x)
    flipped = random_affine(x, AugmentSpec(flip=True))
    assert flipped.shape == x.shape
    is_flipped = [torch.allclose(flipped[i], x[i].flip(-1)) for i in range(len(x))]
    is_same = [torch.allclose(flipped[i], x[i]) for i in range(len(x))]
    assert all(a or b for a, b in zip(is_flipped, is_same)) and any(is_flipped) and any(is_same)
    assert not preset("standard", flip=False).flip and preset("strong").policy == "trivialaugment"
    moved = random_affine(x, preset("standard"))
    assert not torch.equal(moved[0], moved[2])  # each image gets its own transform


def test_train_strong_augment_and_class_weights_run(manifest, tmp_path):
    from imgcls.training.run import class_weights_for

    weights = class_weights_for(torch.tensor([0, 0, 0, 1]), 3)
    assert weights.tolist() == pytest.approx([4 / 6, 2.0, 0.0])
    result = _library_train(manifest, tmp_path / "r", epochs=1, augment="strong", class_weights="auto",
                            label_smoothing=0.1, optimizer="sgd", schedule="plateau")
    assert result.model_path.exists()


# -- weights through the CLI -------------------------------------------------------------------

def test_train_offline_pretrained_error_names_cache_file(invoke, manifest, tmp_path, monkeypatch):
    import urllib.error

    import torch.hub

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network (test)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    out = tmp_path / "run"
    result = invoke(["train", str(manifest), "--arch", "mobilenet_v3_small", "--out", str(out)])
    assert result.exit_code == 1
    line = result.stderr.strip().splitlines()[-1]
    assert str(tmp_path / "th" / "hub" / "checkpoints" / "mobilenet_v3_small-047dcff4.pth") in line
    assert "--weights" in line and "Traceback" not in result.stderr
    assert not out.exists() and result.stdout == ""


def test_train_pretrained_from_cache_uses_imagenet_normalization(invoke, manifest, tmp_path, monkeypatch):
    import torch.hub
    import torchvision

    from imgcls.models.weights import cache_file_for, torchvision_weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    target = cache_file_for(torchvision_weights("mobilenet_v3_small"))
    target.parent.mkdir(parents=True)
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), target)
    out = tmp_path / "run"
    result = invoke(["train", str(manifest), "--arch", "mobilenet_v3_small", "--image-size", "32", "--freeze",
                     "--epochs", "1", "--out", str(out), "--std", "0.3"])
    assert result.exit_code == 0, result.stderr
    from imgcls.models.io import read_model_info

    info = read_model_info(out)
    assert info.mean == pytest.approx([0.485, 0.456, 0.406]) and info.std == [0.3] * 3  # --std overrides
    assert info.config["pretrained"] is True and "mobilenet_v3_small-047dcff4.pth" in info.config["weights_source"]


# -- bad input ----------------------------------------------------------------------------------

def _one_line_error(result, code: int) -> str:
    assert result.exit_code == code, (result.exit_code, result.stderr)
    assert "Traceback" not in result.stderr and result.stdout == ""
    return result.stderr


def test_train_bad_manifests(invoke, tmp_path):
    no_train = make_manifest(tmp_path / "a")
    header, records, _ = read_all(no_train)
    write_manifest(no_train, header, [dict(r, split="test") for r in records])
    assert "no labelled training records" in _one_line_error(_train(invoke, no_train, tmp_path / "o1"), 1)

    single = make_manifest(tmp_path / "b", classes=("circle",))
    assert "at least 2 classes" in _one_line_error(_train(invoke, single, tmp_path / "o2"), 1)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_train_without_val_holds_out_part_of_train(invoke, tmp_path):
    path = make_manifest(tmp_path, val=0)
    result = _train(invoke, path, tmp_path / "run", "--epochs", "1")
    assert result.exit_code == 0, result.stderr
    assert "no validation records" in result.stderr and "holding out" in result.stderr


def test_train_unreadable_image_is_one_line_and_no_run_folder(invoke, manifest, tmp_path):
    bad = tmp_path / "images" / "square" / "square_005.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage since prepare")
    out = tmp_path / "run"
    message = _one_line_error(_train(invoke, manifest, out), 1)
    assert str(bad) in message and len(message.strip().splitlines()) == 1
    assert not out.exists()


def test_train_usage_errors(invoke, manifest, tmp_path):
    assert "resnet18" in _one_line_error(invoke(["train", str(manifest), "--arch", "resnet19"]), 2)
    assert "--width" in _one_line_error(invoke(["train", str(manifest), "--arch", "cnn-classic", "--width", "4"]), 2)
    message = _one_line_error(invoke(["train", str(manifest), *TINY, "--mean", "0.1,0.2"]), 2)
    assert "--mean" in message
    assert "no pretrained weights" in _one_line_error(invoke(["train", str(manifest), *TINY, "--pretrained"]), 2)
    message = _one_line_error(invoke(["train", str(manifest), "--arch", "resnet18", "--image-size", "16",
                                      "--no-pretrained"]), 2)
    assert "at least 32" in message
    message = _one_line_error(invoke(["train", str(manifest), "--arch", "vit_b_16", "--weights-name", "SWAG"]), 2)
    assert "IMAGENET1K_SWAG_E2E_V1" in message and "IMAGENET1K_V1" in message  # the valid names
    message = _one_line_error(invoke(["train", str(manifest), "--arch", "resnet18", "--weights-name", "IMAGENET1K_V1",
                                      "--no-pretrained"]), 2)
    assert "--no-pretrained" in message
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert "not empty" in _one_line_error(_train(invoke, manifest, tmp_path / "full"), 2)


def test_train_weights_from_an_imgcls_model_file(invoke, manifest, tmp_path):
    """A scratch arch can start from an earlier imgcls model's backbone (its head is ignored)."""
    first = _train(invoke, manifest, tmp_path / "a", "--epochs", "1", "--mean", "0.4", "--std", "0.2")
    assert first.exit_code == 0, first.stderr
    second = _train(invoke, manifest, tmp_path / "b", "--epochs", "1", "--weights", str(tmp_path / "a" / "model.safetensors"))
    assert second.exit_code == 0, second.stderr
    from imgcls.models.io import read_model_info

    info = read_model_info(tmp_path / "b")
    assert info.mean == [0.4] * 3 and info.std == [0.2] * 3 and info.config["pretrained"] is True
    wrong = _train(invoke, manifest, tmp_path / "c", "--epochs", "1", "--width", "4",
                   "--weights", str(tmp_path / "a" / "model.safetensors"))
    assert wrong.exit_code == 1 and "do not fit cnn" in wrong.stderr and not (tmp_path / "c").exists()


def test_train_decodes_once_through_the_shared_cache(invoke, manifest, tmp_path):
    cache = tmp_path / "cache"
    first = _train(invoke, manifest, tmp_path / "r1", "--cache-dir", str(cache), "--epochs", "1")
    assert first.exit_code == 0, first.stderr
    entries = sorted((cache / "decoded").glob("*.npy"))
    assert len(entries) == 2  # the train and the val images
    stamps = [e.stat().st_mtime_ns for e in entries]
    second = _train(invoke, manifest, tmp_path / "r2", "--cache-dir", str(cache), "--epochs", "1")
    assert second.exit_code == 0, second.stderr
    assert [e.stat().st_mtime_ns for e in sorted((cache / "decoded").glob("*.npy"))] == stamps  # reused, not rewritten
    # same data from the cache: same seed gives the same weights
    assert all(torch.equal(a, b) for a, b in zip(_tensors(tmp_path / "r1" / "model.safetensors").values(),
                                                  _tensors(tmp_path / "r2" / "model.safetensors").values()))
    off = _train(invoke, manifest, tmp_path / "r3", "--cache-dir", str(tmp_path / "other"), "--no-cache", "--epochs", "1")
    assert off.exit_code == 0, off.stderr
    assert not (tmp_path / "other").exists()


def test_train_resume_with_more_epochs_restarts_a_finished_cosine(invoke, manifest, tmp_path):
    run = tmp_path / "run"
    first = _train(invoke, manifest, run, "--epochs", "2", "--patience", "0")
    assert first.exit_code == 0, first.stderr
    more = invoke(["train", "--resume", str(run), "--epochs", "4"])
    assert more.exit_code == 0, more.stderr
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[1]["lr"] < history[0]["lr"]
    # lr is the rate at the end of each epoch: the stretched cosine climbs back above 0
    # instead of staying at the finished run's 0, and reaches 0 again at the new last epoch
    assert history[1]["lr"] == 0 and history[2]["lr"] > 0 and history[3]["lr"] == 0


# -- torch.compile (opt-in) -----------------------------------------------------------------

def test_train_compile_failure_is_one_line_error(invoke, manifest, tmp_path, monkeypatch):
    def broken_compile(module, *args, **kwargs):
        def call(*a, **k):
            raise RuntimeError("no working C++ compiler\ndetails that nobody wants")
        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    result = _train(invoke, manifest, tmp_path / "run", "--epochs", "1", "--compile")
    assert result.exit_code == 1, result.stderr
    assert "--compile: torch.compile failed (RuntimeError: no working C++ compiler); run without --compile" in result.stderr
    assert "Traceback" not in result.stderr and "details" not in result.stderr
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_train_compile_is_a_runtime_setting_that_resume_may_change(invoke, manifest, tmp_path, monkeypatch):
    calls = []

    def counting_compile(module, *args, **kwargs):
        calls.append(type(module).__name__)
        return module

    monkeypatch.setattr(torch, "compile", counting_compile)
    assert _train(invoke, manifest, tmp_path / "run", "--epochs", "1").exit_code == 0
    assert calls == []
    result = invoke(["train", "--resume", str(tmp_path / "run"), "--epochs", "2", "--compile"])
    assert result.exit_code == 0, result.stderr
    assert calls == ["Classifier"]
    # the saved file holds the bare model's keys, not torch.compile's wrapper names
    assert not any(k.startswith("_orig_mod") for k in _tensors(tmp_path / "run"))


@pytest.mark.slow
def test_train_compile_trains_and_saves_an_ordinary_model(invoke, manifest, tmp_path):
    result = _train(invoke, manifest, tmp_path / "run", "--epochs", "2", "--compile", "--threads", "1")
    assert result.exit_code == 0, result.stderr
    plain = _train(invoke, manifest, tmp_path / "plain", "--epochs", "2", "--threads", "1")
    assert plain.exit_code == 0
    compiled, eager = _tensors(tmp_path / "run"), _tensors(tmp_path / "plain")
    assert compiled.keys() == eager.keys()
    # compiled dropout draws its own random numbers, so the weights are close, not identical
    for key in eager:
        assert compiled[key].shape == eager[key].shape and torch.isfinite(compiled[key].float()).all(), key
    history = read_jsonl((tmp_path / "run" / "history.jsonl").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    predicted = invoke(["eval", str(manifest), "--split", "val", "--model", str(tmp_path / "run"), "--json"])
    assert predicted.exit_code == 0, predicted.stderr


# -- frozen-feature cache, augmented views, deferred writes -----------------------------------

FROZEN = [*TINY, "--freeze", "--head", "linear", "--dropout", "0"]  # the SGD-trained head's epochs


def _cnn_weights(path: Path, seed: int, **metadata: str) -> Path:
    """A state dict for TINY's cnn (a 'pretrained' backbone the tests control)."""
    from imgcls.models import get_model

    torch.manual_seed(seed)
    model = get_model("cnn", num_classes=3, in_channels=3, width=8, depth=2)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=metadata or None)
    return path


def _entries(cache: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (cache / "features").glob("*.npy")}


def test_train_feature_cache_warm_run_skips_the_backbone_with_identical_weights(invoke, manifest, tmp_path, monkeypatch):
    from imgcls.training.loop import Trainer

    weights = _cnn_weights(tmp_path / "w.safetensors", 1)
    cache = tmp_path / "cache"
    args = [*FROZEN, "--weights", weights, "--cache-dir", cache, "--epochs", "2"]
    cold = invoke(["train", manifest, *args, "--out", tmp_path / "cold"])
    assert cold.exit_code == 0, cold.stderr
    assert "computed once" in cold.stderr and "cached for later runs" in cold.stderr
    first = _entries(cache)
    assert len(first) == 2  # the train and the val features
    calls = []
    real = Trainer.__init__

    def spy(self, model, *a, **k):  # the backbone must not run at all on a warm run
        model.backbone.register_forward_hook(lambda *_: calls.append(1))
        real(self, model, *a, **k)

    monkeypatch.setattr(Trainer, "__init__", spy)
    warm = invoke(["train", manifest, *args, "--out", tmp_path / "warm"])
    assert warm.exit_code == 0, warm.stderr
    assert "read from the feature cache" in warm.stderr and "not decoded" in warm.stderr and not calls
    assert _entries(cache) == first  # read, not rewritten
    off = invoke(["train", manifest, *FROZEN, "--weights", weights, "--epochs", "2", "--no-cache",
                  "--cache-dir", tmp_path / "other", "--out", tmp_path / "off"])
    assert off.exit_code == 0, off.stderr
    assert not (tmp_path / "other").exists() and "computed once" in off.stderr
    ta, tb, tc = (_tensors(tmp_path / name) for name in ("cold", "warm", "off"))
    assert all(torch.equal(ta[k], tb[k]) and torch.equal(ta[k], tc[k]) for k in ta)  # float32 entries: exact
    assert any(k.startswith("backbone.") for k in ta) and "head.1.weight" in ta  # one ordinary model file


def test_train_feature_cache_never_serves_stale_features(invoke, manifest, tmp_path):
    """A changed image (content or only its time stamp), other weights, size or mean: computed again."""
    weights = _cnn_weights(tmp_path / "w.safetensors", 1)
    cache = tmp_path / "cache"
    runs = iter(range(100))

    def run(*extra) -> tuple[str, set[str]]:
        before = set(_entries(cache)) if (cache / "features").exists() else set()
        result = invoke(["train", manifest, *FROZEN, "--cache-dir", cache, "--epochs", "1",
                         "--out", tmp_path / f"r{next(runs)}", *extra])
        assert result.exit_code == 0, result.stderr
        return result.stderr, set(_entries(cache)) - before

    base = ["--weights", weights]
    _, new = run(*base)
    assert len(new) == 2
    stderr, new = run(*base)
    assert not new and "read from the feature cache" in stderr
    # a training image rewritten with other pixels, its size and modification time restored
    image = tmp_path / "images" / "circle" / "circle_005.png"
    stat = image.stat()
    image.write_bytes((tmp_path / "images" / "circle" / "circle_006.png").read_bytes())
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    stderr, new = run(*base)
    assert len(new) == 1 and "the rest read from the feature cache" in stderr  # train changed, val did not
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched only
    assert len(run(*base)[1]) == 1
    # other weights in the same file name, then the same weights with other preprocessing
    _cnn_weights(weights, 2)
    assert len(run(*base)[1]) == 2
    assert len(run(*base, "--mean", "0.4")[1]) == 2  # image size, std, precision: the next test
    stderr, new = run(*base)  # back to the last weights at the default size and mean: still cached
    assert not new and "read from the feature cache" in stderr


def test_train_feature_cache_key_covers_every_setting(manifest, tmp_path):
    """Library level: each part of the key changes it (backbone tensors, preprocessing, precision, view)."""
    from dataclasses import replace

    from imgcls.models import get_model
    from imgcls.training import TrainConfig
    from imgcls.training.features import FeatureStore, backbone_digest, view_spec
    from imgcls.training.augment import preset

    torch.manual_seed(0)
    model = get_model("cnn", num_classes=3, in_channels=3, width=8, depth=2)
    cfg = TrainConfig(arch="cnn", arch_options={"width": 8, "depth": 2}, image_size=16, channels=3,
                      mean=[0.5] * 3, std=[0.5] * 3)
    _, records, reader = read_all(manifest)
    paths = [reader.resolve(r) for r in records]
    shas = [None] * len(paths)
    cpu = torch.device("cpu")

    def key(model=model, cfg=cfg, precision="fp32", view=None):
        return FeatureStore(model, cfg, cpu, precision, tmp_path, False).key(paths, shas, view)

    base = key()
    assert key() == base
    other = get_model("cnn", num_classes=3, in_channels=3, width=8, depth=2)
    other.load_state_dict(model.state_dict())
    assert key(other) == base and backbone_digest(other) == backbone_digest(model)
    other.backbone.state_dict()[next(k for k in other.backbone.state_dict() if k.endswith("running_mean"))] += 1e-3
    assert key(other) != base  # buffers count, not only parameters
    other.head[1].weight.data += 1  # the head is not part of the features
    assert backbone_digest(other) != backbone_digest(model)
    same_backbone = get_model("cnn", num_classes=3, in_channels=3, width=8, depth=2)
    same_backbone.load_state_dict(model.state_dict())
    same_backbone.head[1].weight.data += 1
    assert key(same_backbone) == base
    for changed in (replace(cfg, image_size=12), replace(cfg, mean=[0.4] * 3), replace(cfg, std=[0.25] * 3),
                    replace(cfg, channels=1)):
        assert key(cfg=changed) != base
    assert key(precision="bf16") != base and key(precision="fp16") != key(precision="bf16")
    light = preset("light")
    views = {key(view=view_spec("light", light, s, v)) for s in (0, 1) for v in (0, 1)}
    assert len(views) == 4 and base not in views
    assert key(view=view_spec("light", preset("light", flip=False), 0, 0)) not in views
    assert key(view=view_spec("standard", preset("standard"), 0, 0)) not in views


def test_train_feature_views_computed_once_cached_and_cycled(invoke, manifest, tmp_path):
    weights = _cnn_weights(tmp_path / "w.safetensors", 1)
    cache = tmp_path / "cache"
    args = [*FROZEN, "--weights", weights, "--cache-dir", cache, "--augment", "light", "--epochs", "3", "-v"]
    result = invoke(["train", manifest, *args, "--feature-views", "2", "--out", tmp_path / "a"])
    assert result.exit_code == 0, result.stderr
    assert "2 augmented views" in result.stderr and "computed once" in result.stderr
    used = [line.split("view ")[1] for line in result.stderr.splitlines() if "trains on augmented view" in line]
    assert used == ["1 of 2", "2 of 2", "1 of 2"]  # epoch e: view (e - 1) mod K
    assert len(_entries(cache)) == 3  # two training views and the plain validation images
    from imgcls.models.io import read_model_info

    assert read_model_info(tmp_path / "a").config["feature_views"] == 2
    more = invoke(["train", manifest, *args, "--feature-views", "3", "--out", tmp_path / "b"])
    assert more.exit_code == 0, more.stderr
    assert len(_entries(cache)) == 4 and "the rest read from the feature cache" in more.stderr  # views 1, 2 reused
    hint = invoke(["train", manifest, *FROZEN, "--augment", "light", "--epochs", "1", "--out", tmp_path / "c"])
    assert hint.exit_code == 0 and "--feature-views K would" in hint.stderr and len(_entries(cache)) == 4
    for wrong in (["--feature-views", "2"], ["--freeze", "--feature-views", "2", "--no-feature-cache"]):
        message = _one_line_error(invoke(["train", manifest, *TINY, *wrong, "--out", tmp_path / "d"]), 2)
        assert "--feature-views" in message and not (tmp_path / "d").exists()


def test_train_feature_views_are_fixed_per_image_seed_and_view():
    """A view depends on (seed, view, image) only: not on batch size, order, or the global RNG."""
    from imgcls.training.augment import preset
    from imgcls.training.data import Feeder, ImageSet
    from imgcls.training.features import ViewFeeder

    torch.manual_seed(0)
    images = torch.randint(0, 256, (10, 12, 12, 3), dtype=torch.uint8)
    data = ImageSet([Path(f"{i}.png") for i in range(10)], torch.arange(10) % 3, 12, 3, images=images)
    cpu = torch.device("cpu")

    def view(batch_size: int, seed: int, v: int, order=None, augment="strong") -> torch.Tensor:
        feeder = Feeder(data, batch_size, cpu, [0.5] * 3, [0.5] * 3, preset(augment))
        out = torch.empty(10, 3, 12, 12)
        order = torch.arange(10) if order is None else order
        done = 0
        for x, y in ViewFeeder(feeder, seed, v).batches(order):
            out[order[done:done + len(y)]] = x
            assert torch.equal(y, data.labels[order[done:done + len(y)]])
            done += len(y)
        return out

    rng = torch.get_rng_state()
    a = view(4, 0, 0)
    assert torch.equal(torch.get_rng_state(), rng)  # the training's random stream is untouched
    assert torch.equal(view(7, 0, 0, order=torch.randperm(10)), a)
    assert not torch.equal(view(4, 0, 1), a) and not torch.equal(view(4, 1, 0), a)
    plain = Feeder(data, 10, cpu, [0.5] * 3, [0.5] * 3)
    assert not torch.equal(next(plain.batches())[0], a)
    assert torch.equal(view(3, 0, 0, augment="light"), view(10, 0, 0, augment="light"))


def test_train_frozen_resume_matches_uninterrupted_run_with_views(manifest, tmp_path, invoke):
    """The features of a resumed frozen run come from the checkpoint's backbone, and epoch e keeps its view."""
    weights = str(_cnn_weights(tmp_path / "w.safetensors", 1))
    cfg = dict(trainable_blocks=0, head="linear", weights=weights, augment="light", feature_views=2, dropout=0.0)
    full = _library_train(manifest, tmp_path / "full", epochs=3, **cfg)

    def interrupt(trainer, record):
        if record["epoch"] == 1:
            raise KeyboardInterrupt

    cut = _library_train(manifest, tmp_path / "cut", epochs=3, callbacks=[interrupt], **cfg)
    assert cut.interrupted
    result = invoke(["train", "--resume", tmp_path / "cut", "-o", tmp_path / "out.jsonl"])
    assert result.exit_code == 0, result.stderr
    ta, tb = _tensors(full.model_path), _tensors(tmp_path / "cut")
    assert all(torch.equal(ta[k], tb[k]) for k in ta)


# -- DataLoader settings from the machine ------------------------------------------------------

def test_train_loader_settings_chosen_from_cpus_and_device():
    from imgcls.training.data import choose_loader_settings as choose

    cpu = choose("auto", 2, "cpu")
    assert (cpu.workers, cpu.pin_memory, cpu.persistent_workers, cpu.prefetch_factor) == (1, False, True, 2)
    assert choose(None, 1, "cpu").workers == 0 and choose("auto", 1, "cpu").prefetch_factor is None
    assert [choose("auto", n, "cpu").workers for n in (3, 4, 8, 64)] == [1, 2, 4, 4]  # half the cores, at most 4
    gpu = choose("auto", 16, "cuda")
    assert (gpu.workers, gpu.pin_memory, gpu.persistent_workers) == (8, True, True)
    assert [choose("auto", n, "cuda").workers for n in (1, 2, 4, 64)] == [0, 1, 3, 8]  # one core for the trainer
    assert choose("auto", 16, "mps").workers == 8 and not choose("auto", 16, "mps").pin_memory
    assert choose("auto", 16, "cuda", processes=4).workers == 3  # four torchrun ranks share the 16 CPUs
    assert choose("auto", 16, "cuda", batches=2).workers == 2  # never more workers than batches
    assert not choose("auto", 16, "cuda", passes=1).persistent_workers  # one pass: nothing to keep alive
    explicit = choose(3, 1, "cpu")  # an explicit number is kept, whatever the machine
    assert explicit.workers == 3 and explicit.chosen == "as requested"
    none = choose(0, 64, "cuda")
    assert (none.workers, none.persistent_workers, none.prefetch_factor, none.pin_memory) == (0, False, None, True)
    with pytest.raises(ValueError):
        choose(-1, 4, "cpu")


def test_train_lazy_path_with_auto_workers_trains_as_preloaded(invoke, manifest, tmp_path, monkeypatch):
    """Data too large to preload: DataLoader workers chosen from the machine, the same weights."""
    import imgcls.training.data as data

    preloaded = _train(invoke, manifest, tmp_path / "pre", "--epochs", "2", "-v")
    assert preloaded.exit_code == 0, preloaded.stderr
    assert "DataLoader" not in preloaded.stderr  # in memory: no workers started
    monkeypatch.setattr(data, "PRELOAD_LIMIT_BYTES", 0)
    monkeypatch.setattr(data, "available_cpus", lambda: 4)  # auto -> 2 workers on the CPU, whatever runs the test
    lazy = _train(invoke, manifest, tmp_path / "lazy", "--epochs", "2", "-v")
    assert lazy.exit_code == 0, lazy.stderr
    assert "decoded per batch, not preloaded" in lazy.stderr
    assert ("DataLoader for 21 images: 2 worker processes (auto: 4 CPUs, cpu device), kept between epochs, "
            "2 batches prefetched per worker, pinned memory off") in lazy.stderr
    explicit = _train(invoke, manifest, tmp_path / "zero", "--epochs", "2", "--workers", "0", "-v")
    assert explicit.exit_code == 0, explicit.stderr
    assert "batches made in the main process (as requested)" in explicit.stderr
    for run in ("lazy", "zero"):
        got, want = _tensors(tmp_path / run), _tensors(tmp_path / "pre")
        assert all(torch.equal(got[k], want[k]) for k in want), run
    bad = invoke(["train", str(manifest), "--workers", "many"])
    assert bad.exit_code == 2 and "'many' is not a number of workers" in bad.stderr


def test_train_policy_augment_same_weights_with_any_worker_count(manifest, tmp_path):
    """--augment strong runs its per-image policy in workers: their number must not change the result."""
    runs = {w: _library_train(manifest, tmp_path / f"w{w}", epochs=2, augment="strong", workers=w)
            for w in (0, 2)}
    a, b = _tensors(runs[0].model_path), _tensors(runs[2].model_path)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_train_save_interval_writes_after_first_epoch_then_when_due(invoke, manifest, tmp_path, monkeypatch):
    import imgcls.models.io
    import imgcls.training.checkpoint

    writes = []
    real_ckpt, real_model = imgcls.training.checkpoint.write_checkpoint, imgcls.models.io.save_model
    monkeypatch.setattr(imgcls.training.checkpoint, "write_checkpoint",
                        lambda path, payload: (writes.append(("ckpt", json.loads(payload[1]["state"])["epoch"])),
                                               real_ckpt(path, payload))[1])
    monkeypatch.setattr(imgcls.models.io, "save_model",
                        lambda path, model, info: (writes.append(("model", info.extra.get("best_epoch"))),
                                                   real_model(path, model, info))[1])
    result = _train(invoke, manifest, tmp_path / "a", "--epochs", "4", "--patience", "0")
    assert result.exit_code == 0, result.stderr
    from imgcls.models.io import read_model_info

    final_best = read_model_info(tmp_path / "a").extra["best_epoch"]
    # the default 60 s: epoch 1 at once, the rest at the end (the final best model, the last checkpoint)
    assert writes == [("model", 1), ("ckpt", 1), ("model", final_best), ("ckpt", 4)]
    writes.clear()
    result = _train(invoke, manifest, tmp_path / "b", "--epochs", "4", "--patience", "0", "--save-interval", "0")
    assert result.exit_code == 0, result.stderr
    assert [w for w in writes if w[0] == "ckpt"] == [("ckpt", e) for e in (1, 2, 3, 4)]
    history = read_jsonl((tmp_path / "b" / "history.jsonl").read_text())
    assert [w for w in writes if w[0] == "model"][:-1] == [("model", h["epoch"]) for h in history if h["best"]]


def test_train_interrupt_writes_the_pending_model_and_last_finished_epoch(invoke, manifest, tmp_path, monkeypatch):
    """Ctrl-C in epoch 3 (weights already moved): the checkpoint is epoch 2's, and resuming matches."""
    from imgcls.training.loop import Trainer

    full = _train(invoke, manifest, tmp_path / "full", "--epochs", "3", "--augment", "light")
    assert full.exit_code == 0, full.stderr
    real = Trainer.train_epoch
    calls = []

    def train_epoch(self, advance):
        calls.append(1)
        out = real(self, advance)
        if len(calls) == 3:
            raise KeyboardInterrupt  # after a whole epoch of steps: the model is no longer epoch 2's
        return out

    monkeypatch.setattr(Trainer, "train_epoch", train_epoch)
    cut = _train(invoke, manifest, tmp_path / "cut", "--epochs", "3", "--augment", "light")
    assert cut.exit_code == 130 and "interrupted after epoch 2" in cut.stderr
    from imgcls.training.checkpoint import load_checkpoint

    assert load_checkpoint(tmp_path / "cut").meta["epoch"] == 2
    history = read_jsonl((tmp_path / "cut" / "history.jsonl").read_text())
    best = max(h["epoch"] for h in history if h["best"])
    from imgcls.models.io import read_model_info

    assert read_model_info(tmp_path / "cut").extra["best_epoch"] == best
    monkeypatch.setattr(Trainer, "train_epoch", real)
    resumed = invoke(["train", "--resume", tmp_path / "cut", "-o", tmp_path / "o.jsonl"])
    assert resumed.exit_code == 0, resumed.stderr
    ta, tb = _tensors(tmp_path / "full"), _tensors(tmp_path / "cut")
    assert all(torch.equal(ta[k], tb[k]) for k in ta)


def test_train_sigterm_stops_like_ctrl_c_with_exit_143(invoke, manifest, tmp_path, monkeypatch):
    import signal

    from imgcls.training.loop import Trainer

    if signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        pytest.skip("SIGTERM already has a handler in this process")
    real = Trainer.train_epoch
    calls = []

    def train_epoch(self, advance):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, advance)

    monkeypatch.setattr(Trainer, "train_epoch", train_epoch)
    result = _train(invoke, manifest, tmp_path / "run", "--epochs", "5")
    assert result.exit_code == 143, result.stderr
    assert "stopped by signal 15" in result.stderr and "--resume" in result.stderr
    from imgcls.training.checkpoint import load_checkpoint

    assert load_checkpoint(tmp_path / "run").meta["epoch"] == 1
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler lives only while training


def test_train_frozen_decoding_beside_the_backbone_matches_decoding_first(invoke, manifest, tmp_path, monkeypatch):
    """The streamed path (worker processes decode while the backbone runs) gives the same model and cache entries."""
    from imgcls.training import features

    monkeypatch.setattr(features, "STREAM_MIN_IMAGES", 0)
    monkeypatch.setattr(features, "overlap_workers", lambda device: 1)
    weights = _cnn_weights(tmp_path / "w.safetensors", 1)
    cache = tmp_path / "cache"
    args = [*FROZEN, "--weights", weights, "--cache-dir", cache, "--epochs", "2", "-v"]
    streamed = invoke(["train", manifest, *args, "--out", tmp_path / "a"])
    assert streamed.exit_code == 0, streamed.stderr
    assert "while the backbone runs" in streamed.stderr and "decoded alongside" in streamed.stderr
    assert len(list((cache / "decoded").glob("*.npy"))) == 2  # the decoded images were cached on the way
    for entry in (cache / "features").glob("*"):
        entry.unlink()
    first = invoke(["train", manifest, *args, "--out", tmp_path / "b"])  # decoded-image cache hit: decoded first
    assert first.exit_code == 0, first.stderr
    assert "while the backbone runs" not in first.stderr and "decoded cache hit" in first.stderr
    ta, tb = _tensors(tmp_path / "a"), _tensors(tmp_path / "b")
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    # an image unreadable since prepare: one line, no run folder, no cache entry for its set
    (tmp_path / "images" / "square" / "square_007.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    before = set((cache / "decoded").glob("*.npy"))
    bad = invoke(["train", manifest, *args, "--out", tmp_path / "c"])
    assert bad.exit_code == 1 and "square_007.png" in bad.stderr.strip().splitlines()[-1]
    assert "Traceback" not in bad.stderr and not (tmp_path / "c").exists()
    assert set((cache / "decoded").glob("*.npy")) == before and not list((cache / "decoded").glob(".*.tmp"))


# -- heads on frozen features: logreg and ncm -------------------------------------------------------

def _blobs(n_per_class: int, classes: int = 3, dim: int = 16, seed: int = 0, spread: float = 1.0):
    """Non-negative feature vectors around one centre per class (what a ReLU backbone gives); ``seed``
    draws the points, the centres are always the same."""
    import numpy as np

    centres = np.random.default_rng(1234).uniform(0, 3, (classes, dim))
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), n_per_class)
    x = np.abs(centres[y] + rng.normal(0, spread, (len(y), dim))).astype(np.float32)
    return x, y


def _softmax_head(fit, x):
    import numpy as np

    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    z = u @ fit.weight.T + fit.bias
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def test_train_logreg_head_is_scikit_learn_logistic_regression_folded_into_a_linear_layer(monkeypatch):
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from imgcls.models import heads
    from imgcls.models.heads import fit_logreg

    monkeypatch.setattr(heads, "FINAL_TOL", 1e-9)  # converged, so it can be compared with a converged reference
    monkeypatch.setattr(heads, "FINAL_MAX_ITER", 5000)
    x, y = _blobs(20)
    fit = fit_logreg(x, y, 3)
    assert fit.info["selection"] == "5-fold CV" and fit.info["C"] in fit.info["C_tried"]
    z = x / np.linalg.norm(x, axis=1, keepdims=True) * np.sqrt(x.shape[1])
    mean = z.mean(0)
    reference = LogisticRegression(C=fit.info["C"], max_iter=5000, tol=1e-9).fit(z - mean, y)
    xt, _ = _blobs(10, seed=1)
    zt = xt / np.linalg.norm(xt, axis=1, keepdims=True) * np.sqrt(x.shape[1]) - mean
    np.testing.assert_allclose(_softmax_head(fit, xt), reference.predict_proba(zt), atol=1e-3)  # float32 L-BFGS
    # two classes (scikit-learn's single binary row) and a class without training images
    x2, y2 = _blobs(8, classes=2)
    fit2 = fit_logreg(x2, y2, 3)
    p = _softmax_head(fit2, x2)
    assert p.shape == (8 * 2, 3) and p[:, 2].max() < 1e-6 and (p.argmax(1) == y2).mean() > 0.9


def test_train_logreg_head_chooses_c_by_val_split_or_hold_out_when_folds_cannot(monkeypatch):
    from imgcls.models import heads

    x, y = _blobs(1)  # one image per class: no fold could hold one out
    xv, yv = _blobs(5, seed=2)
    assert heads.fit_logreg(x, y, 3, val=(xv, yv)).info["selection"] == "val split"
    with pytest.raises(ValueError, match="val split"):
        heads.fit_logreg(x, y, 3)
    monkeypatch.setattr(heads, "CV_MAX_IMAGES", 40)
    xb, yb = _blobs(20)
    assert heads.fit_logreg(xb, yb, 3).info["selection"] == "20% hold-out"
    # augmented views of an image stay in one fold: groups, not rows, are split
    y4 = np.concatenate([yb, yb])  # the labels of two views per image (only the split is under test)
    groups = np.tile(np.arange(len(yb)), 2)
    splits, how = heads._splits(y4, groups, 0)
    assert how == "20% hold-out"
    for train, held in splits:
        assert not set(groups[train]) & set(groups[held])


def test_train_ncm_head_is_the_nearest_class_mean():
    import numpy as np

    from imgcls.models.heads import fit_ncm

    x, y = _blobs(10, spread=2.0)
    xv, yv = _blobs(5, seed=3, spread=0.3)
    fit = fit_ncm(x, y, 3, val=(xv, yv))
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    means = np.stack([u[y == c].mean(0) for c in range(3)])
    xt, _ = _blobs(30, seed=4, spread=2.0)
    ut = xt / np.linalg.norm(xt, axis=1, keepdims=True)
    nearest = ((ut[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    assert (_softmax_head(fit, xt).argmax(1) == nearest).all()
    assert fit.info["temperature"] > 1  # cosine scores in [-1, 1] need sharpening to be probabilities


def test_train_frozen_heads_fit_in_one_step_and_write_an_ordinary_model(invoke, manifest, tmp_path):
    from imgcls.models.io import load_model, read_model_info

    weights = _cnn_weights(tmp_path / "w.safetensors", 1)
    args = [*TINY, "--freeze", "--weights", weights]
    for head in ("default", "logreg", "ncm"):
        out = tmp_path / head
        result = invoke(["train", manifest, *args, *([] if head == "default" else ["--head", head]),
                         "--out", out])
        assert result.exit_code == 0, result.stderr
        made = "logreg" if head == "default" else head
        assert f"{made} head fitted on 21 feature vectors" in result.stderr
        history = read_jsonl((out / "history.jsonl").read_text())
        assert len(history) == 1 and history[0]["epoch"] == 1 and history[0]["head"] == made and history[0]["best"]
        assert not (out / "checkpoint.safetensors").exists()
        info = read_model_info(out)
        assert (info.head, info.head_norm, info.extra["best_epoch"]) == (made, "l2", 1)
        model, _ = load_model(out)
        assert type(model.head[0]).__name__ == "L2Normalize"
        backbone = {k: v for k, v in _tensors(out).items() if k.startswith("backbone.")}
        assert backbone and all(torch.equal(v, _tensors(weights)[k]) for k, v in backbone.items())  # frozen
        evaluated = invoke(["eval", manifest, "--split", "val", "--model", out, "--json"])
        assert evaluated.exit_code == 0, evaluated.stderr
        metrics = json.loads(evaluated.stdout)["models"][0]["metrics"]
        assert metrics["accuracy"] == pytest.approx(history[0]["val_acc"], abs=1e-6)
    report = invoke(["eval", manifest, "--split", "val", "--model", tmp_path / "ncm", "--report", tmp_path / "rep"])
    assert report.exit_code == 0 and (tmp_path / "rep" / "learning_curves.png").exists()
    resumed = _one_line_error(invoke(["train", "--resume", tmp_path / "ncm"]), 2)
    assert "nothing to resume" in resumed


def test_train_head_needs_freeze_and_features_computed_once(invoke, manifest, tmp_path):
    weights = _cnn_weights(tmp_path / "w.safetensors", 1)
    message = _one_line_error(invoke(["train", manifest, *TINY, "--head", "logreg", "--out", tmp_path / "a"]), 2)
    assert "--head logreg" in message and "--freeze" in message and not (tmp_path / "a").exists()
    frozen = [*TINY, "--freeze", "--weights", weights, "--head", "ncm", "--augment", "light"]
    message = _one_line_error(invoke(["train", manifest, *frozen, "--out", tmp_path / "b"]), 2)
    assert "--feature-views" in message and not (tmp_path / "b").exists()
    views = invoke(["train", manifest, *frozen, "--feature-views", "2", "--out", tmp_path / "c"])
    assert views.exit_code == 0, views.stderr
    assert "ncm head fitted on 42 feature vectors" in views.stderr  # 21 images x 2 augmented views


# -- timm backbones (the optional extra) --------------------------------------------------------

@pytest.mark.parametrize("name", ["resnet18", pytest.param("vit_tiny_patch16_224", marks=pytest.mark.slow)])
def test_train_timm_backbone_with_a_weights_file(invoke, manifest, tmp_path, name):
    """--arch timm/NAME --weights FILE (offline): frozen logreg head, then eval, predict and finetune."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(2)
    state = {k: v.contiguous() for k, v in timm.create_model(name, pretrained=False).state_dict().items()}
    weights = tmp_path / "timm.safetensors"
    save_file(state, str(weights))
    out = tmp_path / "run"
    result = invoke(["train", manifest, "--arch", f"timm/{name}", "--weights", weights, "--image-size", "32",
                     "--freeze", "--out", out])
    assert result.exit_code == 0, result.stderr
    from imgcls.models.io import load_model, read_model_info

    info = read_model_info(out)
    cfg = timm.get_pretrained_cfg(name)
    assert info.arch == f"timm/{name}" and info.image_size == 32 and info.head == "logreg"
    assert info.mean == pytest.approx(list(cfg.mean)) and info.std == pytest.approx(list(cfg.std))  # timm's cfg
    model, _ = load_model(out)
    backbone = model.backbone.state_dict()
    kept = [k for k in backbone if k in state and backbone[k].shape == state[k].shape]
    assert kept and all(torch.equal(backbone[k], state[k]) for k in kept)
    evaluated = invoke(["eval", manifest, "--split", "val", "--model", out, "--json"])
    assert evaluated.exit_code == 0, evaluated.stderr
    tuned = invoke(["finetune", manifest, "--model", out, "--unfreeze", "1", "--epochs", "1", "--out", tmp_path / "ft"])
    assert tuned.exit_code == 0, tuned.stderr
    assert read_model_info(tmp_path / "ft").trainable_blocks == 1


def test_train_closed_form_fit_stopped_by_sigterm_leaves_nothing(invoke, manifest, tmp_path, monkeypatch):
    import signal

    from imgcls.models import heads

    def stopped(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # what a scheduler or timeout(1) sends
        raise AssertionError("SIGTERM did not stop the fit")

    monkeypatch.setitem(heads.FITTERS, "logreg", stopped)
    weights = _cnn_weights(tmp_path / "w.safetensors", 1)
    out = tmp_path / "run"
    result = invoke(["train", manifest, *TINY, "--freeze", "--weights", weights, "--out", out])
    assert result.exit_code == 143 and result.stdout == ""
    assert "stopped by signal 15" in result.stderr and "no model written" in result.stderr
    assert not out.exists()


# -- recipes: precise BN, mixup/CutMix, EMA, the fine-tuning warm-up, the LR finder (issue 15) --------------

def _eval_and_train_mode_accuracy(run: Path, manifest: Path, batch_size: int = 8) -> tuple[float, float]:
    """Accuracy on the training images in eval mode, and in train mode (batch statistics of shuffled
    training-sized batches, dropout off: how the weights were trained), averaged over 5 shuffles."""
    from imgcls.models.io import load_model
    from imgcls.models.preprocess import normalize
    from imgcls.training.data import preload_images

    model, info = load_model(run)
    header, records, reader = read_all(manifest)
    train_records = [r for r in records if r["split"] == "train"]
    x = normalize(preload_images([Path(r["path"]) for r in train_records], info.image_size, info.channels),
                  info.mean, info.std)
    y = torch.tensor([info.classes.index(r["label"]) for r in train_records])
    with torch.no_grad():
        eval_acc = float((model(x).argmax(1) == y).float().mean())
        model.train()
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.eval()
        generator, correct = torch.Generator().manual_seed(0), 0
        for _ in range(5):
            for idx in torch.randperm(len(y), generator=generator).split(batch_size):
                correct += int((model(x[idx]).argmax(1) == y[idx]).sum())
    return eval_acc, correct / (5 * len(y))


def test_train_precise_bn_eval_mode_tracks_train_mode_on_a_short_run(invoke, tmp_path):
    """Issue 15: after 2 epochs the running statistics lag the weights; precise BN (the default) fixes that."""
    manifest = make_manifest(tmp_path, per_class=16, val=4)
    gaps = {}
    for name, extra in (("lagging", ["--precise-bn", "0"]), ("precise", [])):
        result = _train(invoke, manifest, tmp_path / name, "--epochs", "2", "--patience", "0", *extra)
        assert result.exit_code == 0, result.stderr
        eval_acc, train_acc = _eval_and_train_mode_accuracy(tmp_path / name, manifest)
        gaps[name] = train_acc - eval_acc
        assert train_acc > 0.9  # the weights did learn the training images
    assert gaps["lagging"] > 0.3  # the failure this guards against (0.33 in eval mode vs 0.96)
    assert abs(gaps["precise"]) <= 0.05
    from imgcls.models.io import read_model_info

    assert read_model_info(tmp_path / "precise").config["precise_bn"] == 2048


def test_train_precise_bn_recalibrates_only_batchnorm_that_trains():
    from imgcls.models import get_model
    from imgcls.training.bn import recalibrate, training_batchnorms

    torch.manual_seed(0)
    model = get_model("cnn", num_classes=3, in_channels=3, dropout=0.5, width=4, depth=2)
    model.set_trainable_blocks(1)  # block 0 frozen (eval mode), block 1 and the head train
    model.train()
    names = training_batchnorms(model)
    assert names == ["backbone.1.1", "backbone.1.4"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    bn = dict(model.named_modules())["backbone.1.1"]
    hook = bn.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0].detach().clone()))
    batches = [torch.randn(8, 3, 8, 8) * 3 + 1 for _ in range(3)] + [torch.randn(1, 3, 8, 8)]
    assert recalibrate(model, names, batches, lambda m, x: m(x)) == 3  # the batch of one is skipped
    hook.remove()
    after = model.state_dict()
    # the cumulative average of the batch statistics, computed by hand
    assert torch.allclose(after["backbone.1.1.running_mean"], torch.stack([s.mean((0, 2, 3)) for s in seen]).mean(0),
                          atol=1e-5)
    assert torch.allclose(after["backbone.1.1.running_var"],
                          torch.stack([s.transpose(0, 1).flatten(1).var(1) for s in seen]).mean(0), atol=1e-4)
    frozen = [k for k in before if k.startswith("backbone.0.")]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert all(torch.equal(before[k], after[k]) for k in before if "num_batches_tracked" in k or "weight" in k)
    assert model.training and not model.backbone[0].training and bn.momentum == 0.1  # modes and momentum restored


def test_train_mixup_cutmix_ema_through_the_cli(invoke, manifest, tmp_path):
    out = tmp_path / "run"
    result = _train(invoke, manifest, out, "--epochs", "2", "--mixup", "0.4", "--cutmix", "1.0", "--ema", "0.9",
                    "--label-smoothing", "0.1")
    assert result.exit_code == 0, result.stderr
    history = read_jsonl((out / "history.jsonl").read_text())
    assert all({"ema_val_loss", "ema_val_acc"} <= set(h) and h["weights"] in ("ema", "live") for h in history)
    from imgcls.models.io import read_model_info

    info = read_model_info(out)
    assert (info.config["mixup"], info.config["cutmix"], info.config["ema"]) == (0.4, 1.0, 0.9)
    best = [h for h in history if h["epoch"] == info.extra["best_epoch"]][0]
    assert info.extra.get("weights", "live") == best["weights"]
    ckpt = load_file(str(out / "checkpoint.safetensors"))
    assert "ema.n_averaged" in ckpt and int(ckpt["ema.n_averaged"]) == 2 * 3  # 21 images in batches of 8: 3 steps
    assert set(k[len("ema.module."):] for k in ckpt if k.startswith("ema.module.")) == set(_tensors(out))
    bad = _train(invoke, manifest, tmp_path / "bad", "--ema", "1.0")
    assert bad.exit_code == 2 and "--ema" in bad.stderr
    # a frozen backbone cannot serve cached features of blended images: it runs on every batch
    frozen = _train(invoke, manifest, tmp_path / "frozen", "--epochs", "1", "--freeze", "--head", "linear",
                    "--mixup", "0.2")
    assert frozen.exit_code == 0, frozen.stderr
    assert "runs on every (blended) batch" in frozen.stderr and "computed once" not in frozen.stderr
    # a head fitted in one step (the default with --freeze) never sees blended images: a usage error
    closed = _train(invoke, manifest, tmp_path / "closed", "--epochs", "1", "--freeze", "--mixup", "0.2")
    assert closed.exit_code == 2 and "--head linear" in closed.stderr and not (tmp_path / "closed").exists()


def test_train_saves_the_ema_weights_when_they_validate_better(manifest, tmp_path, monkeypatch):
    from imgcls.training.loop import Trainer

    real = Trainer.evaluate

    def evaluate(self, feed, module=None):  # the average always validates better here
        loss, acc = real(self, feed, module)
        return (loss - 10.0 if module is not None else loss), acc

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    result = _library_train(manifest, tmp_path / "r", epochs=2, ema=0.5, patience=0)
    history = result.fit.history
    assert [h["weights"] for h in history] == ["ema", "ema"]
    from imgcls.models.io import read_model_info

    assert read_model_info(result.model_path).extra["weights"] == "ema"
    saved, ckpt = _tensors(result.model_path), load_file(str(tmp_path / "r" / "checkpoint.safetensors"))
    assert all(torch.equal(saved[k], ckpt[f"ema.module.{k}"]) for k in saved)  # the average, not the live weights
    assert not all(torch.equal(saved[k], ckpt[f"model.{k}"]) for k in saved)


def test_train_resume_carries_the_ema_and_mixup_draws(manifest, tmp_path, invoke):
    options = dict(epochs=3, ema=0.9, mixup=0.4, cutmix=1.0, patience=0)
    full = _library_train(manifest, tmp_path / "full", **options)

    def interrupt(trainer, record):
        if record["epoch"] == 1:
            raise KeyboardInterrupt

    cut = _library_train(manifest, tmp_path / "cut", callbacks=[interrupt], **options)
    assert cut.interrupted
    result = invoke(["train", "--resume", str(tmp_path / "cut"), "-o", str(tmp_path / "out.jsonl")])
    assert result.exit_code == 0, result.stderr
    a, b = load_file(str(tmp_path / "full" / "checkpoint.safetensors")), load_file(str(tmp_path / "cut" / "checkpoint.safetensors"))
    ema = [k for k in a if k.startswith("ema.")]
    assert ema and all(torch.equal(a[k], b[k]) for k in ema)  # the average went on as if never stopped
    assert all(torch.equal(v, _tensors(tmp_path / "cut")[k]) for k, v in _tensors(full.model_path).items())


def test_train_from_pretrained_weights_warms_the_head_up_then_unfreezes(invoke, manifest, tmp_path):
    """train --weights without --freeze: --freeze-epochs head-only epochs, then everything with onecycle."""
    parent = _train(invoke, manifest, tmp_path / "a", "--epochs", "1")
    assert parent.exit_code == 0, parent.stderr
    weights = tmp_path / "a" / "model.safetensors"
    out = tmp_path / "b"
    result = _train(invoke, manifest, out, "--epochs", "2", "--freeze-epochs", "2", "--patience", "0",
                    "--weights", str(weights))
    assert result.exit_code == 0, result.stderr
    history = read_jsonl((out / "history.jsonl").read_text())
    assert [(h["epoch"], h["phase"]) for h in history] == [(1, "warmup"), (2, "warmup"), (3, "train"), (4, "train")]
    assert "fine-tuning recipe" in result.stderr and "starting point" in result.stderr
    from imgcls.models.io import read_model_info

    info = read_model_info(out)
    assert info.config["schedule"] == "onecycle" and info.config["freeze_epochs"] == 2
    assert (info.config["mixup"], info.config["label_smoothing"]) == (0.2, 0.1)  # the fine-tuning recipe
    assert info.trainable_blocks is None and info.config["backbone_lr"] == pytest.approx(1e-4)
    before, after = _tensors(weights), _tensors(out)
    stats = [k for k in before if k.startswith("backbone.") and ("running_" in k)]
    # pretrained BatchNorm stays in inference mode (--freeze-bn default): neither training nor precise BN touch it
    assert stats and all(torch.equal(before[k], after[k]) for k in stats)
    if info.extra["best_epoch"] > 2:  # an unfrozen epoch won: the backbone moved
        assert not torch.equal(before["backbone.0.0.weight"], after["backbone.0.0.weight"])
    # --freeze-epochs 0: today's single phase
    single = _train(invoke, manifest, tmp_path / "c", "--epochs", "1", "--freeze-epochs", "0", "--weights", str(weights))
    assert single.exit_code == 0, single.stderr
    assert [h["phase"] for h in read_jsonl((tmp_path / "c" / "history.jsonl").read_text())] == ["train"]


def test_train_resume_in_the_warm_up_goes_on_to_unfreeze(manifest, tmp_path, invoke):
    first = _library_train(manifest, tmp_path / "a", epochs=1)
    options = dict(epochs=2, freeze_epochs=2, patience=0, weights=str(first.model_path), schedule="onecycle",
                   backbone_lr=2e-4)
    full = _library_train(manifest, tmp_path / "full", **options)

    def interrupt(trainer, record):
        if record["epoch"] == 1:
            raise KeyboardInterrupt

    cut = _library_train(manifest, tmp_path / "cut", callbacks=[interrupt], **options)
    assert cut.interrupted and [h["phase"] for h in cut.fit.history] == ["warmup"]
    result = invoke(["train", "--resume", str(tmp_path / "cut"), "--epochs", "3", "-o", str(tmp_path / "o.jsonl")])
    assert result.exit_code == 0, result.stderr
    history = read_jsonl((tmp_path / "cut" / "history.jsonl").read_text())
    assert [h["phase"] for h in history] == ["warmup", "warmup", "train", "train", "train"]  # --epochs: the run's
    assert history[1] == {**full.fit.history[1], "seconds": history[1]["seconds"]}


def test_train_find_lr_suggests_a_rate_and_writes_nothing(invoke, manifest, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    data = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    stamps = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in data}
    plot = tmp_path / "lr.png"
    result = invoke(["train", str(manifest), *TINY, "--find-lr", "--find-lr-plot", str(plot)])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    lrs, losses = doc["lrs"], doc["losses"]
    assert 2 <= len(lrs) == len(losses) <= 100 and lrs == sorted(lrs) and lrs[0] == pytest.approx(1e-7)
    assert lrs[0] <= doc["suggested_lr"] <= lrs[-1] and doc["method"] == "valley"
    assert set(doc["suggestions"]) == {"valley", "minimum", "steep"}
    assert "suggested --lr" in result.stderr and plot.read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "runs").exists()  # no run folder
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in data} == stamps  # the data untouched
    assert invoke(["train", str(manifest), *TINY, "--find-lr-plot", str(plot)]).exit_code == 2


def test_train_find_lr_with_a_head_fitted_in_one_step_is_a_usage_error(invoke, manifest, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke(["train", str(manifest), *TINY, "--freeze", "--head", "logreg", "--find-lr"])
    assert result.exit_code == 2, result.stderr
    assert "--find-lr" in result.stderr and "logreg head is fitted in one step" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "runs").exists()


def test_train_find_lr_valley_is_inside_the_descent():
    from imgcls.training.lr_find import minimum, steep, valley

    lrs = [10 ** (-7 + 8 * i / 49) for i in range(50)]
    losses = [2.0] * 10 + [2.0 - 0.1 * i for i in range(1, 16)] + [0.7 + 0.2 * i for i in range(25)]
    lr = valley(lrs, losses)
    assert lrs[10] < lr < lrs[24]  # on the way down, before the minimum
    assert minimum(lrs, losses) == pytest.approx(lrs[24] / 10)  # the minimum, divided by 10
    assert lrs[10] <= steep(lrs, losses) <= lrs[24]


def test_train_option_defaults_are_the_configs():
    """Every train option that is a TrainConfig field defaults to the field's default (one source)."""
    from dataclasses import fields

    from imgcls.commands.train import command
    from imgcls.training import TrainConfig
    from imgcls.training.config import FINETUNE_RECIPE

    config = TrainConfig()
    # None: resolved per run (the learning-rate rule, the fine-tuning recipe, the data, the architecture)
    resolved = {"lr", "backbone_lr", "image_size", "channels", "mean", "std", "pretrained", "weights", "head",
                "weights_name", "freeze_bn", *FINETUNE_RECIPE}
    options = {p.name: p for p in command.params}
    checked = []
    for f in fields(TrainConfig):
        if f.name not in options:
            continue
        default = options[f.name].default
        if f.name in resolved:
            assert default is None, f.name
        else:
            assert default == getattr(config, f.name), f.name
            checked.append(f.name)
    assert {"epochs", "batch_size", "weight_decay", "momentum", "augment", "seed", "dropout", "workers",
            "save_interval", "freeze_epochs"} <= set(checked)
    assert options["weight_decay"].default == 0.01  # the default documented (docs/benchmarks.md) and used


def test_train_help_states_the_rules_it_applies(invoke):
    """--augment's help gives each preset's magnitudes, --lr's the learning-rate rule, from the library's values."""
    from imgcls.training.config import AUGMENT_PRESETS, PRETRAINED_LR, TrainConfig

    result = invoke(["train", "--help"])
    text = " ".join(result.stdout.split())
    augment = text[text.index("--augment [none"):text.index("--flip / --no-flip")]
    assert "shift 8%" in augment and "rotation 15 deg" in augment and "zoom 10%" in augment
    assert "standard + TrivialAugmentWide" in augment
    for name, geometry in AUGMENT_PRESETS.items():
        for key, value in geometry.items():
            if key in ("shift", "zoom"):
                assert f"{value * 100:g}%" in augment, (name, key)
            elif key == "rotation":
                assert f"{value:g} deg" in augment, (name, key)
    assert (f"Default: {TrainConfig.lr:.0e} from scratch, {PRETRAINED_LR:.0e} for a pretrained".replace("e-0", "e-")
            in text)


def test_train_learning_rate_rule():
    from imgcls.training.config import BACKBONE_LR_RATIO, PRETRAINED_LR, TrainConfig, learning_rates

    assert learning_rates(None, None, BACKBONE_LR_RATIO, from_pretrained=False, backbone_trains=True) == (
        TrainConfig.lr, None)
    assert learning_rates(None, None, 0.1, from_pretrained=True, backbone_trains=True) == (
        PRETRAINED_LR, pytest.approx(PRETRAINED_LR * 0.1))
    assert learning_rates(None, None, 0.1, from_pretrained=True, backbone_trains=False) == (PRETRAINED_LR, None)
    assert learning_rates(5e-3, 1e-5, 0.1, from_pretrained=True, backbone_trains=True) == (5e-3, 1e-5)
    assert learning_rates(5e-3, None, None, from_pretrained=True, backbone_trains=True) == (5e-3, None)


def test_train_recipe_option_defaults_come_from_the_config(invoke, manifest, tmp_path):
    from imgcls.commands.train import command
    from imgcls.training import TrainConfig
    from imgcls.training.config import FINETUNE_RECIPE

    defaults = {p.name: p.default for p in command.params}
    config = TrainConfig()
    # schedule, mixup and label smoothing depend on the run: from scratch the config's, fine-tuning the recipe's
    assert {k: defaults[k] for k in FINETUNE_RECIPE} == {k: None for k in FINETUNE_RECIPE}
    scratch = _train(invoke, manifest, tmp_path / "s", "--epochs", "1")
    assert scratch.exit_code == 0, scratch.stderr
    from imgcls.models.io import read_model_info

    used = read_model_info(tmp_path / "s").config
    assert {k: used[k] for k in FINETUNE_RECIPE} == {k: getattr(config, k) for k in FINETUNE_RECIPE}
    tuned = _train(invoke, manifest, tmp_path / "p", "--epochs", "1", "--freeze-epochs", "1",
                   "--weights", str(tmp_path / "s" / "model.safetensors"))
    assert tuned.exit_code == 0, tuned.stderr
    assert {k: read_model_info(tmp_path / "p").config[k] for k in FINETUNE_RECIPE} == FINETUNE_RECIPE


def test_train_frozen_backbone_features_are_computed_without_autograd():
    """extract_features runs under no_grad: a frozen backbone's features keep no graph (memory, speed)."""
    from imgcls.models import get_model
    from imgcls.training.data import extract_features

    class Batches:
        device = torch.device("cpu")

        def batches(self):
            yield torch.randn(3, 1, 12, 12), torch.zeros(3, dtype=torch.long)

    model = get_model("cnn", num_classes=2, in_channels=1, pretrained=False, width=4, depth=2)
    features = extract_features(model, Batches())
    assert features.shape == (3, model.feature_dim) and not features.requires_grad
