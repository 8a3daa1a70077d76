"""The measured GEMM choice never times a kernel whose output disagrees with cuBLAS's.

A kernel that is fast because it is wrong (a mis-indexed fragment reads fewer bytes) would win
the timing; ``gpu_linear.disagreement`` is the gate before it. Checked here on the CPU with
candidates whose mistakes are the kinds a tiled kernel makes, against ``F.linear`` (float64
reference for the right one)."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from phase1_kernels.layers import gpu_linear
from phase1_kernels.layers.gpu_linear import Candidate


def _silu_mul(out: torch.Tensor) -> torch.Tensor:
    gate, up = out.chunk(2, dim=-1)
    return F.silu(gate) * up


def _exact(x, w):  # float64 then rounded once, as our kernels do (fp32 accumulate, one rounding)
    return F.linear(x.double(), w.double()).to(x.dtype)


RIGHT = Candidate("right", 16, _exact, lambda x, w: _silu_mul(_exact(x, w).float()).to(x.dtype))
WRONG = {
    "k halves swapped": lambda x, w: F.linear(x, w.roll(w.shape[1] // 2, dims=1)),
    "half of K summed": lambda x, w: F.linear(x[:, ::2], w[:, ::2]),
    "columns shifted": lambda x, w: F.linear(x, w.roll(1, dims=0)),
    "zeros": lambda x, w: torch.zeros(x.shape[0], w.shape[0], dtype=x.dtype),
    "nan": lambda x, w: torch.full((x.shape[0], w.shape[0]), float("nan"), dtype=x.dtype),
    "a row short": lambda x, w: F.linear(x[:-1], w),
}


@pytest.fixture
def operands():
    torch.manual_seed(0)
    return torch.randn(4, 256, dtype=torch.bfloat16), torch.randn(96, 256, dtype=torch.bfloat16) / 16


def test_a_kernel_that_rounds_differently_agrees(operands):
    x, w = operands
    assert gpu_linear.disagreement(RIGHT, x, w, fused_silu=False) == ""
    assert gpu_linear.disagreement(RIGHT, x, w, fused_silu=True) == ""


@pytest.mark.parametrize("mistake", sorted(WRONG))
def test_a_wrong_kernel_is_refused_with_why(operands, mistake):
    x, w = operands
    wrong = Candidate("wrong", 16, WRONG[mistake])
    why = gpu_linear.disagreement(wrong, x, w, fused_silu=False)
    assert why.startswith("wrong ")


def test_a_wrong_epilogue_is_refused_though_its_gemm_is_right(operands):
    x, w = operands
    no_silu = Candidate("noact", 16, _exact, lambda x, w: (lambda g, u: g * u)(*_exact(x, w).chunk(2, dim=-1)))
    assert gpu_linear.disagreement(no_silu, x, w, fused_silu=False) == ""
    assert "differs from cuBLAS" in gpu_linear.disagreement(no_silu, x, w, fused_silu=True)


def test_only_agreeing_kernels_reach_the_timing(operands, caplog):
    x, w = operands
    wrong = Candidate("wrong", 16, WRONG["columns shifted"])
    with caplog.at_level(logging.WARNING, logger=gpu_linear.__name__):
        kept = gpu_linear._agreeing([wrong, RIGHT], x, w, fused_silu=False)
    assert kept == [RIGHT]
    assert "wrong differs from cuBLAS" in caplog.text and "(96, 256)" in caplog.text
