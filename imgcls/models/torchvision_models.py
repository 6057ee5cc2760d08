"""torchvision backbones in the registry, each as a :class:`Classifier`.

The torchvision model itself is the backbone, with its ImageNet classifier replaced by
``Identity`` (for vgg16 and the MobileNetV3s only the last Dropout + Linear go: their
hidden fully connected layers are part of the pretrained feature extractor). Module
names are therefore torchvision's own, so torchvision state dicts load unchanged.

``blocks`` are the natural stages from input to output (a stem, then each resolution
stage, then hidden FC layers where kept); ``--unfreeze N`` trains the last N of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from imgcls.errors import UsageProblem
from imgcls.models.classifier import Classifier
from imgcls.models.registry import register_model


class _Group(nn.ModuleList):
    """Several sibling modules treated as one block (only used in Classifier.blocks, never registered)."""


def _group(*modules: nn.Module) -> nn.Module:
    return modules[0] if len(modules) == 1 else _Group(modules)


def _index_groups(seq: nn.Sequential, groups: Sequence[Sequence[int]]) -> list[nn.Module]:
    return [_group(*(seq[i] for i in g)) for g in groups]


def _resnet(m) -> tuple[int, tuple[str, ...], list[nn.Module]]:
    dim = m.fc.in_features
    m.fc = nn.Identity()
    return dim, ("fc.",), [_group(m.conv1, m.bn1), m.layer1, m.layer2, m.layer3, m.layer4]


def _densenet(m):
    dim = m.classifier.in_features
    m.classifier = nn.Identity()
    f = m.features
    blocks = [_group(f.conv0, f.norm0), _group(f.denseblock1, f.transition1), _group(f.denseblock2, f.transition2),
              _group(f.denseblock3, f.transition3), _group(f.denseblock4, f.norm5)]
    return dim, ("classifier.",), blocks


def _vgg16(m):
    dim = m.classifier[6].in_features
    m.classifier[5] = nn.Identity()  # the last Dropout ...
    m.classifier[6] = nn.Identity()  # ... and Linear; the two hidden FC layers stay
    stages = [range(0, 5), range(5, 10), range(10, 17), range(17, 24), range(24, 31)]
    return dim, ("classifier.6.",), [*_index_groups(m.features, stages), _group(m.classifier[0], m.classifier[3])]


def _mobilenet_v2(m):
    dim = m.classifier[1].in_features
    m.classifier = nn.Identity()
    stages = [[0], [1], [2, 3], [4, 5, 6], [7, 8, 9, 10], [11, 12, 13], [14, 15, 16], [17], [18]]
    return dim, ("classifier.",), _index_groups(m.features, stages)


def _efficientnet(m):
    dim = m.classifier[1].in_features
    m.classifier = nn.Identity()
    return dim, ("classifier.",), list(m.features)  # torchvision already groups it by stage


def _mobilenet_v3(stages: list[list[int]]) -> Callable:
    def adapt(m):
        dim = m.classifier[3].in_features
        m.classifier[2] = nn.Identity()
        m.classifier[3] = nn.Identity()
        return dim, ("classifier.3.",), [*_index_groups(m.features, stages), m.classifier[0]]

    return adapt


# name -> (adapter, description)
_ARCHS: dict[str, tuple[Callable, str]] = {
    "densenet121": (_densenet, "DenseNet-121 (torchvision): dense blocks, strong features, slow on CPU"),
    "vgg16": (_vgg16, "VGG-16 (torchvision) with its two hidden FC layers; 138 M parameters, slow"),
    "efficientnet_b0": (_efficientnet, "EfficientNet-B0 (torchvision): accurate for its size"),
    "mobilenet_v2": (_mobilenet_v2, "MobileNetV2 (torchvision): small and fast, the CPU transfer-learning choice"),
    "mobilenet_v3_small": (_mobilenet_v3([[0], [1], [2, 3], [4, 5, 6], [7, 8], [9, 10, 11], [12]]),
                           "MobileNetV3-Small (torchvision) with its hidden FC layer: the smallest backbone"),
    "mobilenet_v3_large": (_mobilenet_v3([[0], [1], [2, 3], [4, 5, 6], [7, 8, 9, 10], [11, 12], [13, 14, 15], [16]]),
                           "MobileNetV3-Large (torchvision) with its hidden FC layer"),
    "resnet18": (_resnet, "ResNet-18 (torchvision): the classic small residual network"),
    "resnet50": (_resnet, "ResNet-50 (torchvision): the classic residual network"),
}


def _builder(arch: str) -> Callable[..., Classifier]:
    adapt = _ARCHS[arch][0]

    def build(num_classes: int, in_channels: int = 3, dropout: float = 0.2, pretrained: bool = False,
              weights: Any = None) -> Classifier:
        import torchvision

        from imgcls.models.weights import Pretrained, load_backbone_state, read_weights_file, resolve_pretrained

        if in_channels != 3:
            raise UsageProblem(f"{arch} takes 3-channel input (grayscale images are converted to RGB), not {in_channels}")
        net = torchvision.models.get_model(arch, weights=None)
        feature_dim, prefixes, blocks = adapt(net)
        pre: Pretrained | None
        if isinstance(weights, Pretrained):
            pre = weights
        elif isinstance(weights, dict):
            pre = Pretrained(state_dict=weights, source="state dict")
        elif weights is not None:
            pre = read_weights_file(weights)
        else:
            pre = resolve_pretrained(arch, pretrained=pretrained)
        if pre is not None:
            load_backbone_state(net, pre.state_dict, prefixes, arch, pre.source)
        model = Classifier(net, feature_dim, num_classes, dropout, blocks=blocks)
        model.weights_source = pre.source if pre is not None else None
        return model

    build.__name__ = f"build_{arch}"
    build.__doc__ = f"{arch} from torchvision with a Dropout + Linear head for num_classes."
    return build


for _name, (_adapt, _description) in _ARCHS.items():
    register_model(_name, default_size=224, channels=3, pretrainable=True, description=_description)(_builder(_name))
