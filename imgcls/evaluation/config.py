"""Defaults of the inference options eval and predict share (torch-free: the command layer reads them).

The click options in :mod:`imgcls.commands._inference` take their defaults from here, and
tests/test_eval.py and tests/test_predict.py tie the two.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# Image-decoding threads when --workers is not given: enough to keep a CPU model fed, few
# enough not to starve it.
MAX_DECODE_THREADS = 4


@dataclass(frozen=True)
class InferenceConfig:
    """What one eval or predict run uses to turn image files into probabilities."""

    batch_size: int
    workers: int | None = None  # decoding threads; None: default_workers()
    device: str = "auto"
    cache: bool = True  # read and fill the decoded-image cache


# Why the batch sizes differ: BATCH_SIZE_WHY in imgcls/commands/_inference.py (shown in --help).
EVAL = InferenceConfig(batch_size=64)
PREDICT = InferenceConfig(batch_size=32)


def default_workers() -> int:
    """Decoding threads: min(MAX_DECODE_THREADS, CPU count), at least one."""
    return max(1, min(MAX_DECODE_THREADS, os.cpu_count() or 1))
