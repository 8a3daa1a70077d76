"""CPU thread configuration: the CPU-list parser, and pinning checked from /proc in a child
process (pinning the test process itself would slow every later test)."""

import json
import os
import subprocess
import sys

import pytest

from phase1_kernels.cpu_threads import parse_cpu_list


def test_parse_cpu_list():
    assert parse_cpu_list("0-3,6") == [0, 1, 2, 3, 6]
    assert parse_cpu_list("5") == [5]
    for bad in ("", "a", "3-1"):
        with pytest.raises(ValueError):
            parse_cpu_list(bad)


CHILD = r"""
import json, os, torch
from phase1_kernels.cpu_threads import configure_cpu_threads
from phase1_kernels.ops import extension
cfg = configure_cpu_threads()
torch.mm(torch.randn(512, 512), torch.randn(512, 512))  # the pool's threads exist and ran
pinned = set()
for tid in os.listdir("/proc/self/task"):
    allowed = os.sched_getaffinity(int(tid))
    if len(allowed) == 1:
        pinned |= allowed
print(json.dumps([cfg.num_threads, cfg.bound_cpus, sorted(pinned), extension.is_available("cpu")]))
"""


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="needs Linux affinity calls")
def test_threads_are_pinned_one_per_core():
    cpus = sorted(os.sched_getaffinity(0))
    env = {k: v for k, v in os.environ.items() if k not in ("LIGHTVLLM_CPU_BIND", "LIGHTVLLM_CPU_THREADS")}
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                         timeout=600, env=env, check=True)
    threads, bound, pinned, has_extension = json.loads(out.stdout.strip().splitlines()[-1])
    assert threads == len(cpus)
    if not has_extension:
        pytest.skip("the C++ extension is unavailable: nothing pins")
    assert bound == cpus and pinned == cpus
