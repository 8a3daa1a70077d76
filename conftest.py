"""Repository-wide pytest setup: markers and the CPU defaults every phase's tests rely on."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    # Triton kernels run on the CPU only through its interpreter; set before triton is imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")
torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
