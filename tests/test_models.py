"""Architectures of the registry and pretrained weights (torch hub cache, --weights files)."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest
import torch

from imgcls.errors import UsageProblem, WeightsError
from imgcls.models import catalog, get_model, get_spec, list_models

TORCHVISION_ARCHS = ["densenet121", "vgg16", "efficientnet_b0", "mobilenet_v2", "mobilenet_v3_small",
                     "mobilenet_v3_large", "resnet18", "resnet50"]


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty torch hub cache in tmp_path; any download attempt fails at once."""
    import torch.hub

    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # get_dir() now follows $TORCH_HOME
    calls = []

    def no_network(url, dst, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("network is unreachable (test)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return home, calls


def _random_state(arch: str, seed: int = 1) -> dict[str, torch.Tensor]:
    """A full torchvision state dict (ImageNet head included), randomly initialised."""
    import torchvision

    torch.manual_seed(seed)
    return torchvision.models.get_model(arch, weights=None).state_dict()


def test_models_registry_lists_all_archs():
    names = list_models()
    for name in ["cnn", "cnn-gru", "cnn-classic", *TORCHVISION_ARCHS]:
        assert name in names
    for name in TORCHVISION_ARCHS:
        spec = get_spec(name)
        assert (spec.default_size, spec.channels, spec.pretrainable) == (224, 3, True)
    own = {n for n in names if not n.startswith("test-")}  # other test files register test-* architectures
    assert own == set(catalog.arch_names())  # the registry is the table, the table is torchvision's


# The big families at their smallest variant (torchvision's smallest ViT is vit_b_16).
BIG_FAMILIES_SMALLEST = {"vit_b_16", "swin_t", "convnext_tiny", "efficientnet_v2_s", "regnet_x_400mf"}


def _catalog_default_run() -> set[str]:
    """The original eight, the big families' smallest, and each other family's smallest variant unless it is
    large or slow (VGG-11 and AlexNet: big FC layers; MaxViT: 224 px at least)."""
    chosen = set(TORCHVISION_ARCHS) | BIG_FAMILIES_SMALLEST
    by_family: dict[str, dict] = {}
    for a in catalog.torchvision_archs():
        if a["family"] not in by_family or a["params"] < by_family[a["family"]]["params"]:
            by_family[a["family"]] = a
    chosen |= {a["name"] for a in by_family.values() if a["params"] < 40_000_000 and a["min_size"] < 224}
    return chosen


_DEFAULT_RUN = _catalog_default_run()
ALL_ARCHS = [pytest.param(n, marks=() if n in _DEFAULT_RUN or n.startswith("cnn") else pytest.mark.slow)
             for n in catalog.arch_names()]


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_models_every_arch_forward_backward(arch):
    """Every architecture --list-archs shows: builds, runs forward and backward, freezes and unfreezes."""
    spec = get_spec(arch)
    entry = catalog.entry(arch)
    channels = spec.channels or 1
    size = entry.get("min_size", 12) if spec.pretrainable else 12
    torch.manual_seed(0)
    model = get_model(arch, num_classes=4, in_channels=channels, pretrained=False, image_size=size)
    model.train()
    x = torch.randn(2, channels, size, size)
    out = model(x)
    assert out.shape == (2, 4)
    out.logsumexp(1).sum().backward()
    assert model.head[1].weight.grad is not None and model.head[1].weight.grad.abs().sum() > 0
    # blocks partition the backbone's parameters: "unfreeze all blocks" means the whole backbone
    block_ids = [id(p) for b in model.blocks for p in b.parameters()]
    assert len(block_ids) == len(set(block_ids))
    assert set(block_ids) == {id(p) for p in model.backbone.parameters()}
    # the table says what the model is
    assert len(model.blocks) == entry["blocks"] and model.feature_dim == entry["feature_dim"]
    if spec.pretrainable and not entry["fixed_size"]:  # a ViT's position embedding grows with its input size
        assert sum(p.numel() for p in model.backbone.parameters()) == entry["params"]
    head = {id(p) for p in model.head.parameters()}
    model.set_trainable_blocks(0)
    assert {id(p) for p in model.trainable_parameters()} == head
    model.set_trainable_blocks(1)
    assert {id(p) for p in model.trainable_parameters()} == head | {id(p) for p in model.blocks[-1].parameters()}
    model.train()
    assert not model.backbone.training and all(m.training for m in model.blocks[-1].modules())
    model.set_trainable_blocks(None)
    assert len(model.trainable_parameters()) == len(list(model.parameters()))


def test_models_catalog_is_current_with_installed_torchvision():
    """catalog_data.py is generated (python -m imgcls.models.catalog --write): it must say what torchvision says."""
    fresh = {a["name"]: a for a in catalog.generate_torchvision(structure=False)}
    stored = {a["name"]: a for a in catalog.torchvision_archs()}
    assert sorted(fresh) == sorted(stored), "models added or removed: python -m imgcls.models.catalog --write"
    structure = ("params", "feature_dim", "blocks")
    for name, row in fresh.items():
        assert {k: v for k, v in stored[name].items() if k not in structure} == row, (
            f"{name} changed: python -m imgcls.models.catalog --write")


def test_models_catalog_import_is_torch_free():
    code = ("import sys; import imgcls.models.catalog as c; import imgcls.models.heads; c.arch_help(); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_models_unfreeze_last_blocks_only():
    model = get_model("resnet18", num_classes=3)
    model.set_trainable_blocks(2)
    trainable = {id(p) for p in model.trainable_parameters()}
    for i, block in enumerate(model.blocks):
        expected = i >= len(model.blocks) - 2
        assert all((id(p) in trainable) == expected for p in block.parameters())
    model.train()
    assert not model.blocks[0][1].training and model.blocks[-1].training  # frozen BN stays in eval mode


def test_models_unknown_arch_suggests_close_names():
    with pytest.raises(UsageProblem, match="resnet18"):
        get_model("resnet19", num_classes=2)


def test_models_torchvision_arch_refuses_one_channel():
    with pytest.raises(UsageProblem, match="3-channel"):
        get_model("resnet18", num_classes=2, in_channels=1)


def test_models_pretrained_from_seeded_torch_hub_cache(offline_hub):
    """The real torchvision loading code reads a file we put at the exact cache path it expects."""
    from imgcls.models.weights import cache_file_for, torchvision_weights

    home, calls = offline_hub
    state = _random_state("mobilenet_v3_small")
    target = cache_file_for(torchvision_weights("mobilenet_v3_small"))
    assert target == home / "hub" / "checkpoints" / "mobilenet_v3_small-047dcff4.pth"
    target.parent.mkdir(parents=True)
    torch.save(state, target)

    model = get_model("mobilenet_v3_small", num_classes=3, pretrained=True)
    got = model.backbone.state_dict()
    assert torch.equal(got["features.0.0.weight"], state["features.0.0.weight"])
    assert torch.equal(got["classifier.0.weight"], state["classifier.0.weight"])  # hidden FC kept
    assert "classifier.3.weight" not in got  # the ImageNet head is gone
    assert model.head[1].out_features == 3
    assert calls == []


def test_models_offline_error_names_cache_file_and_weights_option(offline_hub):
    from imgcls.models.weights import resolve_pretrained

    home, calls = offline_hub
    with pytest.raises(WeightsError) as info:
        resolve_pretrained("resnet18", pretrained=True)
    message = str(info.value)
    assert str(home / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message
    assert "--weights" in message and "\n" not in message
    assert len(calls) == 1  # tried once, failed fast


def test_models_damaged_cache_file_is_named(offline_hub):
    from imgcls.models.weights import cache_file_for, resolve_pretrained, torchvision_weights

    target = cache_file_for(torchvision_weights("resnet18"))
    target.parent.mkdir(parents=True)
    target.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(WeightsError, match="damaged cached weights"):
        resolve_pretrained("resnet18", pretrained=True)


@pytest.mark.parametrize("mean_text", ["[0.5, 0.4, 0.3]", "0.5,0.4,0.3"])
def test_models_weights_safetensors_with_normalization_metadata(tmp_path, mean_text):
    from safetensors.torch import save_file

    from imgcls.models.weights import resolve_pretrained

    state = _random_state("mobilenet_v3_small")
    path = tmp_path / "w.safetensors"
    save_file(state, str(path), metadata={"mean": mean_text, "std": json.dumps([0.2, 0.2, 0.2])})
    pre = resolve_pretrained("mobilenet_v3_small", pretrained=True, weights_file=path)
    assert pre.mean == [0.5, 0.4, 0.3] and pre.std == [0.2, 0.2, 0.2]
    model = get_model("mobilenet_v3_small", num_classes=2, weights=pre)
    assert torch.equal(model.backbone.state_dict()["features.1.block.0.0.weight"], state["features.1.block.0.0.weight"])


def test_models_weights_pth_plain_and_wrapped(tmp_path):
    from imgcls.models.weights import read_weights_file, resolve_pretrained

    state = _random_state("resnet18")
    plain, wrapped = tmp_path / "plain.pth", tmp_path / "wrapped.pth"
    torch.save(state, plain)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, wrapped)
    for path in (plain, wrapped):
        pre = read_weights_file(path)
        model = get_model("resnet18", num_classes=2, weights=pre)
        assert torch.equal(model.backbone.state_dict()["layer4.1.bn2.running_var"], state["layer4.1.bn2.running_var"])
    # no metadata: torchvision's ImageNet normalization is assumed for a torchvision architecture
    pre = resolve_pretrained("resnet18", pretrained=True, weights_file=plain)
    assert pre.mean == pytest.approx([0.485, 0.456, 0.406])


class _Payload:  # a pickled object that is not a tensor: weights_only=True must refuse it
    pass


def test_models_weights_pth_with_code_is_refused(tmp_path):
    from imgcls.models.weights import read_weights_file

    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(2), "payload": _Payload()}, path)
    with pytest.raises(WeightsError, match="weights_only"):
        read_weights_file(path)


def test_models_weights_mismatch_is_one_clear_error(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "resnet.safetensors"
    save_file(_random_state("resnet18"), str(path))
    with pytest.raises(WeightsError) as info:
        get_model("mobilenet_v3_small", num_classes=2, weights=path)
    assert "do not fit mobilenet_v3_small" in str(info.value) and str(path) in str(info.value)


def test_models_weights_truncated_or_foreign_files(tmp_path):
    from safetensors.torch import save_file

    from imgcls.models.weights import read_weights_file

    good = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(100)}, str(good))
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(good.read_bytes()[:60])
    with pytest.raises(WeightsError, match="not a readable safetensors"):
        read_weights_file(truncated)
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(WeightsError, match="not a readable PyTorch state dict|refused"):
        read_weights_file(text)
    other = tmp_path / "w.txt"
    other.write_text("x")
    with pytest.raises(WeightsError, match="unknown weights format"):
        read_weights_file(other)
    with pytest.raises(WeightsError, match="no such weights file"):
        read_weights_file(tmp_path / "missing.safetensors")


def test_models_shipped_mobilenet_v2_weights_load_if_present():
    """The real ImageNet weights beside the checkout (never required: skipped when absent)."""
    path = Path(__file__).resolve().parents[2] / "shared" / "weights" / "mobilenet_v2-imagenet.safetensors"
    if not path.exists():
        pytest.skip("no shared weights beside the checkout")
    from imgcls.models.weights import resolve_pretrained

    pre = resolve_pretrained("mobilenet_v2", pretrained=True, weights_file=path)
    assert pre.mean == [0.5, 0.5, 0.5] and pre.std == [0.5, 0.5, 0.5]
    model = get_model("mobilenet_v2", num_classes=10, weights=pre)
    assert model.feature_dim == 1280


# -- pretrained weights by name, other input sizes ---------------------------------------------

def test_models_weights_name_picks_other_weights_and_lists_valid_ones(offline_hub):
    from imgcls.models.weights import cache_file_for, resolve_pretrained, torchvision_weights, weights_size

    home, _ = offline_hub
    v1 = torchvision_weights("mobilenet_v2", "IMAGENET1K_V1")
    assert v1 is torchvision_weights("mobilenet_v2", "MobileNet_V2_Weights.IMAGENET1K_V1")
    assert v1 is not torchvision_weights("mobilenet_v2") and torchvision_weights("mobilenet_v2", "default").name == "IMAGENET1K_V2"
    state = _random_state("mobilenet_v2")
    cache_file_for(v1).parent.mkdir(parents=True)
    torch.save(state, cache_file_for(v1))
    pre = resolve_pretrained("mobilenet_v2", pretrained=True, weights_name="IMAGENET1K_V1")
    assert "IMAGENET1K_V1" in pre.source and pre.image_size == 224
    with pytest.raises(WeightsError, match="mobilenet_v2-7ebf99e0.pth"):  # the default (V2) is not cached
        resolve_pretrained("mobilenet_v2", pretrained=True)
    with pytest.raises(UsageProblem) as info:
        torchvision_weights("vit_b_16", "IMAGENET1K_SWAG")
    assert "IMAGENET1K_SWAG_E2E_V1" in str(info.value) and "IMAGENET1K_V1" in str(info.value)
    assert weights_size("vit_b_16", "IMAGENET1K_SWAG_E2E_V1") == 384 and weights_size("vit_b_16") == 224


def test_models_vit_position_embedding_resampled_to_the_input_size():
    """A ViT state dict for 224 px loads into a ViT built for 32 px (torchvision's interpolate_embeddings)."""
    state = _random_state("vit_b_16")
    model = get_model("vit_b_16", num_classes=2, weights=state, image_size=32)
    got = model.backbone.state_dict()
    assert got["encoder.pos_embedding"].shape == (1, 5, 768)  # class token + 2x2 patches
    assert torch.equal(got["encoder.pos_embedding"][:, :1], state["encoder.pos_embedding"][:, :1])
    assert torch.equal(got["conv_proj.weight"], state["conv_proj.weight"])
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 2)
    with pytest.raises(UsageProblem, match="multiple of 16"):
        get_model("vit_b_16", num_classes=2, image_size=40)


def test_models_weights_with_nan_are_refused(tmp_path):
    state = _random_state("mobilenet_v3_small")
    state["features.0.0.weight"][0, 0, 0, 0] = float("nan")
    with pytest.raises(WeightsError, match="NaN"):
        get_model("mobilenet_v3_small", num_classes=2, weights=state)


# -- timm (the optional extra) -------------------------------------------------------------------

def _timm_weights(tmp_path: Path, name: str, seed: int = 1) -> tuple[Path, dict]:
    """A full timm state dict (classifier included) written to a file, as a downloaded one would be."""
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    state = {k: v.contiguous() for k, v in timm.create_model(name, pretrained=False).state_dict().items()}
    path = tmp_path / f"{name}.safetensors"
    save_file(state, str(path))
    return path, state


@pytest.mark.parametrize("name,size", [("resnet18", 32), ("vit_tiny_patch16_224", 32)])
def test_models_timm_backbone_from_a_weights_file(tmp_path, name, size):
    path, state = _timm_weights(tmp_path, name)
    spec = get_spec(f"timm/{name}")
    assert spec.source == "timm" and spec.pretrainable and spec.default_size == 224
    model = get_model(f"timm/{name}", num_classes=3, weights=path, image_size=size)
    got = model.backbone.state_dict()
    same = [k for k in got if got[k].shape == state[k].shape]
    assert all(torch.equal(got[k], state[k]) for k in same)
    assert not any(k.startswith(("fc.", "head.weight")) for k in got)  # the ImageNet classifier is gone
    model.train()
    out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 3)
    out.sum().backward()
    ids = [id(p) for b in model.blocks for p in b.parameters()]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.backbone.parameters()}
    assert len(model.blocks) > 3  # stem, stages / encoder blocks, final norm: timm's group matcher
    model.set_trainable_blocks(1)
    trainable = {id(p) for p in model.trainable_parameters()}
    assert trainable == {id(p) for p in model.blocks[-1].parameters()} | {id(p) for p in model.head.parameters()}


def test_models_timm_unknown_model_and_tag(tmp_path):
    pytest.importorskip("timm")
    with pytest.raises(UsageProblem, match="resnet18"):
        get_spec("timm/resnet19")
    from imgcls.models.timm_models import pretrained_cfg

    with pytest.raises(UsageProblem, match="a1_in1k"):
        pretrained_cfg("timm/resnet18", "no_such_tag")


def test_models_timm_offline_error_names_the_hub_cache(monkeypatch, tmp_path):
    pytest.importorskip("timm")
    from imgcls.models import timm_models
    from imgcls.models.weights import resolve_pretrained

    monkeypatch.setattr(timm_models, "_hf_cached", lambda cfg: None)
    monkeypatch.setattr(timm_models, "_reachable", lambda host: "network is unreachable (test)")
    with pytest.raises(WeightsError) as info:
        resolve_pretrained("timm/resnet18", pretrained=True)
    message = str(info.value)
    assert "models--timm--resnet18.a1_in1k" in message and "--weights" in message and "\n" not in message


def test_models_without_timm_one_line_says_what_to_install(monkeypatch, invoke, tmp_path):
    from imgcls.errors import ImgclsError
    from imgcls.models import registry

    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    monkeypatch.delitem(registry._RESOLVED, "timm/resnet18", raising=False)
    with pytest.raises(ImgclsError, match=r"pip install 'imgcls\[timm\]'"):
        get_spec("timm/resnet18")
    result = invoke(["train", str(tmp_path / "none.jsonl"), "--arch", "timm/resnet18"])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == ["Error: timm/resnet18 needs timm, which is not installed: "
                                                  "pip install 'imgcls[timm]'"]
