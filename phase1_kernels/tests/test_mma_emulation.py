"""The tensor-core kernel's own source (``csrc/cuda/mma_linear_kernel.cuh``) run on the CPU.

``cuda_emulation/`` runs a CUDA block as CPU threads and computes mma.sync.m16n8k16 from the 32
lanes' fragments by PTX's fragment tables; g++ compiles the unchanged kernel header against it
(with AddressSanitizer and UBSan: a read or write past x, the weight or the output fails the run).
So the kernel's index arithmetic — which weight rows and k a lane loads, how its fragments feed
the MMA, the split of K over warps (some with no steps), the tiles past the last column, the GLU
row pairing and its SiLU·mul epilogue, which cells it stores — is checked against float64 on a
machine without a GPU. What this cannot check: timing, the real instruction's rounding of its
sums, and the GPU build (``scripts/cuda_compile_check.sh`` compiles that; ``test_mma_linear.py``
runs it on a GPU)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from shared.fixtures import assert_matmul_matches_float64

HERE = Path(__file__).parent / "cuda_emulation"
KERNELS = Path(__file__).parents[1] / "src" / "phase1_kernels" / "csrc" / "cuda"
SENTINEL = 7.0  # what the output holds where the kernel must not write
DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16}


def build_driver(kernels: Path, binary: Path) -> Path:
    """g++ builds the driver around the kernel header in ``kernels`` (with its device_utils.cuh)."""
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("needs g++")
    command = [compiler, "-std=c++20", "-O1", "-g", "-fsanitize=address,undefined",
               "-fno-sanitize-recover=all", "-fno-strict-aliasing", "-pthread", "-Wall",
               "-Wno-unknown-pragmas", "-DLIGHTVLLM_WARP_EMULATION", f"-I{HERE}", f"-I{kernels}",
               str(HERE / "mma_linear_driver.cpp"), "-o", str(binary)]
    built = subprocess.run(command, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-4000:]
    return binary


@pytest.fixture(scope="module")
def driver(tmp_path_factory) -> Path:
    return build_driver(KERNELS, tmp_path_factory.mktemp("mma_emulation") / "mma_linear_driver")


def _bits(t: torch.Tensor) -> bytes:
    return t.contiguous().view(torch.int16).numpy().tobytes()


def run_kernel(driver: Path, tmp: Path, x: torch.Tensor, w: torch.Tensor, glu: bool, warps: int,
               tiles: int, out_pad: int = 8) -> torch.Tensor:
    """The emulated kernel's output for ``x`` (a strided [rows, K] view is sent as its storage)
    and ``w``, in an output whose rows are ``out_pad`` columns longer; returns the whole buffer
    [rows, n + out_pad] (cells past the last row's n are the sentinel)."""
    rows, k = x.shape
    n = w.shape[0] // 2 if glu else w.shape[0]
    dtype = next(name for name, d in DTYPES.items() if d == x.dtype)
    x_stride = x.stride(0)
    flat_x = x.as_strided(((rows - 1) * x_stride + k,), (1,))
    out_stride = n + out_pad
    out = torch.full((rows * out_stride,), SENTINEL, dtype=x.dtype)
    (tmp / "x.bin").write_bytes(_bits(flat_x))
    (tmp / "w.bin").write_bytes(_bits(w))
    (tmp / "out.bin").write_bytes(_bits(out[: (rows - 1) * out_stride + n]))
    args = [str(driver), str(tmp), dtype, str(int(glu)), str(warps), str(tiles), str(rows), str(n),
            str(k), str(x_stride), str(out_stride)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    written = np.frombuffer((tmp / "out.bin").read_bytes(), dtype=np.int16).copy()
    out[: written.size] = torch.from_numpy(written).view(x.dtype)
    return out.view(rows, out_stride)


def _operands(rows: int, n: int, k: int, dtype: torch.dtype, seed: int):
    gen = torch.Generator().manual_seed(seed)
    storage = torch.randn(rows, k + 16, generator=gen).to(dtype)
    x = storage[:, :k]  # row stride k + 16: a multiple of 8, as the kernel requires
    w = (torch.randn(n, k, generator=gen) / 4).to(dtype)
    return x, w


CONFIGS = [(4, 1), (8, 1), (4, 2), (8, 2)]  # gpu_linear.MMA_CONFIGS
# 40 columns: 2.5 tiles of 16 (GLU: 20 outputs, 2.5 tiles of 8); K 96: 3 steps of 32, so of 8
# warps five have none; K 512: 16 steps, several rounds of loads in flight per warp.
SHAPES = [(40, 96), (72, 512)]


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("rows", [1, 3, 8, 9, 16])
@pytest.mark.parametrize("warps,tiles", CONFIGS)
@pytest.mark.parametrize("n,k", SHAPES)
def test_the_kernel_source_matches_float64(driver, tmp_path, dtype, rows, warps, tiles, n, k):
    x, w = _operands(rows, n, k, DTYPES[dtype], seed=rows * 31 + n + k)
    out = run_kernel(driver, tmp_path, x, w, glu=False, warps=warps, tiles=tiles)
    assert_matmul_matches_float64(x, w, out[:, :n])
    assert bool((out[:, n:] == SENTINEL).all()), "the kernel wrote past its last column"


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("rows", [1, 9, 16])
@pytest.mark.parametrize("warps,tiles", CONFIGS)
def test_the_gate_up_epilogue_is_silu_of_the_rounded_halves(driver, tmp_path, dtype, rows, warps,
                                                           tiles):
    """weight = [gate; up]: out = silu(round(x @ gate.T)) * round(x @ up.T), rounded — what the
    separate silu_and_mul computes from the plain kernel's stored output."""
    d, k = 40, 512
    x, w = _operands(rows, 2 * d, k, DTYPES[dtype], seed=rows + warps * 3 + tiles)
    fused = run_kernel(driver, tmp_path, x, w, glu=True, warps=warps, tiles=tiles)
    plain = run_kernel(driver, tmp_path, x, w, glu=False, warps=warps, tiles=tiles)[:, : 2 * d]
    gate, up = plain.float().split(d, dim=1)
    expected = (F.silu(gate) * up).to(x.dtype)
    ulp = torch.finfo(x.dtype).eps
    torch.testing.assert_close(fused[:, :d].float(), expected.float(), rtol=2 * ulp, atol=1e-4)
    assert bool((fused[:, d:] == SENTINEL).all()), "the kernel wrote past its last output"


def test_a_kernel_that_feeds_the_wrong_fragment_is_caught(tmp_path):
    """The emulation can fail: the kernel with the x values of its first MMA handed over in the
    other order (its B fragments no longer holding the k of its A fragments) gives wrong sums."""
    source = (KERNELS / "mma_linear_kernel.cuh").read_text()
    right = "mma_m16n8k16<T>(acc, wa.x, wb.x, wa.y, wb.y, xv.x, xv.y);"
    assert source.count(right) == 1
    mutant = tmp_path / "mutant"
    mutant.mkdir()
    (mutant / "mma_linear_kernel.cuh").write_text(
        source.replace(right, right.replace("xv.x, xv.y", "xv.y, xv.x")))
    shutil.copy(KERNELS / "device_utils.cuh", mutant)
    binary = build_driver(mutant, tmp_path / "mutant_driver")
    x, w = _operands(4, 40, 96, torch.bfloat16, seed=3)
    out = run_kernel(binary, tmp_path, x, w, glu=False, warps=4, tiles=1)
    with pytest.raises(AssertionError, match="relative error"):
        assert_matmul_matches_float64(x, w, out[:, :40])
