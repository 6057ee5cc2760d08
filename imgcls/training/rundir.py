"""The run folder: model.safetensors, checkpoint.safetensors, history.jsonl, learning_curves.png,
manifest.jsonl (the exact data the run used) and a ``latest`` link beside it.

Every file is written atomically, so an interrupted or failed run never leaves a
half-written file, and the folder is usable (best model so far) after every epoch.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from imgcls.errors import OutputNotEmpty, UsageProblem
from imgcls.training._console import detail, info, warn

DEFAULT_RUNS = Path("runs")
LATEST = "latest"


class RunDir:
    def __init__(self, path: Path):
        self.path = path

    # -- files ----------------------------------------------------------------------
    @property
    def model_path(self) -> Path:
        return self.path / "model.safetensors"

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint.safetensors"

    @property
    def history_path(self) -> Path:
        return self.path / "history.jsonl"

    @property
    def plot_path(self) -> Path:
        return self.path / "learning_curves.png"

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.jsonl"

    # -- creation -------------------------------------------------------------------
    @staticmethod
    def check_new(out: str | os.PathLike) -> None:
        """Refuse an ``--out`` that cannot become this run's folder: before any data is read or decoded.

        A folder left by a run that never got a model (stopped or killed in its first
        epoch: only its manifest copy, history and temporary files) is taken over.
        """
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise UsageProblem(f"--out {path}: exists and is not a folder")
        if path.is_dir():
            try:
                names = [e.name for e in os.scandir(path)]
            except OSError as exc:
                raise UsageProblem(f"--out {path}: cannot read folder: {exc.strerror or exc}") from None
            if names and not abandoned_run(path):
                if "checkpoint.safetensors" in names or "model.safetensors" in names:
                    raise OutputNotEmpty(f"--out {path}: holds a run; continue it with --resume {path}, or "
                                         f"choose a new folder")
                raise OutputNotEmpty(f"--out {path}: folder is not empty; choose a new one (or continue a run with "
                                     f"--resume)")
        else:
            existing = path.parent
            while not existing.exists() and existing.parent != existing:
                existing = existing.parent
            if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
                raise UsageProblem(f"--out {path}: cannot create the folder in {existing}")

    @classmethod
    def create(cls, out: str | os.PathLike | None, name: str) -> RunDir:
        """A new folder: ``out`` as given (must not hold a run yet) or ``runs/<time>-<name>``."""
        if out is not None:
            path = Path(out)
            cls.check_new(path)
            if path.is_dir() and any(path.iterdir()):  # abandoned: only what a run that never got a model leaves
                cls(path).remove_if_unused()
                from imgcls.fsutil import sweep_stale_temps

                sweep_stale_temps(path)
                info(f"--out {path}: reusing the folder of a run that stopped before its first epoch ended")
            path.mkdir(parents=True, exist_ok=True)
            _hold(path)
            return cls(path)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        DEFAULT_RUNS.mkdir(parents=True, exist_ok=True)
        for i in range(1, 1000):
            path = DEFAULT_RUNS / (f"{stamp}-{name}" if i == 1 else f"{stamp}-{name}-{i}")
            try:
                path.mkdir()
                _hold(path)
                return cls(path)
            except FileExistsError:
                continue
        raise UsageProblem(f"cannot create a run folder in {DEFAULT_RUNS}")  # pragma: no cover

    def remove_if_unused(self) -> None:
        """Remove a run folder that never got a model (failed or interrupted in its first epoch)."""
        if self.model_path.exists():
            return
        for name in ("manifest.jsonl", "history.jsonl", "learning_curves.png", "checkpoint.safetensors"):
            p = self.path / name
            if p.exists():
                p.unlink()
        fd = _HELD.pop(str(self.path.resolve()), None)
        if fd is not None:
            os.close(fd)
        try:
            self.path.rmdir()
        except OSError:
            pass

    # -- writing --------------------------------------------------------------------
    def write_history(self, history: list[dict[str, Any]]) -> None:
        from imgcls.fsutil import write_text_atomic

        from imgcls.manifest import _finite

        # standard JSON only: a diverged epoch's NaN loss is written as null
        write_text_atomic(self.history_path, "".join(json.dumps(_finite(h), allow_nan=False) + "\n" for h in history))

    def write_plot(self, history: list[dict[str, Any]]) -> bool:
        """learning_curves.png when matplotlib is installed (optional dependency)."""
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError:
            return False
        from imgcls.fsutil import atomic_path

        fig = Figure(figsize=(9, 3.6), dpi=100)
        FigureCanvasAgg(fig)
        ax_loss, ax_acc = fig.subplots(1, 2)
        epochs = [h["epoch"] for h in history]
        for key, ax, label in (("loss", ax_loss, "loss"), ("acc", ax_acc, "accuracy")):
            ax.plot(epochs, [h.get(f"train_{key}") for h in history], marker=".", label=f"train {label}")
            ax.plot(epochs, [h.get(f"val_{key}") for h in history], marker=".", label=f"val {label}")
            ax.set_xlabel("epoch")
            ax.set_title(label)
            ax.grid(alpha=0.3)
        phases = [h.get("phase") for h in history]
        for i in range(1, len(phases)):
            if phases[i] != phases[i - 1]:
                for ax in (ax_loss, ax_acc):
                    ax.axvline(epochs[i] - 0.5, color="grey", linestyle="--", linewidth=1)
                    ax.text(epochs[i] - 0.4, ax.get_ylim()[1], phases[i], va="top", fontsize=8, color="grey")
        best = [h["epoch"] for h in history if h.get("best")]
        if best:
            for ax in (ax_loss, ax_acc):
                ax.axvline(best[-1], color="green", alpha=0.3, linewidth=4)
        ax_loss.legend(fontsize=8)
        ax_acc.legend(fontsize=8)
        fig.tight_layout()
        with atomic_path(self.plot_path) as tmp:
            fig.savefig(tmp, format="png")
        return True

    def update_latest(self) -> None:
        """Point ``<parent>/latest`` at this run (a symlink; a one-line text file where links fail)."""
        link = self.path.parent / LATEST
        if link.exists() and link.is_dir() and not link.is_symlink():
            warn(f"{link} is a real folder: not replacing it with a link to the newest run")
            return
        tmp = self.path.parent / f".{LATEST}.{os.getpid()}.tmp"
        try:
            if tmp.is_symlink() or tmp.exists():
                tmp.unlink()
            os.symlink(self.path.name, tmp, target_is_directory=True)
            os.replace(tmp, link)
        except OSError:
            if tmp.is_symlink() or tmp.exists():
                tmp.unlink()
            try:
                from imgcls.fsutil import write_text_atomic

                write_text_atomic(link, str(self.path.resolve()) + "\n")
            except OSError as exc:
                detail(f"cannot update {link}: {exc}")


RUN_FILES_WITHOUT_MODEL = frozenset({"manifest.jsonl", "history.jsonl", "learning_curves.png"})
_HELD: dict[str, int] = {}


def _hold(path: Path) -> None:
    """A shared lock on the run folder for this process's life: another run can tell it is in use."""
    try:
        import fcntl

        fd = os.open(path, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        _HELD[str(path.resolve())] = fd
    except (OSError, ImportError):
        pass


def _in_use(path: Path) -> bool:
    """Whether another live process holds the run folder (see :func:`_hold`)."""
    if str(path.resolve()) in _HELD:  # this process: its run in the folder is over (one run per process)
        return False
    try:
        import fcntl

        fd = os.open(path, os.O_RDONLY)
    except (OSError, ImportError):
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing drops the probe's lock
    return False


def abandoned_run(path: Path) -> bool:
    """A run folder that never got a model or checkpoint: its own files and dead processes' temporary files only."""
    from imgcls.fsutil import TEMP_PATTERN, pid_alive

    try:
        names = [e.name for e in os.scandir(path)]
    except OSError:
        return False
    if "manifest.jsonl" not in names or _in_use(path):
        return False
    for name in names:
        if name in RUN_FILES_WITHOUT_MODEL:
            continue
        match = TEMP_PATTERN.match(name)
        if match and not pid_alive(int(match["pid"])):
            continue
        return False
    return True


def resolve_run(path: str | os.PathLike) -> Path:
    """A run folder from RUN, ``runs/latest`` (link or text file) or RUN/model.safetensors."""
    p = Path(path)
    if p.is_file() and p.name == LATEST and p.stat().st_size < 4096:
        target = Path(p.read_text(encoding="utf-8").strip())
        if target.is_dir():
            return target
    if p.is_file() and p.suffix == ".safetensors":
        return p.parent
    return p
