from .llama import LlamaForCausalLM, LlamaModel

__all__ = ["LlamaForCausalLM", "LlamaModel"]
