"""Per-epoch checkpoints in safetensors: tensors plus JSON metadata, no pickle.

``checkpoint.safetensors`` holds the model's current weights (``model.*``), the
optimizer's per-parameter state (``optim.<param>.<key>``), the RNG states (``rng.*``)
and, in the metadata, everything else as JSON: the optimizer's param groups, scheduler
and grad-scaler state, the epoch, the early-stopping state, the history and the
training configuration. ``--resume RUN`` rebuilds the run from it and continues as if
it had never stopped (same seed, same data order, same weights on the CPU).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from imgcls.errors import ModelError

CHECKPOINT_FORMAT = "imgcls-checkpoint"
CHECKPOINT_VERSION = 1


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors and JSON."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": _jsonable(sd["param_groups"]), "scalars": scalars}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    for name, value in meta.get("scalars", {}).items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


@dataclass
class Checkpoint:
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]
    path: Path

    def model_state(self) -> dict[str, torch.Tensor]:
        return {k[len("model."):]: v for k, v in self.tensors.items() if k.startswith("model.")}

    def optimizer_state(self) -> dict[str, Any]:
        return optimizer_from_flat(self.tensors, self.meta["optimizer"])


def checkpoint_payload(*, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any,
                       generator: torch.Generator, state: dict[str, Any],
                       copy: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The checkpoint's tensors and metadata as they are now.

    ``copy``: tensors are cloned and the metadata serialised, so the payload stays the state
    of this moment while training goes on (a checkpoint written later, see ``--save-interval``).
    """

    def own(t: torch.Tensor) -> torch.Tensor:
        t = t.detach().contiguous().cpu()
        return t.clone() if copy else t

    tensors = {f"model.{k}": own(v) for k, v in model.state_dict().items()}
    opt_tensors, opt_meta = optimizer_to_flat(optimizer)
    tensors.update({k: own(v) for k, v in opt_tensors.items()})
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.data"] = generator.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    meta = {
        "optimizer": opt_meta,
        "scheduler": _jsonable(scheduler.state_dict()) if scheduler is not None else None,
        "scaler": _jsonable(scaler.state_dict()) if scaler is not None and scaler.is_enabled() else None,
        **state,
    }
    return tensors, {"format": CHECKPOINT_FORMAT, "version": str(CHECKPOINT_VERSION), "state": json.dumps(meta)}


def write_checkpoint(path: str | os.PathLike, payload: tuple[dict[str, torch.Tensor], dict[str, str]]) -> Path:
    """Write a payload atomically (a crash mid-write leaves the previous checkpoint)."""
    from safetensors.torch import save_file

    from imgcls.fsutil import atomic_path

    tensors, metadata = payload
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def save_checkpoint(path: str | os.PathLike, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, scaler: Any, generator: torch.Generator, state: dict[str, Any]) -> Path:
    """Write the checkpoint of this moment atomically."""
    return write_checkpoint(path, checkpoint_payload(model=model, optimizer=optimizer, scheduler=scheduler,
                                                     scaler=scaler, generator=generator, state=state))


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.safetensors"
    if not path.exists():
        raise ModelError(f"{path}: no checkpoint to resume from (was the run started with --no-checkpoint, "
                         f"or interrupted before its first epoch ended?)")
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
        if metadata.get("format") != CHECKPOINT_FORMAT:
            raise ModelError(f"{path}: not an imgcls checkpoint")
        if int(metadata.get("version", "1")) > CHECKPOINT_VERSION:
            raise ModelError(f"{path}: checkpoint format is newer than this imgcls reads; upgrade imgcls")
        meta = json.loads(metadata["state"])
        tensors = load_file(str(path), device="cpu")
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - damaged file: name it
        raise ModelError(f"{path}: damaged checkpoint ({str(exc).splitlines()[0][:120]})") from None
    return Checkpoint(tensors, meta, path)


def restore_rng(ckpt: Checkpoint, generator: torch.Generator) -> None:
    torch.set_rng_state(ckpt.tensors["rng.torch"])
    generator.set_state(ckpt.tensors["rng.data"])
    if "rng.cuda" in ckpt.tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(ckpt.tensors["rng.cuda"])
