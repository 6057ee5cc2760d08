"""Model files and manifests for the eval and predict tests, made directly (no imgcls train)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from imgcls.models import get_model
from imgcls.models.io import ModelInfo, save_model
from imgcls.models.preprocess import load_uint8, normalize

CLASSES = ["circle", "square", "stripe"]
MEAN = {1: [0.5], 3: [0.5, 0.5, 0.5]}
STD = {1: [0.25], 3: [0.25, 0.25, 0.25]}


def tiny_model(classes=CLASSES, channels: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    return get_model("cnn", num_classes=len(classes), in_channels=channels, dropout=0.0, width=4, depth=2,
                     block_dropout=0.0)


def info_for(classes=CLASSES, size: int = 16, channels: int = 3) -> ModelInfo:
    return ModelInfo(arch="cnn", classes=list(classes), image_size=size, channels=channels, mean=MEAN[channels],
                     std=STD[channels], arch_options={"width": 4, "depth": 2, "block_dropout": 0.0}, dropout=0.0)


def save_constant_model(path: Path, winner: int, classes=CLASSES, size: int = 16, channels: int = 3) -> Path:
    """A model that predicts class ``winner`` for every image (p = e^3 / (e^3 + C - 1))."""
    model = tiny_model(classes, channels)
    linear = model.head[1]
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.zero_()
        linear.bias[winner] = 3.0
    save_model(path, model, info_for(classes, size, channels))
    return path


def save_trained_model(path: Path, images: list[Path], labels: list[str], classes=CLASSES, size: int = 16,
                       channels: int = 3, max_steps: int = 400) -> Path:
    """Fit a tiny CNN on a few easy images until it classifies all of them right (in eval mode)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 4-channel CNN gains nothing from threads, and a shared CPU punishes them
    try:
        return _fit(path, images, labels, classes, size, channels, max_steps)
    finally:
        torch.set_num_threads(threads)


def _fit(path, images, labels, classes, size, channels, max_steps) -> Path:
    info = info_for(classes, size, channels)
    model = tiny_model(classes, channels)
    x = normalize(torch.from_numpy(np.stack([load_uint8(p, size, channels) for p in images])), info.mean, info.std)
    y = torch.tensor([classes.index(label) for label in labels])
    optimiser = torch.optim.Adam(model.parameters(), lr=0.03)
    for step in range(max_steps):
        model.train()
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimiser.step()
        if step % 20 == 19:
            model.eval()
            with torch.no_grad():
                if (model(x).argmax(1) == y).all():
                    break
    model.eval()
    with torch.no_grad():
        assert (model(x).argmax(1) == y).all(), "the tiny test model did not fit its images"
    save_model(path, model, info)
    return path


def write_manifest_file(path: Path, records: list[dict], classes=CLASSES, **header) -> Path:
    lines = [json.dumps({"format": "imgcls-manifest", "version": "1.0", "classes": list(classes), **header})]
    lines += [json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n")
    return path


# --- a small JSON Schema checker (jsonschema is not a dependency) ----------------------------------------
_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def schema_errors(value, schema: dict, root: dict | None = None, where: str = "$") -> list[str]:
    """The subset of JSON Schema the eval schema uses: $ref, type, const, enum, properties, required,
    additionalProperties, items, minimum. Returns messages naming the JSON path at fault."""
    root = root or schema
    if "$ref" in schema:
        target = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target[part]
        return schema_errors(value, target, root, where)
    errors = []
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        if not any(_TYPES[t](value) for t in types):
            return [f"{where}: {value!r} is not of type {types}"]
    if "const" in schema and value != schema["const"]:
        errors.append(f"{where}: {value!r} != {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} not in {schema['enum']}")
    if "minimum" in schema and isinstance(value, (int, float)) and value < schema["minimum"]:
        errors.append(f"{where}: {value} < {schema['minimum']}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{where}: missing required key {key!r}")
        for key, item in value.items():
            if key in props:
                errors += schema_errors(item, props[key], root, f"{where}.{key}")
            else:
                extra = schema.get("additionalProperties", True)
                if extra is False:
                    errors.append(f"{where}: key {key!r} is not in the schema")
                elif isinstance(extra, dict):
                    errors += schema_errors(item, extra, root, f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += schema_errors(item, schema["items"], root, f"{where}[{i}]")
    return errors


# --- reading the HTML report back (html.parser, as a browser would tokenise it) ---------------------------
class PageParser:
    """Every start tag with its attributes, the text inside each table cell, and the tables by id."""

    def __init__(self, text: str):
        from html.parser import HTMLParser

        self.tags: list[tuple[str, dict]] = []
        self.tables: dict[str, list[list[tuple[str, dict]]]] = {}  # id -> rows of (cell text, cell attrs)
        self.scripts: list[tuple[dict, str]] = []
        page = self

        class _Parser(HTMLParser):
            def __init__(self):
                super().__init__(convert_charrefs=True)
                self.table_ids: list[str | None] = []
                self.cell: list | None = None
                self.script: list | None = None
                self.texts: list[str] = []

            def handle_starttag(self, tag, attrs):
                attrs = dict(attrs)
                page.tags.append((tag, attrs))
                if tag == "table":
                    self.table_ids.append(attrs.get("id"))
                    if attrs.get("id"):
                        page.tables[attrs["id"]] = []
                elif tag == "tr" and self.table_ids and self.table_ids[-1]:
                    page.tables[self.table_ids[-1]].append([])
                elif tag in ("td", "th") and self.table_ids and self.table_ids[-1]:
                    self.cell = [[], attrs]
                elif tag == "script":
                    self.script = [attrs, []]

            def handle_endtag(self, tag):
                if tag == "table" and self.table_ids:
                    self.table_ids.pop()
                elif tag in ("td", "th") and self.cell is not None and self.table_ids and self.table_ids[-1]:
                    page.tables[self.table_ids[-1]][-1].append(("".join(self.cell[0]).strip(), self.cell[1]))
                    self.cell = None
                elif tag == "script" and self.script is not None:
                    page.scripts.append((self.script[0], "".join(self.script[1])))
                    self.script = None

            def handle_data(self, data):
                self.texts.append(data)
                if self.cell is not None:
                    self.cell[0].append(data)
                if self.script is not None:
                    self.script[1].append(data)

        parser = _Parser()
        parser.feed(text)
        parser.close()
        self.text = "".join(parser.texts)

    def document(self) -> dict:
        """The eval document embedded in the page."""
        [(_, data)] = [(a, s) for a, s in self.scripts if a.get("id") == "imgcls-eval-data"]
        return json.loads(data)

    def rows(self, table_id: str, header: bool = False) -> list[list[tuple[str, dict]]]:
        rows = self.tables[table_id]
        return rows if header else rows[1:]
