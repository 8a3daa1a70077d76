"""Building, loading and choosing the C++ extension."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from phase1_kernels.ops import extension, resolve_impl, triton_ops

ROOT = Path(__file__).resolve().parents[2]


def test_cpu_kernels_are_available_and_registered():
    assert extension.load(), extension.why_unavailable("cpu")
    assert extension.is_available("cpu")
    assert extension.why_unavailable("cpu") == ""
    for name in ("rms_norm", "fused_add_rms_norm", "rotary_embedding", "silu_and_mul", "vector_add"):
        assert hasattr(torch.ops.lightvllm, name)
    assert resolve_impl("cpp", "cpu") == "cpp"
    assert resolve_impl("auto", "cpu") == "cpp"


def test_cuda_kernels_report_why_not():
    if torch.cuda.is_available() and torch.version.cuda and extension.find_nvcc():
        assert extension.is_available("cuda"), extension.why_unavailable("cuda")
    else:
        assert not extension.is_available("cuda")
        assert extension.why_unavailable("cuda")


def test_cuda_home_found_behind_an_nvcc_wrapper(tmp_path, monkeypatch):
    """An ``nvcc`` on PATH that is a wrapper script: its own parent has no runtime library, so
    the toolkit is the known directory that has one (linking ``-lcudart`` fails otherwise)."""
    wrapper = tmp_path / "local" / "bin" / "nvcc"
    wrapper.parent.mkdir(parents=True)
    wrapper.write_text("#!/bin/sh\nexec /opt/toolkit/bin/nvcc \"$@\"\n")
    toolkit = tmp_path / "cuda-13.0"
    (toolkit / "lib").mkdir(parents=True)
    (toolkit / "lib" / "libcudart.so").touch()
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.setattr(extension, "TOOLKIT_DIRS", (tmp_path / "missing", toolkit))
    assert extension._cuda_home_for(str(wrapper)) == str(toolkit)
    (tmp_path / "local" / "lib64").mkdir()
    (tmp_path / "local" / "lib64" / "libcudart.so").touch()  # a real toolkit at nvcc's parent
    assert extension._cuda_home_for(str(wrapper)) == str(tmp_path / "local")
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "chosen"))
    assert extension._cuda_home_for(str(wrapper)) == str(tmp_path / "chosen")


def test_unknown_device_type():
    assert not extension.is_available("meta")
    assert "meta" in extension.why_unavailable("meta")


def test_the_baton_style_matches_this_torch():
    from torch.utils import cpp_extension

    source = Path(cpp_extension.__file__).read_text()
    assert extension._baton_is_a_file(cpp_extension) == ("FileBaton(" in source)


def test_build_tag_tracks_sources_and_versions():
    cpu, cuda = extension._sources()
    tag = extension._build_tag(cpu, False, "")
    assert tag.startswith(f"torch{torch.__version__}".replace("+", "_")) and "-cpu-" in tag
    assert tag == extension._build_tag(cpu, False, "")


def test_triton_availability_matches_environment():
    if torch.cuda.is_available():
        assert triton_ops.is_available("cuda")
    interp = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    assert triton_ops.is_available("cpu") == interp
    if not interp:
        assert "TRITON_INTERPRET" in triton_ops.why_unavailable("cpu")


def test_disabled_by_env_falls_back_with_one_line():
    env = dict(os.environ, LIGHTVLLM_NO_EXTENSION="1",
               PYTHONPATH=os.pathsep.join([str(ROOT / "shared" / "src"),
                                           str(ROOT / "phase1_kernels" / "src"),
                                           os.environ.get("PYTHONPATH", "")]))
    code = ("from phase1_kernels.ops import extension, resolve_impl\n"
            "assert not extension.load()\n"
            "assert 'LIGHTVLLM_NO_EXTENSION' in extension.why_unavailable('cpu')\n"
            "assert resolve_impl('auto', 'cpu') in ('native', 'triton')\n")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "lightvllm" in ln]
    assert len(lines) == 1, proc.stderr


@pytest.mark.parametrize("stale_baton", [True, False], ids=["file_baton", "advisory_lock"])
def test_a_build_killed_earlier_does_not_block_the_next(tmp_path, stale_baton, caplog):
    """torch's baton file left by a killed build is removed under our flock (a hang before); a
    torch that locks the file instead (2.14) keeps it after every build: left alone, no warning."""
    from phase1_kernels.ops.extension import _exclusive_build

    import fcntl

    (tmp_path / "lock").write_text("")
    with caplog.at_level("WARNING", logger="phase1_kernels.ops.extension"):
        with _exclusive_build(tmp_path, stale_baton=stale_baton):
            assert (tmp_path / "lock").exists() != stale_baton
            assert bool(caplog.records) == stale_baton
            with open(tmp_path / "lightvllm.flock") as other:  # held: a second builder waits
                with pytest.raises(BlockingIOError):
                    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(tmp_path / "lightvllm.flock") as other:  # released after the build
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
