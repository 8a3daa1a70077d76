"""Repository-wide pytest setup: markers and the CPU defaults every phase's tests rely on."""

import gc
import os
import platform

import pytest
import torch

if not torch.cuda.is_available():
    # Triton kernels run on the CPU only through its interpreter; set before triton is imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")
torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter):
    """The machine the numbers came from, after the short summary, where a CI log's tail shows
    it: float32 results differ in their last bits by CPU (and its ISA picks torch's kernels).
    The outermost wrapper: its code after ``yield`` runs after every other summary."""
    result = yield
    model = next((line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")),
                 platform.machine())
    terminalreporter.write_line(
        f"cpu: {model} ({platform.machine()}), {os.cpu_count()} cores; torch {torch.__version__}, "
        f"{torch.backends.cpu.get_cpu_capability()} kernels, {torch.get_num_threads()} threads")
    return result


def _cpuinfo() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read().splitlines()
    except OSError:
        return []


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _heap_back_to_the_collector():
    """A GPU engine freezes the heap until its shutdown (phase3_scheduling/gc_heap.py): a test
    that drops one without shutting it down must not leave the heap frozen, its engine's
    reference cycles (and their GPU memory) uncollectable, for the rest of the run."""
    yield
    if gc.get_freeze_count():
        gc.unfreeze()


@pytest.fixture(scope="session")
def smollm2_dir():
    """The embedded SmolLM2-135M-Instruct as an HF directory (converted once, then cached)."""
    from shared.model_registry import resolve_model

    return resolve_model()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A random 2-layer GQA LLaMA checkpoint written by transformers."""
    from shared.fixtures import write_random_llama

    return write_random_llama(tmp_path_factory.mktemp("tiny_llama"))
