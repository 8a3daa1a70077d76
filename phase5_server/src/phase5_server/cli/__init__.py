"""Command-line entry points behind ``lightvllm serve``, ``chat`` and ``bench serve``."""
