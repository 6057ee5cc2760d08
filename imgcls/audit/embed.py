"""One feature vector per image: a frozen backbone's (as ``train --freeze`` computes them), or a trained model's.

Features go through the same on-disk cache as ``train --freeze``
(:class:`imgcls.training.features.FeatureStore`, keyed by the backbone's weights, the
preprocessing and the files as they are now), so auditing after training on the same
images with the same backbone, or auditing twice, skips the backbone pass.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgcls.errors import UsageProblem
from imgcls.manifest import Record, resolve_path
from imgcls.training._console import detail, info, warn


@dataclass
class Embedding:
    features: np.ndarray  # (N, D) float32, in record order
    probs: np.ndarray | None  # (N, classes) of a given model (--model), else None
    model_classes: list[str] | None
    description: str  # for the summary: which backbone, size, weights
    settings: dict[str, Any]  # for the JSON document
    seconds: float
    cached: bool
    model_manifest_hash: str | None = None


def _backbone(cfg: Any, records: Sequence[Record], root: Path, n_classes: int):
    """(model, TrainConfig with resolved geometry and normalisation, weights description)."""
    from imgcls.models.registry import get_model, get_spec
    from imgcls.models.weights import load_backbone_state, resolve_pretrained
    from imgcls.training.config import TrainConfig
    from imgcls.training.run import resolve_geometry, resolve_normalisation

    spec = get_spec(cfg.arch)
    if cfg.pretrained and not spec.pretrainable and not cfg.weights:
        raise UsageProblem(f"{cfg.arch} has no pretrained weights: pass --weights FILE, a torchvision backbone "
                           f"(--arch mobilenet_v2), or --model FILE (a trained imgcls model)")
    use_torchvision = spec.pretrainable and cfg.weights is None and cfg.pretrained is not False
    tcfg = TrainConfig(arch=cfg.arch, image_size=cfg.image_size, channels=0)
    image_size, channels = resolve_geometry(tcfg, spec, list(records), root)
    pre = resolve_pretrained(cfg.arch, pretrained=use_torchvision, weights_file=cfg.weights, progress=False,
                             weights_name=cfg.weights_name)
    if pre is None:
        warn(f"{cfg.arch} without pretrained weights: the audit runs on a randomly initialised backbone; its "
             f"findings mean little (pass --weights FILE, or --model FILE for a trained imgcls model)")
    mean, std = resolve_normalisation(cfg.mean, cfg.std, pre, channels)
    torch.manual_seed(cfg.seed)
    model = get_model(cfg.arch, num_classes=max(2, n_classes), in_channels=channels, dropout=0.0, pretrained=False,
                      weights=pre if (pre is not None and spec.pretrainable) else None)
    if pre is not None and not spec.pretrainable:
        load_backbone_state(model.backbone, pre.state_dict, (), cfg.arch, pre.source)
    tcfg = replace(tcfg, image_size=image_size, channels=channels, mean=mean, std=std)
    return model, tcfg, (pre.source if pre is not None else "random initialisation")


def embed(cfg: Any, records: Sequence[Record], root: Path, classes: Sequence[str]) -> Embedding:
    """Features (and, with --model, that model's probabilities) of every record's image, in order."""
    from imgcls.cache import resolve_cache_dir
    from imgcls.training.config import TrainConfig
    from imgcls.training.features import FeatureStore, extraction_batch_size
    from imgcls.devices import resolve_device
    from imgcls.training.loop import Precision

    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    model_classes = None
    mhash = None
    if cfg.model:
        from imgcls.models.io import load_model, resolve_model_path

        path = resolve_model_path(cfg.model)
        model, minfo = load_model(path, "cpu")
        tcfg = TrainConfig(arch=minfo.arch, arch_options=dict(minfo.arch_options), image_size=minfo.image_size,
                           channels=minfo.channels, mean=list(minfo.mean), std=list(minfo.std))
        source = f"{path} ({minfo.arch}, trained by imgcls)"
        model_classes = list(minfo.classes)
        mhash = minfo.manifest_hash or None
    else:
        model, tcfg, source = _backbone(cfg, records, root, len(classes))
    precision = Precision(device, cfg.amp)
    cache_dir = resolve_cache_dir(cfg.cache_dir, enabled=cfg.cache)
    store = FeatureStore(model, tcfg, device, precision.label, cache_dir, channels_last=False)
    model.to(device).eval()
    paths = [resolve_path(r, root) for r in records]
    key = store.key(paths, [r.get("sha256") for r in records], None) if store.enabled else None
    feats = store.lookup(key) if key is not None else None
    cached = feats is not None
    if feats is None:
        feats = _extract(model, tcfg, paths, device, precision,
                         extraction_batch_size(device, tcfg.image_size, cfg.batch_size), cache_dir)
        if key is not None:
            store.store(key, feats)
    probs = None
    if cfg.model:
        with torch.no_grad():
            probs = torch.softmax(model.head(feats.to(device)).float(), dim=1).cpu().numpy()
    features = feats.float().cpu().numpy()
    seconds = time.perf_counter() - t0
    description = f"{source}, {tcfg.image_size} px, {tcfg.channels} channel(s)"
    info(f"features: {len(records)} images through {description}: "
         + ("read from the feature cache" if cached else f"computed in {seconds:.1f}s on {device.type}")
         + (" (cached for later runs)" if store.enabled and not cached else ""))
    settings = {"arch": tcfg.arch, "weights": source, "image_size": tcfg.image_size, "channels": tcfg.channels,
                "mean": tcfg.mean, "std": tcfg.std, "feature_dim": int(features.shape[1]) if features.ndim == 2 else 0}
    return Embedding(features=features, probs=probs, model_classes=model_classes, description=description,
                     settings=settings, seconds=seconds, cached=cached, model_manifest_hash=mhash)


def _extract(model: Any, tcfg: Any, paths: list[Path], device: torch.device, precision: Any, batch: int,
             cache_dir: Path | None) -> torch.Tensor:
    from imgcls.training.data import Feeder, ImageSet, extract_features

    t1 = time.perf_counter()
    labels = torch.zeros(len(paths), dtype=torch.long)
    dataset = ImageSet(paths, labels, tcfg.image_size, tcfg.channels)
    from imgcls.training.data import PRELOAD_LIMIT_BYTES, preload_images

    if len(paths) * tcfg.image_size ** 2 * tcfg.channels <= PRELOAD_LIMIT_BYTES:
        dataset.images = preload_images(paths, tcfg.image_size, tcfg.channels, cache_dir=cache_dir)
    detail(f"images decoded in {time.perf_counter() - t1:.1f}s; backbone batches of {batch}")
    feeder = Feeder(dataset, batch, device, tcfg.mean, tcfg.std, None, 0, False)
    return extract_features(model, feeder, precision.autocast)
