"""imgcls train: the training loop, run folders, checkpoints, resume, weights and bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

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
                         "--image-size", "32", "--freeze", "--epochs", "2", "--batch-size", "8", "--out", str(out),
                         *extra])
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
                       trainable_blocks=0, pretrained=False, epochs=2)
    b = _library_train(manifest, tmp_path / "b", arch="mobilenet_v3_small", arch_options={}, image_size=32,
                       trainable_blocks=0, pretrained=False, epochs=2, feature_cache=False)
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
