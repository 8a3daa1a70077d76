"""Errors the out-of-process executors raise (besides phase 3's ``WorkerDiedError``), and the
gathering of ``collective_rpc`` replies that every executor shares."""

from __future__ import annotations

from typing import Any

from phase3_scheduling.protocol import RpcReply


class WorkerStepError(RuntimeError):
    """A step failed inside the (single) worker; only that step's requests fail."""


class WorkerRpcError(RuntimeError):
    """A worker method called through ``collective_rpc`` raised on some rank."""


class RpcTimeoutError(TimeoutError):
    """Some ranks did not answer a ``collective_rpc`` within its deadline."""


def results_in_rank_order(method: str, replies: dict[int, RpcReply]) -> list[Any]:
    """Every rank's result, rank 0 first; ``WorkerRpcError`` naming each rank that failed."""
    failed = [(rank, r) for rank, r in sorted(replies.items()) if r.error is not None]
    if failed:
        details = "; ".join(f"rank {rank}: {r.error_type}: {r.error}" for rank, r in failed)
        raise WorkerRpcError(f"{method} failed on {len(failed)} of {len(replies)} ranks: {details}")
    return [replies[rank].result for rank in range(len(replies))]
