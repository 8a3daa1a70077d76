"""Command-line entry points behind ``lightvllm serve``, ``lightvllm chat`` and ``lightvllm bench serve``."""
