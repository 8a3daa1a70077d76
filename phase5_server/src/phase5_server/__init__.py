"""LightvLLM phase 5: the OpenAI-compatible server (``lightvllm serve``), its Prometheus metrics,
the ``bench serve`` load generator and a terminal chat."""

from .api_server import ServerConfig, build_app, run_server

__all__ = ["ServerConfig", "build_app", "run_server"]
