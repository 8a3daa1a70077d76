"""The measured small-batch GEMM choice, kept on disk so that every run on a machine uses the same.

``layers/gpu_linear.py`` times cuBLAS against our kernels at warm-up. Where two are within noise
the winner can differ from one run to the next, and the two sum in different orders, so bf16
greedy tokens could change between runs. Like Triton's autotuner, the first measurement is
written to ``$LIGHTVLLM_CACHE/gpu_linear_choices.json`` under a key naming everything it depends
on (GPU, torch and CUDA versions, the CUDA kernels' source, dtype, mode, weight shape, row
buckets); later runs read it back instead of measuring. Delete the file, or set
``LIGHTVLLM_GPU_LINEAR_CACHE=0``, to measure again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from pathlib import Path

from shared.paths import cache_dir

logger = logging.getLogger(__name__)

ENV_VAR = "LIGHTVLLM_GPU_LINEAR_CACHE"
FILE_NAME = "gpu_linear_choices.json"


def enabled() -> bool:
    return os.environ.get(ENV_VAR, "1") != "0"


def path() -> Path:
    return cache_dir() / FILE_NAME


@functools.lru_cache(maxsize=1)
def kernels_source_hash() -> str:
    """A short hash of the CUDA kernels' source: a choice measured for other kernels is stale."""
    from ..ops import extension

    digest = hashlib.sha256()
    for source in sorted((extension.CSRC / "cuda").glob("*.cu")):
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def key(device_name: str, versions: str, dtype: str, mode: str, shape: tuple[int, int],
        buckets: tuple[int, ...]) -> str:
    return "|".join([device_name, versions, kernels_source_hash(), dtype, mode,
                     f"{shape[0]}x{shape[1]}", ",".join(map(str, buckets))])


def _read() -> dict:
    try:
        data = json.loads(path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def load(entry_key: str) -> dict | None:
    """``{"picks": {bucket: label}, "timings_us": {bucket: {label: µs}}}`` or None."""
    if not enabled():
        return None
    entry = _read().get(entry_key)
    if not isinstance(entry, dict) or not isinstance(entry.get("picks"), dict):
        return None
    return entry


def store(entry_key: str, picks: dict[int, str], timings_us: dict[int, dict[str, float]]) -> None:
    """Add one entry (other entries are kept; the file is replaced atomically)."""
    if not enabled():
        return
    data = _read()
    data[entry_key] = {"picks": {str(b): label for b, label in picks.items()},
                       "timings_us": {str(b): t for b, t in timings_us.items()}}
    target = path()
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, target)
    except OSError as error:  # a read-only cache costs a measurement per run, nothing else
        logger.warning("could not write %s: %s", target, error)
