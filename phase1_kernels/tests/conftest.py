"""Fixtures for the kernel tests: Triton's interpreter on machines without CUDA, set before any
test module imports triton."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
