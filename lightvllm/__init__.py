"""LightvLLM's public API, re-exported from the phase packages (names follow vLLM)."""

from phase1_kernels import LightvLLM, LlamaForCausalLM, ModelConfig

__all__ = ["LightvLLM", "LlamaForCausalLM", "ModelConfig"]
