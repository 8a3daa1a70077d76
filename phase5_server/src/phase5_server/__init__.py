"""LightvLLM phase 5: the OpenAI-compatible server (``lightvllm serve``), its Prometheus metrics,
the ``bench serve`` load generator and a terminal chat.

The names below load on first use (PEP 562), so that ``lightvllm serve`` can start the engine
process before it imports torch and FastAPI (``cli/serve.py``)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api_server import ServerConfig, build_app, run_server

__all__ = ["ServerConfig", "build_app", "run_server"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module(".api_server", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
