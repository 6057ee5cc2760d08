"""Shared fixtures: tiny images generated in tmp_path, and a CLI runner."""

from __future__ import annotations

import json
import os

# Tiny test models gain nothing from several threads, and on a shared 2-core machine
# PyTorch's OpenMP threads can spin for a core another process holds (many times slower).
# Set before torch is imported; subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

CLASS_COLOURS = {"circle": (220, 40, 40), "square": (40, 200, 40), "stripe": (40, 40, 220)}


def make_image(path: Path, kind: str = "circle", size: int = 16, seed: int = 0, mode: str = "RGB") -> Path:
    """A small image whose class is learnable from its shape and colour, with per-seed noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    c = size / 2 + rng.uniform(-1, 1, 2)
    if kind == "circle":
        mask = (yy - c[0]) ** 2 + (xx - c[1]) ** 2 < (size / 3) ** 2
    elif kind == "square":
        mask = (abs(yy - c[0]) < size / 4) & (abs(xx - c[1]) < size / 4)
    else:
        mask = (xx // max(1, size // 8)) % 2 == 0
    colour = np.array(CLASS_COLOURS.get(kind, (128, 128, 128)), dtype=float)
    img = np.where(mask[..., None], colour, 255 - colour / 2) + rng.normal(0, 8, (size, size, 3))
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    if mode != "RGB":
        pil = pil.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    pil.save(path)
    return path


def make_class_folder(root: Path, per_class: int = 12, size: int = 16, classes=tuple(CLASS_COLOURS), mode: str = "RGB") -> Path:
    for ci, kind in enumerate(classes):
        for i in range(per_class):
            make_image(root / kind / f"{kind}_{i:03d}.png", kind, size=size, seed=ci * 1000 + i, mode=mode)
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """SRC/<class>/*.png: 3 classes x 12 images of 16x16 RGB."""
    return make_class_folder(tmp_path / "shapes")


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def invoke(runner):
    """Run the imgcls CLI in-process: invoke(["prepare", ...], input=...) -> click Result."""
    from imgcls.cli import cli

    def run(args, input=None, env=None):
        return runner.invoke(cli, [str(a) for a in args], input=input, env=env, catch_exceptions=False)

    return run


def read_jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Tests never read or fill the user's real decoded-image cache."""
    monkeypatch.setenv("IMGCLS_CACHE", str(tmp_path_factory.mktemp("imgcls-cache")))
