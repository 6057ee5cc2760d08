"""Architectures of the registry and pretrained weights (torch hub cache, --weights files)."""

from __future__ import annotations

import json
import urllib.error
from pathlib import Path

import pytest
import torch

from imgcls.errors import UsageProblem, WeightsError
from imgcls.models import get_model, get_spec, list_models

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


@pytest.mark.parametrize("arch", sorted(set(list_models())))
def test_models_every_arch_forward_backward(arch):
    spec = get_spec(arch)
    channels = spec.channels or 1
    size = 32 if spec.pretrainable else 12
    torch.manual_seed(0)
    model = get_model(arch, num_classes=4, in_channels=channels, pretrained=False)
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
