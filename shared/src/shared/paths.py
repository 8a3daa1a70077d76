"""The one cache directory of LightvLLM (converted models, built extensions)."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "LIGHTVLLM_CACHE"


def cache_dir(*parts: str) -> Path:
    """``$LIGHTVLLM_CACHE`` (default ``~/.cache/lightvllm``) joined with ``parts``, created."""
    root = Path(os.environ.get(ENV_VAR) or Path.home() / ".cache" / "lightvllm")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
