import pytest

from phase3_scheduling import LLM


def pool_is_full(llm: LLM) -> bool:
    return llm.engine.kv_manager.all_blocks_free and not llm.engine.has_unfinished_requests()


@pytest.fixture(scope="session")
def smol_llm(smollm2_dir):
    """The embedded model behind the engine with default settings (CPU, fp32)."""
    llm = LLM(str(smollm2_dir), kv_cache_gib=0.25)
    yield llm
    assert pool_is_full(llm), "a test leaked KV blocks"


@pytest.fixture(scope="session")
def hf_smol(smollm2_dir):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()


@pytest.fixture
def benchmark_script():
    """``benchmark_script("b2_step_profile")``: a script of phase3_scheduling/benchmarks/ loaded
    as a module (the benchmarks are scripts, not a package)."""
    import importlib.util
    import sys
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "benchmarks"

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while it executes
        spec.loader.exec_module(module)
        return module

    return load
