"""PyTorch DDP under torchrun, and nothing home-made.

``torchrun --nproc_per_node N -m imgcls train ...`` sets RANK, WORLD_SIZE, LOCAL_RANK
and MASTER_ADDR/PORT; :func:`setup` reads them and joins the process group (nccl on
CUDA, gloo on the CPU). Without them everything here is a no-op for a single process.

Rules the training loop follows through these helpers:
- each rank sees its own shard of the epoch's seeded order (:func:`shard`: the
  semantics of ``DistributedSampler(shuffle=True, drop_last=False)``, the permutation
  coming from the trainer's seeded generator, which advances every epoch as
  ``set_epoch`` would and is restored by ``--resume``);
- gradients are all-reduced by DistributedDataParallel (:func:`wrap`);
- metrics are summed across ranks before anyone decides anything, so early stopping
  and the best epoch are the same decision on every rank;
- only rank 0 writes files, logs and the stdout stream;
- collective calls have a timeout (IMGCLS_DIST_TIMEOUT seconds, default 300), so a rank
  that dies brings the job down with a message instead of a hang (torchrun then stops
  the other ranks).

Two debugging hooks, read from the environment, let the test suite see inside a
torchrun job (they cost nothing when unset):
- ``IMGCLS_DEBUG_SHARDS=PREFIX``: each rank writes ``PREFIX.rank<R>.json`` with the
  training-record indices it trained on per epoch and a SHA-256 of its final weights;
- ``IMGCLS_DEBUG_FAIL_RANK=R``: rank R raises at the start of its first epoch.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from imgcls.errors import UsageProblem

DEFAULT_TIMEOUT_S = int(os.environ.get("IMGCLS_DIST_TIMEOUT", "300"))
# Waiting for another rank to decode a whole data set or download weights may take far longer
# than a step; those waits use their own gloo group (a rank that dies still ends the job at once:
# torchrun stops the others).
PREPARE_TIMEOUT_S = max(DEFAULT_TIMEOUT_S, 6 * 3600)
DEBUG_SHARDS_ENV = "IMGCLS_DEBUG_SHARDS"
DEBUG_FAIL_ENV = "IMGCLS_DEBUG_FAIL_RANK"


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_info = DistInfo()
_prepare_group: Any = None


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def info() -> DistInfo:
    return _info


def setup(device_type: str) -> DistInfo:
    """Join the process group when launched by torchrun; returns this process's place in it.

    Idempotent: the second call (the library entry point after the command) changes nothing.
    """
    global _info, _prepare_group
    if _info.enabled:
        return _info
    if not launched_by_torchrun():
        _info = DistInfo()
        return _info
    import torch
    import torch.distributed as dist

    world_size = int(os.environ["WORLD_SIZE"])
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world_size <= 1:
        _info = DistInfo()
        return _info
    if device_type == "mps":
        raise UsageProblem("--device mps under torchrun: PyTorch cannot all-reduce Apple MPS tensors "
                           "(no nccl, and gloo takes CPU tensors); use --device cpu, or one process without torchrun")
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UsageProblem(
                f"rank {rank}: LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices; "
                "use --nproc_per_node at most the number of GPUs"
            )
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=DEFAULT_TIMEOUT_S))
    _prepare_group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=PREPARE_TIMEOUT_S))
    _info = DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend)
    return _info


def teardown() -> None:
    global _info, _prepare_group
    _prepare_group = None
    if _info.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    _info = DistInfo()


def rank_device(device: Any) -> Any:
    """Under torchrun, CUDA means this process's own GPU (LOCAL_RANK); other devices are unchanged."""
    import torch

    if not _info.enabled or device.type != "cuda":
        return device
    if device.index is not None and device.index != _info.local_rank:
        raise UsageProblem(f"--device {device}: under torchrun each process uses the GPU of its LOCAL_RANK; "
                           f"pass --device cuda (or auto) and choose GPUs with CUDA_VISIBLE_DEVICES")
    return torch.device("cuda", _info.local_rank)


def barrier() -> None:
    if _info.enabled:
        import torch.distributed as dist

        dist.barrier()


@contextlib.contextmanager
def local_main_first() -> Iterator[None]:
    """The body runs on each node's LOCAL_RANK 0 first, then on the others of that node.

    For work that fills a per-node cache (decoded images, downloaded weights): one writer
    per entry, and the other ranks then read what it wrote.
    """
    if not _info.enabled:
        yield
        return
    import torch.distributed as dist

    if _info.local_rank != 0:
        dist.barrier(group=_prepare_group)
    yield
    if _info.local_rank == 0:
        dist.barrier(group=_prepare_group)


def _sum_tensor(values: list[float], device: Any) -> Any:
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    dist.broadcast(tensor, src=0)  # bit-identical on every rank, so every decision is too
    return tensor


def all_reduce_sum(values: list[float], device: Any) -> list[float]:
    """Sum a few scalars across ranks (loss sums, correct counts, sample counts)."""
    if not _info.enabled:
        return list(values)
    return _sum_tensor(values, device).tolist()


def all_reduce_max(values: list[float], device: Any) -> list[float]:
    """The largest of each value over the ranks (peak GPU memory)."""
    if not _info.enabled:
        return list(values)
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()


def broadcast_flag(flag: bool, device: Any) -> bool:
    """Rank 0's decision, on every rank (stop now, save now)."""
    if not _info.enabled:
        return flag
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.broadcast(tensor, src=0)
    return bool(tensor.item())


def any_flag(flag: bool, device: Any) -> bool:
    """True on every rank if it is true on any (a rank was interrupted, a rank failed)."""
    if not _info.enabled:
        return flag
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def broadcast_object(obj: Any) -> Any:
    """Rank 0's (picklable, small) object on every rank: the run folder's path."""
    if not _info.enabled:
        return obj
    import torch.distributed as dist

    box = [obj if _info.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# -- data and model ---------------------------------------------------------------------------

def shard(order: Any, pad: bool = True) -> Any:
    """This rank's part of an order that is the same on every rank.

    ``pad=True`` (training): DistributedSampler's semantics with ``drop_last=False``: the
    order is extended by its own head to a multiple of the world size, then every rank
    takes every world-th index from its rank on, so all ranks get the same number of
    images (hence of batches: DDP needs the same number of backward passes everywhere).
    ``pad=False`` (validation, feature extraction): ``order[rank::world]``, no image twice;
    ranks may differ by one image, which is fine where no gradient is synchronised.
    """
    if not _info.enabled:
        return order
    world, rank = _info.world_size, _info.rank
    if pad:
        total = -(-len(order) // world) * world
        if total > len(order) and len(order):
            import torch

            reps = -(-total // len(order))
            order = torch.cat([order] * reps)[:total]
    return order[rank::world]


def shard_length(n: int) -> int:
    """Images per rank in a padded training shard of ``n``."""
    return -(-n // _info.world_size) if _info.enabled else n


def wrap(module: Any, device: Any) -> Any:
    """DistributedDataParallel around ``module`` (which keeps its parameters: save ``module`` itself)."""
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":
        return DistributedDataParallel(module, device_ids=[device.index], output_device=device.index)
    return DistributedDataParallel(module)


def sync_buffers(module: Any) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank.

    Each rank updates its running statistics on its own shard, so after an epoch they differ
    a little; validation and the saved model must not depend on the rank, so rank 0's win
    (what DDP's own ``broadcast_buffers`` does before every forward).
    """
    if not _info.enabled:
        return
    import torch.distributed as dist

    for buf in module.buffers():
        dist.broadcast(buf.data, src=0)


def gather_rows(local: Any, n: int) -> Any:
    """Reassemble rows computed on ``arange(n)[rank::world]`` by every rank into all ``n`` rows, on every rank."""
    if not _info.enabled:
        return local
    import torch
    import torch.distributed as dist

    world = _info.world_size
    per_rank = -(-n // world)
    padded = torch.zeros((per_rank, *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    out = torch.empty((n, *local.shape[1:]), dtype=local.dtype, device=local.device)
    for r, part in enumerate(parts):
        count = len(range(r, n, world))
        out[r::world] = part[:count]
    return out


# -- debugging hooks (tests) -----------------------------------------------------------------

def debug_fail_point() -> None:
    """Raise on the rank named by IMGCLS_DEBUG_FAIL_RANK (tests of failure handling)."""
    wanted = os.environ.get(DEBUG_FAIL_ENV)
    if wanted is not None and wanted.strip() == str(_info.rank):
        raise RuntimeError(f"{DEBUG_FAIL_ENV}={wanted}: simulated failure on rank {_info.rank}")


def debug_shards_enabled() -> bool:
    return bool(os.environ.get(DEBUG_SHARDS_ENV))


def state_digest(module: Any) -> str:
    """SHA-256 over the state dict (names, dtypes, shapes, bytes): equal iff the weights are."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().contiguous().cpu().reshape(-1)
        digest.update(f"{name}\0{t.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def write_debug_shards(epochs: list[list[int]], module: Any) -> None:
    """IMGCLS_DEBUG_SHARDS=PREFIX: PREFIX.rank<R>.json with the indices trained on and the weights' digest."""
    prefix = os.environ.get(DEBUG_SHARDS_ENV)
    if not prefix:
        return
    doc = {"rank": _info.rank, "world_size": _info.world_size, "epochs": epochs, "state_sha256": state_digest(module)}
    with open(f"{prefix}.rank{_info.rank}.json", "w", encoding="utf-8") as fh:
        json.dump(doc, fh)
