"""Per-epoch progress on stderr: a rich bar in a terminal, one plain line per epoch otherwise."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

from imgcls.console import get_console, is_interactive, settings
from imgcls.training._console import info


def format_epoch(record: dict[str, Any], last_epoch: int) -> str:
    """``epoch 3/10  train loss 0.412 acc 0.853  val loss 0.391 acc 0.871  lr 8.1e-04  12.3s *``

    On CUDA the epoch's peak GPU memory follows the seconds (``mem 1234 MiB``).
    """

    def num(v: Any, fmt: str) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

    width = len(str(last_epoch))
    text = (
        f"epoch {record['epoch']:>{width}}/{last_epoch}  "
        f"train loss {num(record.get('train_loss'), '.4f')} acc {num(record.get('train_acc'), '.3f')}  "
        f"val loss {num(record.get('val_loss'), '.4f')} acc {num(record.get('val_acc'), '.3f')}  "
        f"lr {num(record.get('lr'), '.2e')}  {num(record.get('seconds'), '.1f')}s"
    )
    if record.get("max_memory_mib") is not None:
        text += f"  mem {record['max_memory_mib']:.0f} MiB"
    if record.get("phase") not in (None, "train"):
        text += f"  [{record['phase']}]"
    if record.get("best"):
        text += "  *"
    return text


class EpochReporter:
    """Shows a transient bar while an epoch runs (TTY only) and prints one summary line after it."""

    def __init__(self, last_epoch: int):
        self.last_epoch = last_epoch
        self.live = is_interactive() and settings.verbosity >= 0

    @contextlib.contextmanager
    def epoch(self, epoch: int, steps: int) -> Iterator[Callable[[float], None]]:
        """Yields ``advance(loss)`` to call after each batch."""
        if not self.live:
            yield lambda loss: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(
            TextColumn(f"epoch {epoch}/{self.last_epoch}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn(),
            console=get_console(), transient=True,
        ) as progress:
            task = progress.add_task("train", total=steps, loss="-")

            def advance(loss: float) -> None:
                progress.update(task, advance=1, loss=f"{loss:.4f}")

            yield advance

    def end_epoch(self, record: dict[str, Any]) -> None:
        info(format_epoch(record, self.last_epoch))
