"""LightvLLM phase 1: kernels (C++/CUDA/Triton/native), LLaMA's layers, the model, the
safetensors loader and ``LightvLLM.from_pretrained`` (HF-verified)."""

from .config import LLAMA_3_1_8B, ModelConfig
from .inference import CausalLMOutput, LightvLLM
from .layers.attention import AttentionBackend, AttentionMetadata, register_backend
from .loader import build_model
from .models.llama import LlamaForCausalLM

__all__ = [
    "LLAMA_3_1_8B", "ModelConfig", "CausalLMOutput", "LightvLLM", "AttentionBackend",
    "AttentionMetadata", "register_backend", "build_model", "LlamaForCausalLM",
]
