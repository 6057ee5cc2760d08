"""The architecture table, readable without torch: names, families, sizes, weights.

``imgcls --help``, shell completion, the man pages and tests read this table; building a
model still goes through torchvision (or timm) itself (:mod:`imgcls.models.registry`).

The table is GENERATED from the installed torchvision and timm, never edited by hand::

    python -m imgcls.models.catalog --write      # rewrites catalog_data.py and catalog_timm.py
    python -m imgcls.models.catalog --check      # exit 1 when they are stale

``tests/test_models.py`` fails when ``catalog_data.py`` is stale against the installed
torchvision (a model added, removed, or with other weights), and checks every entry's
structure (parameters, feature size, blocks) against the model it builds.
"""

from __future__ import annotations

import argparse
import fnmatch
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DATA_FILE = HERE / "catalog_data.py"
TIMM_FILE = HERE / "catalog_timm.py"
TIMM_PREFIX = "timm/"

# Hand-written notes for the backbones imgcls started with; the others get generated ones.
NOTES = {
    "densenet121": "DenseNet-121: dense blocks, strong features, slow on CPU",
    "vgg16": "VGG-16 with its two hidden FC layers; 138 M parameters, slow",
    "efficientnet_b0": "EfficientNet-B0: accurate for its size",
    "mobilenet_v2": "MobileNetV2: small and fast, the CPU transfer-learning choice",
    "mobilenet_v3_small": "MobileNetV3-Small with its hidden FC layer: the smallest backbone",
    "mobilenet_v3_large": "MobileNetV3-Large with its hidden FC layer",
    "resnet18": "ResNet-18: the classic small residual network",
    "resnet50": "ResNet-50: the classic residual network",
}


# -- reading (torch-free) -------------------------------------------------------------------

def _data() -> Any:
    from imgcls.models import catalog_data

    return catalog_data


def scratch_archs() -> list[dict[str, Any]]:
    return list(_data().SCRATCH)


def torchvision_archs() -> list[dict[str, Any]]:
    return list(_data().TORCHVISION)


def arch_names() -> list[str]:
    """Every architecture of the table: the scratch models, then torchvision's (sorted)."""
    return [a["name"] for a in scratch_archs()] + [a["name"] for a in torchvision_archs()]


def entry(name: str) -> dict[str, Any] | None:
    for a in (*scratch_archs(), *torchvision_archs()):
        if a["name"] == name:
            return a
    return None


def families() -> list[str]:
    return sorted({a["family"] for a in torchvision_archs()})


def timm_table() -> dict[str, Any]:
    """timm's pretrained models as recorded: {"version", "archs": {arch: [default size, [tags]]}}; {} without it."""
    try:
        from imgcls.models import catalog_timm
    except ImportError:
        return {}
    return {"version": catalog_timm.TIMM_VERSION, "archs": catalog_timm.ARCHS}


def matches(name: str, family: str, pattern: str | None) -> bool:
    """``--list-archs PATTERN``: a glob (``vit_*``) or a substring of the name or family."""
    if not pattern:
        return True
    pattern = pattern.lower()
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatch(name.lower(), pattern) or fnmatch.fnmatch(family.lower(), pattern)
    return pattern in name.lower() or pattern == family.lower()


def arch_help() -> str:
    """The --arch help text, from the table."""
    scratch = ", ".join(a["name"] for a in scratch_archs())
    tv = torchvision_archs()
    fams = ", ".join(families())
    return (f"Architecture (--list-archs [PATTERN] shows them): {scratch} (trained from scratch); any of the "
            f"{len(tv)} torchvision classification models by name (families: {fams}), e.g. mobilenet_v2, "
            f"resnet50, convnext_tiny, efficientnet_v2_s, vit_b_16, swin_t; or timm/NAME for any timm model "
            f"(pip install 'imgcls[timm]').")


# -- generating (needs torchvision; timm optional) -------------------------------------------

def _weights_rows(arch: str) -> tuple[list[dict[str, Any]], str | None]:
    import os
    from urllib.parse import urlparse

    import torchvision

    try:
        enum = torchvision.models.get_model_weights(arch)
    except (ValueError, KeyError):
        return [], None
    rows = []
    for w in enum:
        t = w.transforms()
        metrics = w.meta.get("_metrics", {}).get("ImageNet-1K", {})
        acc = metrics.get("acc@1")
        rows.append({
            "name": w.name,
            "size": int(t.crop_size[0]),
            "mean": [float(v) for v in t.mean],
            "std": [float(v) for v in t.std],
            "acc1": float(acc) if isinstance(acc, (int, float)) and acc == acc else None,
            "gflops": float(w.meta["_ops"]) if isinstance(w.meta.get("_ops"), (int, float)) else None,
            "file": os.path.basename(urlparse(w.url).path),
        })
    return rows, enum.DEFAULT.name


def _structure(arch: str, size: int) -> dict[str, Any]:
    """Backbone parameters, feature size and blocks, from a model built without initialising (meta device) where possible."""
    import torch

    from imgcls.models.torchvision_models import build_backbone

    try:
        with torch.device("meta"):
            net, dim, _, blocks, _ = build_backbone(arch, size)
    except (NotImplementedError, RuntimeError):  # RegNet computes its widths with real tensors
        net, dim, _, blocks, _ = build_backbone(arch, size)
    return {"params": sum(p.numel() for p in net.parameters()), "feature_dim": int(dim), "blocks": len(blocks)}


def torchvision_entry(arch: str, structure: bool = True) -> dict[str, Any]:
    """One row of the table for a torchvision model, from torchvision itself."""
    from imgcls.models.torchvision_models import FAMILIES, GENERIC, family_of, min_size

    family_name = family_of(arch)
    family = FAMILIES.get(family_name, GENERIC)
    weights, default = _weights_rows(arch)
    default_row = next((w for w in weights if w["name"] == default), None)
    size = default_row["size"] if default_row else 224
    stats = [f"{NOTES[arch]} (torchvision {family_name})" if arch in NOTES else f"torchvision {family_name}"]
    if default_row and default_row["acc1"] is not None:
        stats.append(f"ImageNet top-1 {default_row['acc1']:.1f} % ({default})")
    if default_row and default_row["gflops"] is not None:
        stats.append(f"{default_row['gflops']:.2f} GFLOPs at {size} px")
    row: dict[str, Any] = {
        "name": arch, "family": family_name,
        "description": "; ".join(stats),
        "default_size": size,
        "min_size": min_size(arch, family),
        "fixed_size": family.fixed_size,
        "default_weights": default,
        "weights": weights,
    }
    if structure:
        row.update(_structure(arch, size))
    return row


def generate_torchvision(structure: bool = True) -> list[dict[str, Any]]:
    import torchvision

    return [torchvision_entry(a, structure) for a in sorted(torchvision.models.list_models(module=torchvision.models))]


def generate_scratch() -> list[dict[str, Any]]:
    from imgcls.models import registry

    registry._load_builtin()
    rows = []
    for spec in (registry.get_spec(n) for n in registry.list_models()):
        if spec.source != "scratch":
            continue
        model = registry.get_model(spec.name, num_classes=10, in_channels=3)  # the default options, RGB input
        rows.append({"name": spec.name, "family": "scratch", "description": spec.description,
                     "options": list(spec.options), "params": sum(p.numel() for p in model.backbone.parameters()),
                     "feature_dim": int(model.feature_dim), "blocks": len(model.blocks)})
    return rows


def generate_timm() -> dict[str, Any] | None:
    try:
        import timm
    except ImportError:
        return None
    archs: dict[str, list] = {}
    for name in timm.list_pretrained():
        arch, _, tag = name.partition(".")
        cfg = timm.get_pretrained_cfg(name)
        size = int(cfg.input_size[-1]) if cfg is not None and cfg.input_size else 224
        row = archs.setdefault(arch, [size, []])
        row[1].append(tag)
    return {"version": timm.__version__, "archs": archs}


def render_data(scratch: list, tv: list) -> str:
    import pprint

    import torchvision

    return ("# Generated by `python -m imgcls.models.catalog --write` from the installed torchvision: do not edit.\n"
            '"""The architecture table (see imgcls.models.catalog)."""\n\n'
            f"TORCHVISION_VERSION = {torchvision.__version__!r}\n\n"
            f"SCRATCH = {pprint.pformat(scratch, width=118, sort_dicts=False)}\n\n"
            f"TORCHVISION = {pprint.pformat(tv, width=118, sort_dicts=False)}\n")


def render_timm(table: dict[str, Any]) -> str:
    import pprint

    return ("# Generated by `python -m imgcls.models.catalog --write` from the installed timm: do not edit.\n"
            '"""timm\'s pretrained models: {architecture: [default input size, [pretrained tags]]}."""\n\n'
            f"TIMM_VERSION = {table['version']!r}\n\n"
            f"ARCHS = {pprint.pformat(table['archs'], width=118, compact=True)}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imgcls.models.catalog", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="regenerate catalog_data.py (and catalog_timm.py)")
    action.add_argument("--check", action="store_true", help="exit 1 when the generated files are stale")
    args = parser.parse_args(argv)
    files = {DATA_FILE: render_data(generate_scratch(), generate_torchvision())}
    timm = generate_timm()
    if timm is not None:
        files[TIMM_FILE] = render_timm(timm)
    stale = [p for p, text in files.items() if not p.exists() or p.read_text(encoding="utf-8") != text]
    if args.check:
        for p in stale:
            print(f"{p}: stale; run python -m imgcls.models.catalog --write", file=sys.stderr)
        return 1 if stale else 0
    for p in stale:
        p.write_text(files[p], encoding="utf-8")
        print(f"wrote {p}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
