"""Memory a training run will need, estimated before anything is allocated.

``--depth 50``, ``--width 100000`` or ``--image-size 100000`` would otherwise allocate
until the kernel kills the process (exit 137, no message) or a DataLoader worker dies.
The model is built on PyTorch's ``meta`` device (shapes only, no memory), its
parameters counted and one batch pushed through it to size the activations:

    weights 4 B/parameter + gradients and AdamW's two moments 12 B/trainable parameter
    + activations: 4 B per output value of every layer that is not in-place (what autograd
      keeps for the backward pass; half with mixed precision on CUDA, a quarter for a frozen
      backbone, whose forward pass keeps nothing)
    + one batch of input images (uint8 and float) + the decoded images held in memory

This is a rough figure, not a bound: the allocator, PyTorch's own buffers and the
validation batches come on top (measured for the cnn at 32 px, batch 64, on the digits:
estimate 87 MiB, peak resident memory 233 MiB above that of the imports). So only a run
that could never fit is refused: one whose estimate alone exceeds the memory of the
machine (its cgroup limit, or the GPU's memory on CUDA). A run that fits the machine but
not what is free now gets a warning.
"""

from __future__ import annotations

from typing import Any

import torch

from imgcls.errors import UsageProblem, brief
from imgcls.memory import available_bytes, format_bytes, total_bytes
from imgcls.training._console import detail, warn



def _option_text(cfg: Any) -> str:
    parts = [f"--arch {cfg.arch}", f"--image-size {cfg.image_size}", f"--batch-size {cfg.batch_size}"]
    parts += [f"--{k.replace('_', '-')} {v}" for k, v in sorted(cfg.arch_options.items())]
    return " ".join(parts)


def _activation_values(model: Any, x: torch.Tensor) -> int | None:
    """Output values of every leaf module for input ``x`` (meta tensors), or None when that cannot be traced."""
    total = 0

    def count(module: Any, inputs: Any, output: Any) -> None:
        nonlocal total
        outputs = output if isinstance(output, (tuple, list)) else (output,)
        for t in outputs:
            if isinstance(t, torch.Tensor):
                total += t.numel()

    hooks = [m.register_forward_hook(count) for m in model.modules()
             if not list(m.children()) and not getattr(m, "inplace", False)]
    try:
        with torch.no_grad():
            model(x)
    except Exception:  # noqa: BLE001 - a module without meta support: no activation estimate
        return None
    finally:
        for h in hooks:
            h.remove()
    return total


def estimate_training_bytes(cfg: Any, num_classes: int, n_images: int, preload_limit: int) -> dict[str, int]:
    """Bytes of memory the run needs (see the module docstring); raises UsageProblem when the model cannot be built."""
    from imgcls.models.registry import get_model

    try:
        with torch.device("meta"):
            model = get_model(cfg.arch, num_classes=num_classes, in_channels=cfg.channels, dropout=cfg.dropout,
                              pretrained=False, **cfg.arch_options)
    except UsageProblem:
        raise
    except (RuntimeError, ValueError, OverflowError, MemoryError) as exc:
        raise UsageProblem(f"{_option_text(cfg)}: the model is too large to build ({brief(exc, 120)})") from None
    params = sum(p.numel() for p in model.parameters())
    if cfg.trainable_blocks == 0:
        trainable = sum(p.numel() for p in model.head.parameters())
    else:
        trainable = params
    side, channels, batch = cfg.image_size, cfg.channels, cfg.batch_size
    x = torch.empty((batch, channels, side, side), device="meta")
    model.train()
    values = _activation_values(model, x)
    factor = 0.25 if cfg.trainable_blocks == 0 else 1.0
    if getattr(cfg, "amp", False) and getattr(cfg, "device", "cpu") != "cpu" and torch.cuda.is_available():
        factor /= 2
    image_bytes = side * side * channels
    return {
        "parameters": params,
        "weights": 4 * params + 12 * trainable,
        "activations": int(4 * factor * (values or 0)),
        "batch": batch * image_bytes * 5,
        "images": min(n_images * image_bytes, preload_limit),
    }


def check_training_memory(cfg: Any, num_classes: int, n_images: int, device: torch.device) -> None:
    """Refuse a run that cannot fit this machine's memory, naming the figure; warn when it does not fit what is free."""
    from imgcls.training.data import PRELOAD_LIMIT_BYTES

    parts = estimate_training_bytes(cfg, num_classes, n_images, PRELOAD_LIMIT_BYTES)
    need = parts["weights"] + parts["activations"] + parts["batch"] + (parts["images"] if device.type == "cpu" else 0)
    limit: int | None
    if device.type == "cuda":
        limit = torch.cuda.get_device_properties(device).total_memory
        where, free = "the GPU", None
    else:
        limit, free = total_bytes(), available_bytes()
        where = "this machine"
    detail(f"memory estimate: {format_bytes(need)} ({parts['parameters']:,} parameters: "
           f"{format_bytes(parts['weights'])}; activations of one batch: {format_bytes(parts['activations'])}; "
           f"images: {format_bytes(parts['batch'] + parts['images'])})")
    if limit and need > limit:
        raise UsageProblem(
            f"{_option_text(cfg)}: training needs about {format_bytes(need)} of memory "
            f"({parts['parameters']:,} parameters, {format_bytes(parts['weights'])} with gradients and optimizer "
            f"state; {format_bytes(parts['activations'])} of activations per batch), more than the "
            f"{format_bytes(limit)} of {where}; use a smaller --image-size, --batch-size or model "
            f"(--width, --depth)")
    if free and need > free:
        warn(f"training needs about {format_bytes(need)} of memory and {format_bytes(free)} is free now: "
             f"it may be slow or be stopped by the system")
