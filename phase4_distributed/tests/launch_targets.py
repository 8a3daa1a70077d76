"""Rank targets that misbehave, for the launcher's failure tests (no torch import: fast)."""

import time


def fail_on_rank_one(rank: int, **_) -> None:
    if rank == 1:
        raise RuntimeError("rank 1 gives up")
    time.sleep(60)


def hang(**_) -> None:
    time.sleep(60)
