"""Every torchvision classification model in the registry, each as a :class:`Classifier`.

The names are those of ``torchvision.models.list_models(module=torchvision.models)``, as
recorded in the generated architecture table (:mod:`imgcls.models.catalog`); a model the
installed torchvision has but the table lacks still resolves (:func:`dynamic_spec`).

The torchvision model itself is the backbone, with its ImageNet classifier replaced by
``Identity``: the last layer with 1000 outputs goes, and a Dropout right before it (the
imgcls head has its own). Hidden fully connected layers stay (VGG, AlexNet, MobileNetV3,
MaxViT): they are part of the pretrained feature extractor. Module names are therefore
torchvision's own, so torchvision state dicts load unchanged.

``blocks`` are the natural stages from input to output (a stem, then each resolution
stage, then hidden FC layers where kept); ``--unfreeze N`` trains the last N of them.
They come from one rule per torchvision family (the module a model is defined in), and
for a family without a rule from the model's ``features`` children (or its top-level
children), merging parameter-free modules into their neighbours.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from imgcls.errors import UsageProblem
from imgcls.models.classifier import Block, Classifier, blocks_from_param_groups
from imgcls.models.registry import ArchSpec, add_resolver, register_model

IMAGENET_CLASSES = 1000


def _group(*modules: nn.Module) -> nn.Module:
    return modules[0] if len(modules) == 1 else Block(modules)


def _index_groups(seq: nn.Sequential, groups: Sequence[Sequence[int]]) -> list[nn.Module]:
    return [_group(*(seq[i] for i in g)) for g in groups]


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _split_after(seq: nn.Sequential, cut: Callable[[nn.Module], bool]) -> list[list[int]]:
    """Indices of ``seq`` in runs ending at each module where ``cut`` holds (e.g. after each max-pool)."""
    runs, current = [], []
    for i, module in enumerate(seq):
        current.append(i)
        if cut(module):
            runs.append(current)
            current = []
    if current:
        if runs and not any(_has_params(seq[i]) for i in current):
            runs[-1].extend(current)
        else:
            runs.append(current)
    return runs


def _merge_parameterless(modules: Sequence[nn.Module]) -> list[nn.Module]:
    """Modules with parameters each start a block; parameter-free ones join the block before them."""
    groups: list[list[nn.Module]] = []
    for module in modules:
        if _has_params(module) or not groups:
            groups.append([module])
        else:
            groups[-1].append(module)
    return [_group(*g) for g in groups if any(_has_params(m) for m in g)]


# -- the ImageNet head --------------------------------------------------------------------

def strip_imagenet_head(net: nn.Module) -> tuple[int, tuple[str, ...]]:
    """Replace the last 1000-output layer (and a Dropout right before it) with Identity.

    Returns the feature size and the state-dict prefix of the removed layer (its keys in a
    pretrained file are ignored).
    """
    found = None
    for name, module in net.named_modules():
        if isinstance(module, nn.Linear) and module.out_features == IMAGENET_CLASSES:
            found = (name, module.in_features)
        elif isinstance(module, nn.Conv2d) and module.out_channels == IMAGENET_CLASSES:
            found = (name, module.in_channels)  # SqueezeNet's 1x1 convolution head
    if found is None:
        raise ValueError("no ImageNet classifier layer found")
    name, dim = found
    parent_name, _, child = name.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    if isinstance(parent, nn.Sequential):
        keys = list(parent._modules)
        at = keys.index(child)
        if at > 0 and isinstance(parent._modules[keys[at - 1]], nn.Dropout):
            parent._modules[keys[at - 1]] = nn.Identity()
    elif isinstance(getattr(parent, "dropout", None), nn.Dropout):
        parent.dropout = nn.Identity()  # GoogLeNet, Inception v3: dropout, then fc
    setattr(parent, child, nn.Identity())
    return dim, (f"{name}.",)


# -- blocks per family ----------------------------------------------------------------------

def _resnet(m, arch):
    return [_group(m.conv1, m.bn1), m.layer1, m.layer2, m.layer3, m.layer4]


def _densenet(m, arch):
    f = m.features
    return [_group(f.conv0, f.norm0), _group(f.denseblock1, f.transition1), _group(f.denseblock2, f.transition2),
            _group(f.denseblock3, f.transition3), _group(f.denseblock4, f.norm5)]


def _pooled_stages(m, arch):
    """VGG, AlexNet, SqueezeNet: the conv stages end at each max-pool; kept hidden FC layers are the last block."""
    blocks = _index_groups(m.features, _split_after(m.features, lambda x: isinstance(x, nn.MaxPool2d)))
    hidden = [x for x in getattr(m, "classifier", nn.Sequential()) if isinstance(x, nn.Linear)]
    if hidden:
        blocks.append(_group(*hidden))
    return blocks


_MOBILENET_V3_STAGES = {
    "mobilenet_v3_small": [[0], [1], [2, 3], [4, 5, 6], [7, 8], [9, 10, 11], [12]],
    "mobilenet_v3_large": [[0], [1], [2, 3], [4, 5, 6], [7, 8, 9, 10], [11, 12], [13, 14, 15], [16]],
}


def _mobilenet_v2(m, arch):
    return _index_groups(m.features, [[0], [1], [2, 3], [4, 5, 6], [7, 8, 9, 10], [11, 12, 13], [14, 15, 16], [17], [18]])


def _mobilenet_v3(m, arch):
    stages = _MOBILENET_V3_STAGES.get(arch) or [[i] for i in range(len(m.features))]
    return [*_index_groups(m.features, stages), m.classifier[0]]


def _efficientnet(m, arch):
    return list(m.features)  # torchvision already groups it by stage


def _mnasnet(m, arch):
    layers = list(m.layers)
    return [_group(*layers[:8]), *layers[8:14], _group(*layers[14:])]


def _downsample_then_stage(m, arch):
    """ConvNeXt, Swin: stem, then (downsampling + stage) pairs; the final norm joins the last stage."""
    f = list(m.features)
    blocks = [f[0], f[1]] + [_group(f[i], f[i + 1]) for i in range(2, len(f) - 1, 2)]
    final_norm = m.norm if hasattr(m, "norm") else m.classifier[0]
    last = blocks.pop()
    blocks.append(_group(*(list(last) if isinstance(last, Block) else [last]), final_norm))
    return blocks


def _regnet(m, arch):
    return [m.stem, *m.trunk_output]


def _shufflenet(m, arch):
    return [m.conv1, m.stage2, m.stage3, m.stage4, m.conv5]


def _googlenet(m, arch):
    return [_group(m.conv1, m.conv2, m.conv3), _group(m.inception3a, m.inception3b),
            _group(m.inception4a, m.inception4b, m.inception4c, m.inception4d, m.inception4e),
            _group(m.inception5a, m.inception5b)]


def _inception(m, arch):
    return [_group(m.Conv2d_1a_3x3, m.Conv2d_2a_3x3, m.Conv2d_2b_3x3, m.Conv2d_3b_1x1, m.Conv2d_4a_3x3),
            _group(m.Mixed_5b, m.Mixed_5c, m.Mixed_5d),
            _group(m.Mixed_6a, m.Mixed_6b, m.Mixed_6c, m.Mixed_6d, m.Mixed_6e),
            _group(m.Mixed_7a, m.Mixed_7b, m.Mixed_7c)]


def _vit(m, arch):
    """The patch embedding (with the class token and position embedding), each encoder layer, the final norm."""
    names = [n for n, _ in m.named_parameters()]
    embed = [n for n in names if n.startswith(("conv_proj.", "class_token", "encoder.pos_embedding"))]
    layers = [[n for n in names if n.startswith(f"encoder.layers.{key}.")] for key in m.encoder.layers._modules]
    final = [n for n in names if n.startswith("encoder.ln.")]
    return blocks_from_param_groups(m, [embed, *layers, final])


def _maxvit(m, arch):
    return [m.stem, *m.blocks, _group(m.classifier[2], m.classifier[3])]


def _generic(m, arch):
    """A family without a rule: the ``features`` children, else the top-level children, with parameters."""
    if isinstance(getattr(m, "features", None), nn.Sequential):
        blocks = _merge_parameterless(list(m.features))
        rest = [c for n, c in m.named_children() if n != "features" and _has_params(c)]
        return blocks + rest
    return _merge_parameterless([c for c in m.children() if _has_params(c)])


class Family:
    """How one torchvision family becomes a backbone: its blocks, build options, smallest input."""

    def __init__(self, blocks: Callable, min_size: int = 32, fixed_size: bool = False,
                 build_kwargs: Callable[[int], dict] | None = None, ignore: tuple[str, ...] = (),
                 size_multiple: int = 1):
        self.blocks = blocks
        self.min_size = min_size
        self.fixed_size = fixed_size  # the model is built for one input size (ViT, MaxViT)
        self.build_kwargs = build_kwargs or (lambda size: {})
        self.ignore = ignore  # state-dict prefixes of pretrained files that the backbone does not use
        self.size_multiple = size_multiple


# keyed by the torchvision module a model is defined in (torchvision.models.<family>)
FAMILIES: dict[str, Family] = {
    "alexnet": Family(_pooled_stages, min_size=64),
    "convnext": Family(_downsample_then_stage),
    "densenet": Family(_densenet),
    "efficientnet": Family(_efficientnet),
    "googlenet": Family(_googlenet, build_kwargs=lambda size: {"aux_logits": False, "transform_input": True,
                                                             "init_weights": True},
                        ignore=("aux1.", "aux2.")),
    "inception": Family(_inception, min_size=75, build_kwargs=lambda size: {"aux_logits": False, "transform_input": True,
                                                                          "init_weights": True},
                        ignore=("AuxLogits.",)),
    "maxvit": Family(_maxvit, min_size=224, fixed_size=True, size_multiple=224,
                     build_kwargs=lambda size: {"input_size": (size, size)}),
    "mnasnet": Family(_mnasnet),
    "mobilenetv2": Family(_mobilenet_v2),
    "mobilenetv3": Family(_mobilenet_v3),
    "regnet": Family(_regnet),
    "resnet": Family(_resnet),
    "shufflenetv2": Family(_shufflenet),
    "squeezenet": Family(_pooled_stages),
    "swin_transformer": Family(_downsample_then_stage),
    "vgg": Family(_pooled_stages),
    "vision_transformer": Family(_vit, fixed_size=True, build_kwargs=lambda size: {"image_size": size}),
}
GENERIC = Family(_generic)


def family_of(arch: str) -> str:
    """The torchvision module that defines ``arch`` (resnet for resnext50_32x4d, swin_transformer for swin_t)."""
    import torchvision

    return torchvision.models.get_model_builder(arch).__module__.rsplit(".", 1)[-1]


def patch_size(arch: str) -> int:
    """A ViT's patch size from its name (vit_b_16: 16); 1 for other models."""
    tail = arch.rsplit("_", 1)[-1]
    return int(tail) if arch.startswith("vit_") and tail.isdigit() else 1


def size_multiple(arch: str, family: Family) -> int:
    return max(family.size_multiple, patch_size(arch))


def min_size(arch: str, family: Family) -> int:
    """The smallest input side ``arch`` runs at: the family's minimum, two ViT patches, a multiple of both."""
    multiple = size_multiple(arch, family)
    low = max(family.min_size, 2 * patch_size(arch))
    return -(-low // multiple) * multiple


def check_size(arch: str, family: Family, size: int) -> None:
    low, multiple = min_size(arch, family), size_multiple(arch, family)
    if size < low:
        raise UsageProblem(f"--image-size {size}: {arch} needs at least {low} px")
    if size % multiple:
        up = -(-size // multiple) * multiple
        raise UsageProblem(f"--image-size {size}: {arch} is built for one input size, a multiple of {multiple} px "
                           f"(e.g. {up - multiple if up - multiple >= low else up} or {up if up - multiple >= low else up + multiple})")


def build_backbone(arch: str, image_size: int | None = None) -> tuple[nn.Module, int, tuple[str, ...], list, Family]:
    """The torchvision model without its ImageNet head: (net, feature_dim, ignored prefixes, blocks, family)."""
    import torchvision

    family = FAMILIES.get(family_of(arch), GENERIC)
    kwargs = {}
    if family.fixed_size or family.build_kwargs is not None:
        size = image_size or 224
        if family.fixed_size:
            check_size(arch, family, size)
        kwargs = family.build_kwargs(size)
    net = torchvision.models.get_model(arch, weights=None, **kwargs)
    dim, prefixes = strip_imagenet_head(net)
    return net, dim, prefixes + family.ignore, family.blocks(net, arch), family


def _adapt_state(arch: str, net: nn.Module, state: dict[str, Any]) -> dict[str, Any]:
    """A ViT's position embedding resampled to the input size it is built for (torchvision's own helper)."""
    import torch

    from imgcls.models.weights import strip_prefixes

    key = "encoder.pos_embedding"
    embedding = getattr(getattr(net, "encoder", None), "pos_embedding", None)
    if not isinstance(embedding, torch.Tensor):
        return state
    state = strip_prefixes(state)
    if key in state and tuple(state[key].shape) != tuple(embedding.shape):
        from torchvision.models.vision_transformer import interpolate_embeddings

        state = interpolate_embeddings(net.image_size, net.patch_size, dict(state), reset_heads=False)
    return state


def _builder(arch: str) -> Callable[..., Classifier]:
    def build(num_classes: int, in_channels: int = 3, dropout: float = 0.2, pretrained: bool = False,
              weights: Any = None, image_size: int | None = None) -> Classifier:
        from imgcls.models.weights import builder_weights, load_backbone_state

        if in_channels != 3:
            raise UsageProblem(f"{arch} takes 3-channel input (grayscale images are converted to RGB), not {in_channels}")
        net, feature_dim, prefixes, blocks, _ = build_backbone(arch, image_size)
        pre = builder_weights(arch, weights, pretrained)
        if pre is not None:
            load_backbone_state(net, _adapt_state(arch, net, pre.state_dict), prefixes, arch, pre.source)
        model = Classifier(net, feature_dim, num_classes, dropout, blocks=blocks)
        model.weights_source = pre.source if pre is not None else None
        return model

    build.__name__ = f"build_{arch}"
    build.__doc__ = f"{arch} from torchvision with a Dropout + Linear head for num_classes."
    return build


def _spec_kwargs(entry: dict[str, Any]) -> dict[str, Any]:
    return dict(default_size=entry["default_size"], channels=3, pretrainable=bool(entry["weights"]),
                description=entry["description"], family=entry["family"], min_size=entry["min_size"],
                takes_size=entry["fixed_size"], source="torchvision",
                weights=tuple(w["name"] for w in entry["weights"]), default_weights=entry["default_weights"])


def dynamic_spec(arch: str) -> ArchSpec | None:
    """A spec for a model the installed torchvision has and the generated table lacks (a newer torchvision)."""
    import torchvision

    if "/" in arch or arch not in torchvision.models.list_models(module=torchvision.models):
        return None
    from imgcls.models.catalog import torchvision_entry

    entry = torchvision_entry(arch, structure=False)
    return ArchSpec(arch, _builder(arch), **_spec_kwargs(entry))


def _register_all() -> None:
    from imgcls.models.catalog import torchvision_archs

    try:
        table = torchvision_archs()
    except ImportError:  # catalog_data.py not generated yet (python -m imgcls.models.catalog --write)
        table = []
    for entry in table:
        register_model(entry["name"], **_spec_kwargs(entry))(_builder(entry["name"]))


_register_all()
add_resolver(dynamic_spec)
