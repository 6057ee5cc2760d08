"""PyTorch DDP under torchrun, and nothing home-made.

``torchrun --nproc_per_node N -m imgcls train ...`` sets RANK, WORLD_SIZE, LOCAL_RANK
and MASTER_ADDR/PORT; :func:`setup` reads them and joins the process group (nccl on
CUDA, gloo on the CPU). Without them everything here is a no-op for a single process.

Rules the training loop follows through these helpers:
- each rank sees its own shard (DistributedSampler, ``set_epoch`` every epoch);
- gradients are all-reduced by DistributedDataParallel;
- metrics are summed across ranks before anyone decides anything, so early stopping
  and the best epoch are the same decision on every rank;
- only rank 0 writes files, logs and the stdout stream;
- collective calls have a timeout, so a rank that dies brings the job down with a
  message instead of a hang (torchrun then stops the other ranks).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

from imgcls.errors import UsageProblem

DEFAULT_TIMEOUT_S = int(os.environ.get("IMGCLS_DIST_TIMEOUT", "300"))


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


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def info() -> DistInfo:
    return _info


def setup(device_type: str) -> DistInfo:
    """Join the process group when launched by torchrun; returns this process's place in it."""
    global _info
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
    _info = DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend)
    return _info


def teardown() -> None:
    global _info
    if _info.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    _info = DistInfo()


def barrier() -> None:
    if _info.enabled:
        import torch.distributed as dist

        dist.barrier()


def all_reduce_sum(values: list[float], device) -> list[float]:
    """Sum a few scalars across ranks (loss sums, correct counts, sample counts)."""
    if not _info.enabled:
        return list(values)
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def broadcast_flag(flag: bool, device) -> bool:
    """Rank 0's decision, on every rank (stop now, save now)."""
    if not _info.enabled:
        return flag
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.broadcast(tensor, src=0)
    return bool(tensor.item())


def any_flag(flag: bool, device) -> bool:
    """True on every rank if it is true on any (a rank was interrupted, a rank failed)."""
    if not _info.enabled:
        return flag
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())
