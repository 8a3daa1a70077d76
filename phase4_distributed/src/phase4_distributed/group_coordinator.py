"""``GroupCoordinator``: one communication group (world, TP or PP) as vLLM models it: the global
ranks in it, a *device* group for tensors (NCCL on GPUs, gloo on the CPU) and a *CPU* gloo group
for small metadata. Every collective counts its calls and bytes in ``stats`` so tests and
notebooks can state how much a forward communicates.

A group of one rank communicates nothing: its collectives return their input and count nothing.
Metadata crossing processes is JSON in a uint8 tensor, never pickled.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


class NotConnectedError(RuntimeError):
    """A collective was called on a group built without process groups (shapes only)."""


@dataclass
class CommStats:
    """Calls and payload bytes per operation (``all_reduce``, ``all_gather``, ``send``, ``recv``,
    ``send_metadata``, ``recv_metadata``) of one group in this process."""

    calls: Counter = field(default_factory=Counter)
    bytes: Counter = field(default_factory=Counter)

    def add(self, op: str, tensor: torch.Tensor) -> None:
        self.calls[op] += 1
        self.bytes[op] += tensor.numel() * tensor.element_size()

    def reset(self) -> None:
        self.calls.clear()
        self.bytes.clear()

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {"calls": dict(self.calls), "bytes": dict(self.bytes)}


HEADER_BYTES = 256  # a tensor dict's metadata message (JSON of names, dtypes, shapes)


class GroupCoordinator:
    """The ranks of one group and its collectives (``dst``/``src`` are ranks in the group)."""

    def __init__(self, name: str, ranks: list[int], rank: int,
                 device_group: dist.ProcessGroup | None, cpu_group: dist.ProcessGroup | None,
                 device: torch.device):
        if rank not in ranks:
            raise ValueError(f"rank {rank} is not in group {name!r} with ranks {ranks}")
        self.name, self.ranks, self.rank = name, list(ranks), rank
        self.rank_in_group = self.ranks.index(rank)
        self.device_group, self.cpu_group, self.device = device_group, cpu_group, device
        self.stats = CommStats()

    @classmethod
    def unconnected(cls, name: str, rank_in_group: int, world_size: int) -> "GroupCoordinator":
        """A group without processes behind it: layers can be built for any rank of it (shapes,
        parameter counts) but a collective raises ``NotConnectedError``."""
        return cls(name, list(range(world_size)), rank_in_group, None, None, torch.device("cpu"))

    @property
    def world_size(self) -> int:
        return len(self.ranks)

    @property
    def is_first_rank(self) -> bool:
        return self.rank_in_group == 0

    @property
    def is_last_rank(self) -> bool:
        return self.rank_in_group == self.world_size - 1

    @property
    def next_rank(self) -> int:
        return (self.rank_in_group + 1) % self.world_size

    @property
    def prev_rank(self) -> int:
        return (self.rank_in_group - 1) % self.world_size

    def _groups(self) -> tuple[dist.ProcessGroup, dist.ProcessGroup]:
        if self.device_group is None or self.cpu_group is None:
            raise NotConnectedError(
                f"group {self.name!r} (rank {self.rank_in_group} of {self.world_size}) was built "
                "without process groups; call init_distributed() first"
            )
        return self.device_group, self.cpu_group

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the group, in place; returns it."""
        if self.world_size == 1:
            return tensor
        device_group, _ = self._groups()
        self.stats.add("all_reduce", tensor)
        dist.all_reduce(tensor, group=device_group)
        return tensor

    def all_gather(self, tensor: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """Every rank's ``tensor`` concatenated along ``dim``, in rank order."""
        if self.world_size == 1:
            return tensor
        device_group, _ = self._groups()
        self.stats.add("all_gather", tensor)
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor, group=device_group)
        return torch.cat(parts, dim=dim)

    def send(self, tensor: torch.Tensor, dst: int | None = None) -> None:
        device_group, _ = self._groups()
        self.stats.add("send", tensor)
        dist.send(tensor.contiguous(), self.ranks[self._peer(dst, self.next_rank)], group=device_group)

    def recv(self, shape: tuple[int, ...], dtype: torch.dtype, src: int | None = None) -> torch.Tensor:
        device_group, _ = self._groups()
        tensor = torch.empty(shape, dtype=dtype, device=self.device)
        dist.recv(tensor, self.ranks[self._peer(src, self.prev_rank)], group=device_group)
        self.stats.add("recv", tensor)
        return tensor

    def _peer(self, peer: int | None, default: int) -> int:
        peer = default if peer is None else peer
        if not 0 <= peer < self.world_size or peer == self.rank_in_group:
            raise ValueError(f"peer {peer} is not another rank of group {self.name!r} "
                             f"(size {self.world_size}, this rank {self.rank_in_group})")
        return peer

    def send_tensor_dict(self, tensors: dict[str, torch.Tensor], dst: int | None = None) -> None:
        """Names, dtypes and shapes as JSON in one fixed-size header message (a longer JSON
        spills into a second), then each tensor over the device group; the receiver allocates
        from the metadata. The header goes over the CPU group on a GPU, over the device group
        itself on the CPU (both are gloo there, and switching groups costs a round trip)."""
        peer = self.ranks[self._peer(dst, self.next_rank)]
        meta_group = self._metadata_group()
        meta = {name: [str(t.dtype).removeprefix("torch."), list(t.shape)] for name, t in tensors.items()}
        body = json.dumps(meta).encode()
        header = bytearray(HEADER_BYTES)
        header[:4] = len(body).to_bytes(4, "little")
        inline = body[:HEADER_BYTES - 4]
        header[4:4 + len(inline)] = inline
        parts = [torch.frombuffer(header, dtype=torch.uint8)]
        if len(body) > len(inline):
            parts.append(torch.frombuffer(bytearray(body[len(inline):]), dtype=torch.uint8))
        for part in parts:
            self.stats.add("send_metadata", part)
            dist.send(part, peer, group=meta_group)
        for tensor in tensors.values():
            self.send(tensor, dst)

    def recv_tensor_dict(self, src: int | None = None) -> dict[str, torch.Tensor]:
        peer = self.ranks[self._peer(src, self.prev_rank)]
        meta_group = self._metadata_group()
        header = torch.empty(HEADER_BYTES, dtype=torch.uint8)
        dist.recv(header, peer, group=meta_group)
        self.stats.add("recv_metadata", header)
        raw = header.numpy().tobytes()
        length = int.from_bytes(raw[:4], "little")
        body = raw[4:4 + min(length, HEADER_BYTES - 4)]
        if length > len(body):
            rest = torch.empty(length - len(body), dtype=torch.uint8)
            dist.recv(rest, peer, group=meta_group)
            self.stats.add("recv_metadata", rest)
            body += rest.numpy().tobytes()
        meta = json.loads(body.decode())
        return {name: self.recv(tuple(shape), getattr(torch, dtype), src)
                for name, (dtype, shape) in meta.items()}

    def _metadata_group(self) -> dist.ProcessGroup:
        device_group, cpu_group = self._groups()
        return device_group if self.device.type == "cpu" else cpu_group

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier(group=self._groups()[1])

    def __repr__(self) -> str:
        return f"GroupCoordinator({self.name!r}, ranks={self.ranks}, rank_in_group={self.rank_in_group})"
