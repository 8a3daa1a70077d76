"""Process groups for tensor and pipeline parallelism, laid out like vLLM's ``parallel_state``.

``world_size = tp * pp`` ranks; TP ranks are contiguous: ``rank = pp_rank * tp + tp_rank``, so a
stage's TP group is one block of neighbouring ranks (on one host, the GPUs joined by NVLink) and
each PP group links the ranks with the same ``tp_rank`` across stages. With tp=2, pp=2:
TP groups [0, 1], [2, 3]; PP groups [0, 2], [1, 3].

Each group has a device group (NCCL on GPU, gloo on CPU) and a CPU gloo group for metadata; on
the CPU, where both would be gloo groups of the same ranks, one group serves as both.
``init_distributed`` is called once per process; layers then find their group through
``get_tp_group()`` / ``get_pp_group()``.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .group_coordinator import GroupCoordinator

logger = logging.getLogger(__name__)

_WORLD: GroupCoordinator | None = None
_TP: GroupCoordinator | None = None
_PP: GroupCoordinator | None = None


class ParallelLayoutError(ValueError):
    """The world size, rank and TP x PP sizes do not fit together."""


@dataclass(frozen=True)
class RankLayout:
    """Where one global rank sits in the TP x PP grid."""

    rank: int
    tensor_parallel_size: int
    pipeline_parallel_size: int

    def __post_init__(self) -> None:
        world = self.tensor_parallel_size * self.pipeline_parallel_size
        if min(self.tensor_parallel_size, self.pipeline_parallel_size) < 1:
            raise ParallelLayoutError(
                f"tensor_parallel_size ({self.tensor_parallel_size}) and pipeline_parallel_size "
                f"({self.pipeline_parallel_size}) must be >= 1")
        if not 0 <= self.rank < world:
            raise ParallelLayoutError(f"rank {self.rank} is outside the world of {world} ranks "
                                      f"(tp {self.tensor_parallel_size} x pp {self.pipeline_parallel_size})")

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tensor_parallel_size

    @property
    def pp_rank(self) -> int:
        return self.rank // self.tensor_parallel_size

    def tp_groups(self) -> list[list[int]]:
        tp = self.tensor_parallel_size
        return [[pp * tp + t for t in range(tp)] for pp in range(self.pipeline_parallel_size)]

    def pp_groups(self) -> list[list[int]]:
        tp = self.tensor_parallel_size
        return [[pp * tp + t for pp in range(self.pipeline_parallel_size)] for t in range(tp)]


def init_distributed(world_size: int, rank: int, master_addr: str = "127.0.0.1",
                     master_port: int = 29500, backend: str | None = None,
                     tensor_parallel_size: int = 1, pipeline_parallel_size: int = 1,
                     timeout_s: float = 120.0, local_rank: int | None = None) -> None:
    """Join the world (TCP rendezvous at ``master_addr:master_port``) and build the world, TP
    and PP groups. ``backend``: ``"gloo"`` or ``"nccl"`` (default: NCCL if CUDA, else gloo)."""
    global _WORLD, _TP, _PP
    if _WORLD is not None:
        raise RuntimeError("init_distributed() was already called in this process; "
                           "call destroy_distributed() first")
    layout = RankLayout(rank, tensor_parallel_size, pipeline_parallel_size)
    if layout.world_size != world_size:
        raise ParallelLayoutError(f"world_size {world_size} != tensor_parallel_size "
                                  f"{tensor_parallel_size} x pipeline_parallel_size {pipeline_parallel_size}")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    device = _device_for(backend, rank if local_rank is None else local_rank)
    timeout = datetime.timedelta(seconds=timeout_s)
    dist.init_process_group(backend, init_method=f"tcp://{master_addr}:{master_port}",
                            world_size=world_size, rank=rank, timeout=timeout)
    _WORLD = _make_group("world", [list(range(world_size))], rank, backend, device, timeout)
    _TP = _make_group("tp", layout.tp_groups(), rank, backend, device, timeout)
    _PP = _make_group("pp", layout.pp_groups(), rank, backend, device, timeout)
    logger.info("rank %d/%d: tp %d/%d, pp %d/%d, backend %s", rank, world_size, layout.tp_rank,
                tensor_parallel_size, layout.pp_rank, pipeline_parallel_size, backend)


def _device_for(backend: str, local_rank: int) -> torch.device:
    if backend != "nccl":
        return torch.device("cpu")
    device = torch.device("cuda", local_rank % torch.cuda.device_count())
    torch.cuda.set_device(device)
    return device


def _make_group(name: str, all_ranks: list[list[int]], rank: int, backend: str,
                device: torch.device, timeout: datetime.timedelta) -> GroupCoordinator:
    """Every process creates every group (torch requires it), keeps the one holding ``rank``."""
    mine = None
    for ranks in all_ranks:
        device_group = dist.new_group(ranks, backend=backend, timeout=timeout)
        cpu_group = (device_group if backend == "gloo"
                     else dist.new_group(ranks, backend="gloo", timeout=timeout))
        if rank in ranks:  # a member gets a ProcessGroup (others a NON_GROUP_MEMBER marker)
            assert isinstance(device_group, dist.ProcessGroup)
            assert isinstance(cpu_group, dist.ProcessGroup)
            mine = GroupCoordinator(name, ranks, rank, device_group, cpu_group, device)
    assert mine is not None  # the groups partition the world, so one holds rank
    return mine


def _get(group: GroupCoordinator | None, name: str) -> GroupCoordinator:
    if group is None:
        raise RuntimeError(f"the {name} group does not exist: call init_distributed() first")
    return group


def get_world_group() -> GroupCoordinator:
    return _get(_WORLD, "world")


def get_tp_group() -> GroupCoordinator:
    return _get(_TP, "tensor-parallel")


def get_pp_group() -> GroupCoordinator:
    return _get(_PP, "pipeline-parallel")


def model_parallel_is_initialized() -> bool:
    return _WORLD is not None


def destroy_distributed() -> None:
    """Leave the world; ``init_distributed`` may be called again afterwards."""
    global _WORLD, _TP, _PP
    _WORLD = _TP = _PP = None
    if dist.is_initialized():
        dist.destroy_process_group()
