"""A garbage-collector probe for every Python process of a run (the server's API and engine-core
processes, the benchmark client): put this directory first on ``PYTHONPATH`` and each process
records its collections (count, total and longest pause per generation, and every full
collection or pause over 5 ms with its wall-clock time), written at exit as
``$GC_PROBE_OUT/<pid>.json``.

    mkdir -p /tmp/gc && GC_PROBE_OUT=/tmp/gc PYTHONPATH=phase5_server/benchmarks/gc_probe \\
        python phase5_server/benchmarks/run_b4.py --preset cpu-api --out /tmp/gc/b4.json

How docs/benchmarks.md found the full collections that gc.freeze made frequent in the API
process ("The API process's choices, measured").
"""

import atexit
import gc
import json
import os
import sys
import time

_OUT = os.environ.get("GC_PROBE_OUT", "/tmp")
_per_generation = {g: {"count": 0, "seconds": 0.0, "max_seconds": 0.0} for g in range(3)}
_long_pauses: list = []
_started = [0.0]


def _on_collection(phase: str, info: dict) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
        return
    pause = time.perf_counter() - _started[0]
    stats = _per_generation[info["generation"]]
    stats["count"] += 1
    stats["seconds"] += pause
    stats["max_seconds"] = max(stats["max_seconds"], pause)
    if info["generation"] == 2 or pause > 0.005:
        _long_pauses.append({"time": round(time.time(), 3), "generation": info["generation"],
                             "ms": round(pause * 1e3, 2), "collected": info.get("collected")})


def _write() -> None:
    record = {"argv": sys.argv[:3], "frozen": gc.get_freeze_count(), "threshold": gc.get_threshold(),
              "per_generation": _per_generation, "long_pauses": _long_pauses}
    with open(os.path.join(_OUT, f"{os.getpid()}.json"), "w") as handle:
        json.dump(record, handle, indent=1)


gc.callbacks.append(_on_collection)
atexit.register(_write)
