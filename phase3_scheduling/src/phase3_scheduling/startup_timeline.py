"""Start-up timeline: named phases in the order they ran, each in seconds.

The engine (executor, worker, engine-core process) and the API process each time their own
phases; the engine's travel to the API process in its ready message as a plain ``dict[str,
float]``, so one log line (and ``GET /startup``) shows where the seconds to "healthy" went.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Iterator, Mapping


class StartupTimeline:
    """Phases in insertion order; timing a phase twice adds the seconds up."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        self.phases[name] = self.phases.get(name, 0.0) + max(seconds, 0.0)

    def update(self, phases: Mapping[str, float]) -> None:
        for name, seconds in phases.items():
            self.add(name, seconds)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def total(self) -> float:
        return sum(self.phases.values())


def format_phases(phases: Mapping[str, float]) -> str:
    """``name 1.23 s, other 0.05 s`` in the given order (one log line)."""
    return ", ".join(f"{name} {seconds:.2f} s" for name, seconds in phases.items())


def process_age() -> float | None:
    """Seconds since this process started (Linux ``/proc``, 10 ms ticks; None where that is
    unreadable): interpreter start-up and imports before the first line that can time itself."""
    try:
        with open("/proc/self/stat") as stat_file:
            fields = stat_file.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as uptime_file:
            uptime = float(uptime_file.read().split()[0])
    except (OSError, IndexError, ValueError):
        return None
    started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start, in ticks since boot
    return max(uptime - started, 0.0)
