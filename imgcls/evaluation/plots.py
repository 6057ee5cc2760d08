"""``imgcls eval --report DIR``: pictures people would rather look at than read.

matplotlib draws the confusion matrix heatmap, the learning curves (from the run's
``history.jsonl``) and the reliability diagram; it is optional (the ``plots`` extra),
so it is drawn through the object-oriented API (no pyplot, no global state, no GUI
backend). The contact sheet of the worst errors is made with Pillow alone and works
without matplotlib.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imgcls.errors import ImgclsError
from imgcls.fsutil import atomic_path

PLOTS_HINT = "pip install 'imgcls[plots]' (matplotlib)"


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def confusion_heatmap(report: dict[str, Any], path: Path) -> Path:
    """Row-normalised colours with counts written in the cells (counts omitted above 30 classes)."""
    import numpy as np

    cm = report["confusion_matrix"]
    classes = cm["classes"]
    rates = np.asarray(cm["normalized"], dtype=float)
    counts = np.asarray(cm["counts"], dtype=int)
    n = len(classes)
    side = min(24.0, max(4.0, 0.45 * n + 2.5))
    fig = _figure(side + 1.0, side)
    ax = fig.add_subplot()
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    ax.set_xticks(range(n), classes, rotation=90 if n > 6 else 0, fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{report['model']['name']}: confusion matrix (accuracy {report['metrics']['accuracy']:.3f})")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")
    return _save(fig, path)


def read_history(path: Path) -> list[dict[str, Any]]:
    """history.jsonl rows (one per epoch); damaged lines are skipped with a warning, not fatal."""
    from imgcls.console import warn
    from imgcls.metadata import read_history as read_validated

    return read_validated(path, warn)


def learning_curves(history: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Loss and accuracy per epoch, train against val."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure(10, 4)
    ax_loss, ax_acc = fig.subplots(1, 2)
    epochs = [h["epoch"] for h in history]
    for ax, key, label in ((ax_loss, "loss", "loss"), (ax_acc, "acc", "accuracy")):
        for split, style in (("train", "-o"), ("val", "-s")):
            values = [h.get(f"{split}_{key}") for h in history]
            points = [(e, v) for e, v in zip(epochs, values) if isinstance(v, (int, float))]
            if points:
                ax.plot(*zip(*points), style, markersize=3, label=split)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.suptitle(f"{title}: learning curves")
    return _save(fig, path)


def reliability_diagram(report: dict[str, Any], path: Path) -> Path:
    """Accuracy against confidence per bin, the diagonal being perfect calibration."""
    cal = report["calibration"]
    bins = cal["bins"]
    fig = _figure(5, 5)
    ax = fig.add_subplot()
    width = bins[0]["upper"] - bins[0]["lower"]
    centres = [b["lower"] + width / 2 for b in bins]
    acc = [b["accuracy"] or 0.0 for b in bins]
    ax.bar(centres, acc, width=width * 0.95, color="tab:blue", alpha=0.8, label="accuracy")
    gap = [(b["confidence"] or 0.0) - (b["accuracy"] or 0.0) if b["count"] else 0.0 for b in bins]
    ax.bar(centres, gap, bottom=acc, width=width * 0.95, color="tab:red", alpha=0.3, label="gap to confidence")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{report['model']['name']}: ECE {cal['ece']:.3f} ({cal['n_bins']} bins)")
    ax.legend(loc="upper left")
    return _save(fig, path)


def contact_sheet(report: dict[str, Any], path: Path, thumb: int = 128, columns: int = 5) -> Path | None:
    """The most confident mistakes as thumbnails captioned true -> pred (p); Pillow only."""
    mistakes = report["errors"]["most_confident"]
    if not mistakes:
        return None
    items = [(e["path"], f"{e['true'][:14]} ->", f"{e['pred'][:12]} {e['prob']:.2f}") for e in mistakes]
    return captioned_sheet(items, path, thumb=thumb, columns=columns)


def captioned_sheet(items: list[tuple[str, str, str]], path: Path, thumb: int = 128, columns: int = 5) -> Path:
    """Thumbnails of (image path, black caption line, red caption line) in a grid, as a PNG; Pillow only.

    Shared by eval's worst errors and audit's suspects. An unreadable image leaves a grey frame.
    """
    from PIL import Image, ImageDraw

    from imgcls.images import ImageRejected, open_image, to_mode

    caption = 30
    rows = max(1, (len(items) + columns - 1) // columns)
    sheet = Image.new("RGB", (columns * thumb, rows * (thumb + caption)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (image_path, first, second) in enumerate(items):
        x, y = (k % columns) * thumb, (k // columns) * (thumb + caption)
        try:
            img = to_mode(open_image(image_path), 3)
            inner = thumb - 8  # a white gap between neighbours
            scale = min(inner / img.width, inner / img.height)
            size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
            # small images are blown up with visible pixels rather than blurred
            img = img.resize(size, Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS)
            sheet.paste(img, (x + (thumb - img.width) // 2, y + (thumb - img.height) // 2))
        except ImageRejected:
            draw.rectangle([x + 2, y + 2, x + thumb - 3, y + thumb - 3], outline="grey")
        draw.text((x + 3, y + thumb + 2), first, fill="black")
        draw.text((x + 3, y + thumb + 15), second, fill="red")
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path


def write_report(report: dict[str, Any], model_path: Path, folder: Path) -> tuple[list[Path], list[str]]:
    """Write every picture that can be made; returns (written files, notes on skipped ones)."""
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    notes: list[str] = []
    sheet = contact_sheet(report, folder / "worst_errors.png")
    if sheet:
        written.append(sheet)
    else:
        notes.append("no mistakes, so no worst_errors.png")
    if not have_matplotlib():
        raise MissingPlots(written, folder)
    written.append(confusion_heatmap(report, folder / "confusion_matrix.png"))
    written.append(reliability_diagram(report, folder / "reliability.png"))
    history = model_path.resolve().parent / "history.jsonl"
    rows = read_history(history) if history.is_file() else []
    if rows:
        written.append(learning_curves(rows, folder / "learning_curves.png", report["model"]["name"]))
    else:
        notes.append(f"no {history} (or it is empty): learning curves skipped")
    return written, notes


class MissingPlots(ImgclsError):
    """matplotlib is missing: the contact sheet was written, the charts were not."""

    def __init__(self, written: list[Path], folder: Path):
        done = f"wrote only {', '.join(p.name for p in written)} to {folder}; " if written else ""
        super().__init__(f"--report needs matplotlib for its charts: {done}install it with {PLOTS_HINT}")
        self.written = written
