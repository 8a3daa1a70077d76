"""LightvLLM's common code, used by every phase: where things are cached, the model registry
(the embedded SmolLM2 model and local HF directories), test fixtures and benchmark helpers."""

from .paths import cache_dir
from .model_registry import DEFAULT_MODEL, resolve_model

__all__ = ["cache_dir", "DEFAULT_MODEL", "resolve_model"]
