"""``imgcls audit``: the data's problems, found before a model learns them.

Four checks over one manifest, all from one embedding of every image (a frozen
backbone's features, or a trained imgcls model's) plus grey thumbnails:

* **label errors** (:mod:`imgcls.audit.labels`): out-of-fold predicted probabilities of a
  logistic-regression probe on the features (K folds over train+val; test records scored
  by a probe fit on all of train+val), scored by confident learning (cleanlab's
  ``find_label_issues``), with the suggested label and cleanlab's label-quality score;
* **near-duplicates** (:mod:`imgcls.audit.duplicates`): candidate pairs from thumbnail and
  embedding neighbours, each verified by registering one image onto the other (scale, shift)
  and measuring the grey difference left; copies that straddle train/val/test (leakage) come first;
* **outliers** and **ambiguous** images (:mod:`imgcls.audit.outliers`): far from every
  neighbour in embedding space, or split between two labels.

Findings go onto the records as an ``"audit"`` object (absent on clean records), so
``jq -c 'select(.audit == null)'`` keeps the clean part, header included. Every default
lives in :class:`AuditConfig`; how each was chosen: docs/design/audit.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CHECKS = ("labels", "duplicates", "outliers", "ambiguous")
FINDINGS = ("label", "duplicate", "outlier", "ambiguous")  # the names in a record's audit.issues


@dataclass
class AuditConfig:
    """Everything that decides an audit's findings (the CLI takes its defaults from here)."""

    # where the embedding comes from
    arch: str = "mobilenet_v2"
    weights: str | None = None  # --weights FILE
    weights_name: str | None = None  # --weights-name (torchvision weights enum name)
    pretrained: bool | None = None  # None: yes for torchvision backbones (as train)
    model: str | None = None  # --model FILE: a trained imgcls model's features instead
    model_probs: bool = False  # --model-probs: that model's own probabilities instead of the K-fold probe
    image_size: int = 0  # 0: the architecture's default (scratch: from the data)
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    # label errors
    folds: int = 5
    probe_c: float = 1.0  # inverse L2 strength of the logistic-regression probe
    max_label_score: float = 0.05  # flag only issues whose label-quality score is below this
    # near-duplicates
    duplicate_residual: float = 0.02  # RMS grey difference (0-1) left after registering a candidate pair, at most
    duplicate_candidates: int = 10  # candidate partners per image from the thumbnails (plus --neighbours by features)
    # outliers and ambiguous images
    neighbours: int = 10
    outlier_iqr: float = 1.7  # mean distance to the k nearest > Q3 + this x IQR (cleanlab Datalab's fence)
    ambiguous_margin: float = 0.1  # top two probabilities closer than this ...
    ambiguous_mass: float = 0.9  # ... and together at least this
    checks: tuple[str, ...] = CHECKS
    seed: int = 0
    # how to run
    batch_size: int = 64
    device: str = "auto"
    amp: bool = True
    cache: bool = True
    cache_dir: str | None = None
