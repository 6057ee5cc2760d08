"""What a ``--device`` name means for a torch model: one resolver for train, finetune, eval and predict.

torch is imported when a name is resolved, not before. ONNX models have their own
resolver (:func:`imgcls.evaluation.onnx_backend.resolve_device`): there the choice is
between onnxruntime's execution providers, and torch may not be installed at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imgcls.errors import UsageProblem

if TYPE_CHECKING:
    import torch

DEVICES_HELP = "auto (CUDA, then Apple MPS, then the CPU), cpu, cuda, cuda:N or mps"


def _mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def resolve_device(name: str | None) -> torch.device:
    """``auto``: CUDA, then Apple MPS, then the CPU. An explicit device must exist here."""
    import torch

    text = (name or "auto").strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        if not _mps_available():
            raise UsageProblem("--device mps: Apple MPS is not available here; use --device cpu (or auto)")
        return torch.device("mps")
    if text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit()):
        if not torch.cuda.is_available():
            raise UsageProblem(f"--device {text}: no CUDA GPU is visible to this PyTorch build; use --device cpu "
                               f"(or auto)")
        if ":" in text and int(text[5:]) >= torch.cuda.device_count():
            raise UsageProblem(f"--device {text}: only {torch.cuda.device_count()} CUDA device(s) visible")
        return torch.device(text)
    raise UsageProblem(f"--device {name!r}: expected {DEVICES_HELP}")
