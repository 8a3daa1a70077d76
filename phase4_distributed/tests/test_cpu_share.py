"""Co-located CPU workers split the cores instead of each sizing its thread pool to all of them
(which pinned every rank's thread 0 to core 0)."""

import pytest

from phase1_kernels import cpu_threads
from phase1_kernels.cpu_threads import BIND_ENV, parse_cpu_list
from phase4_distributed.executors import processes


@pytest.fixture()
def four_cores(monkeypatch):
    monkeypatch.setattr(cpu_threads, "usable_cpus", lambda: [0, 1, 2, 3])
    monkeypatch.delenv(BIND_ENV, raising=False)


def shares(ranks: int) -> list[list[int]]:
    return [parse_cpu_list(processes.cpu_share(r, ranks)) for r in range(ranks)]


def test_each_rank_gets_its_own_contiguous_cores(four_cores):
    assert shares(1) == [[0, 1, 2, 3]]
    assert shares(2) == [[0, 1], [2, 3]]
    assert shares(4) == [[0], [1], [2], [3]]
    assert shares(3) == [[0], [1], [2]]  # 4 // 3 = 1 core each, the fourth idle


def test_more_ranks_than_cores_share_round_robin(four_cores):
    assert shares(6) == [[0], [1], [2], [3], [0], [1]]


def test_single_cores_are_written_as_ranges(four_cores):
    # "0" and "1" alone mean "binding off" and "auto" to configure_cpu_threads
    assert processes.cpu_share(0, 4) == "0-0" and processes.cpu_share(1, 4) == "1-1"


def test_a_binding_the_user_chose_is_kept(four_cores, monkeypatch):
    assert processes.cpu_worker_env(1, 2) == {BIND_ENV: "2-2,3-3"}
    monkeypatch.setenv(BIND_ENV, "0")
    assert processes.cpu_worker_env(1, 2) == {}
