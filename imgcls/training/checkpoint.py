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
from typing import TYPE_CHECKING, Any

import torch

from imgcls.errors import ModelError, brief

if TYPE_CHECKING:
    from imgcls.training.loop import Trainer

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

    def load_model_state(self, model: torch.nn.Module) -> None:
        """The checkpoint's weights into ``model``; a tensor missing, extra or of another shape names the file."""
        state = self.model_state()
        own = model.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            parts = ([f"missing {', '.join(missing[:3])}"] if missing else []) + (
                [f"unexpected {', '.join(unexpected[:3])}"] if unexpected else [])
            raise ModelError(f"{self.path}: the checkpoint's weights do not fit its own configuration "
                             f"({'; '.join(parts)})")
        for name, tensor in state.items():
            if tuple(tensor.shape) != tuple(own[name].shape):
                raise ModelError(f"{self.path}: checkpoint tensor \"model.{name}\" has shape {tuple(tensor.shape)}, "
                                 f"the configured model needs {tuple(own[name].shape)}")
        model.load_state_dict(state)


def check_resumable(ckpt: Checkpoint, header: dict[str, Any], records: Any) -> None:
    """The data of a resumed run must be the run's own: same classes, every label known."""
    classes = ckpt.meta["classes"]
    given = header.get("classes")
    if given and list(given) != list(classes):
        raise ModelError(f"{ckpt.path}: the checkpoint's classes ({', '.join(classes[:5])}"
                         f"{' ...' if len(classes) > 5 else ''}) differ from the manifest's "
                         f"({', '.join(given[:5])}{' ...' if len(given) > 5 else ''}); resume needs the run's own data")
    known = set(classes)
    unknown = sorted({r["label"] for r in records if r.get("label") is not None and r["label"] not in known})
    if unknown:
        raise ModelError(f"{ckpt.path}: the manifest has labels the checkpoint does not know: {', '.join(unknown[:5])}")


def restore_training_state(trainer: Trainer, ckpt: Checkpoint, best_state: dict[str, torch.Tensor] | None) -> None:
    """``trainer.load_checkpoint`` with a damaged or foreign checkpoint reported as one line naming the file."""
    try:
        trainer.load_checkpoint(ckpt, best_state)
    except (KeyError, ValueError, TypeError, IndexError, RuntimeError) as exc:
        raise ModelError(f"{ckpt.path}: checkpoint does not fit this run ({type(exc).__name__}: {brief(exc, 160)})") \
            from None
    for group in trainer.optimizer.param_groups:
        for param in group["params"]:
            for key, value in trainer.optimizer.state.get(param, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape:
                    raise ModelError(f"{ckpt.path}: optimizer state {key!r} has shape {tuple(value.shape)} for a "
                                     f"parameter of shape {tuple(param.shape)}: the checkpoint is damaged")


def checkpoint_payload(*, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any,
                       generator: torch.Generator, state: dict[str, Any],
                       copy: bool = False, extra: dict[str, torch.Tensor] | None = None,
                       ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The checkpoint's tensors and metadata as they are now.

    ``copy``: tensors are cloned and the metadata serialised, so the payload stays the state
    of this moment while training goes on (a checkpoint written later, see ``--save-interval``).
    ``extra``: more tensors, under names of their own (``ema.*``: the weights' moving average).
    """

    def own(t: torch.Tensor) -> torch.Tensor:
        t = t.detach().contiguous().cpu()
        return t.clone() if copy else t

    tensors = {f"model.{k}": own(v) for k, v in model.state_dict().items()}
    opt_tensors, opt_meta = optimizer_to_flat(optimizer)
    tensors.update({k: own(v) for k, v in opt_tensors.items()})
    tensors.update({k: own(v) for k, v in (extra or {}).items()})
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
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except OSError:
            raise
        except Exception as exc:  # safetensors' own error type, e.g. for a full disk: name the checkpoint
            from imgcls.fsutil import as_write_error

            raise as_write_error(exc, path) from None
    return path


def save_checkpoint(path: str | os.PathLike, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, scaler: Any, generator: torch.Generator, state: dict[str, Any]) -> Path:
    """Write the checkpoint of this moment atomically."""
    return write_checkpoint(path, checkpoint_payload(model=model, optimizer=optimizer, scheduler=scheduler,
                                                     scaler=scaler, generator=generator, state=state))


def load_checkpoint(path: str | os.PathLike, resume: bool = False) -> Checkpoint:
    """Read and validate a checkpoint (:mod:`imgcls.metadata`): a bad field is one line naming the file and field.

    ``resume``: everything a run needs to continue must be there (configuration, classes, ...).

    Temporary files left in the run folder by a process that was killed while writing
    (``kill -9`` mid-checkpoint) are removed on the way.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    from imgcls.fsutil import sweep_stale_temps
    from imgcls.metadata import RESUME_FIELDS, FieldProblem, check_checkpoint_state, load_json_text

    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.safetensors"
    sweep_stale_temps(path.parent)
    if not path.exists():
        started = (path.parent / "manifest.jsonl").exists() and not (path.parent / "model.safetensors").exists()
        if started:
            raise ModelError(f"{path}: no checkpoint to resume from: the run stopped before its first epoch ended; "
                             f"start it again with the same command (its --out folder {path.parent} is reused)")
        raise ModelError(f"{path}: no checkpoint to resume from (was the run started with --no-checkpoint, "
                         f"or interrupted before its first epoch ended?)")
    from imgcls.models.io import require_regular_file

    require_regular_file(path, "checkpoint")
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
        if metadata.get("format") != CHECKPOINT_FORMAT:
            raise ModelError(f"{path}: not an imgcls checkpoint")
        version = metadata.get("version", "1")
        if not str(version).isdigit():
            raise ModelError(f"{path}: checkpoint metadata \"version\": {version!r} is not a version number")
        if int(version) > CHECKPOINT_VERSION:
            raise ModelError(f"{path}: checkpoint format is newer than this imgcls reads; upgrade imgcls")
        if "state" not in metadata:
            raise ModelError(f"{path}: checkpoint metadata \"state\" is missing")
        meta = check_checkpoint_state(load_json_text(metadata["state"], "state"),
                                      RESUME_FIELDS if resume else ("epoch",))
        tensors = load_file(str(path), device="cpu")
    except ModelError:
        raise
    except FieldProblem as exc:
        raise ModelError(f"{path}: checkpoint field {json.dumps(exc.field)}: {exc.problem}") from None
    except Exception as exc:  # noqa: BLE001 - damaged file: name it
        raise ModelError(f"{path}: damaged checkpoint ({brief(exc, 120)})") from None
    for name in ("rng.torch", "rng.data"):
        tensor = tensors.get(name)
        if tensor is None or tensor.dtype != torch.uint8 or tensor.dim() != 1:
            raise ModelError(f"{path}: checkpoint tensor {name!r} is missing or damaged (the random-number state)")
    if not any(k.startswith("model.") for k in tensors):
        raise ModelError(f"{path}: the checkpoint holds no model weights")
    return Checkpoint(tensors, meta, path)


def restore_rng(ckpt: Checkpoint, generator: torch.Generator) -> None:
    torch.set_rng_state(ckpt.tensors["rng.torch"])
    generator.set_state(ckpt.tensors["rng.data"])
    if "rng.cuda" in ckpt.tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(ckpt.tensors["rng.cuda"])
