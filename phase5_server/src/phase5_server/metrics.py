"""Prometheus metrics with vLLM's names, written in the text exposition format by hand.

Latency histograms are observed by the serving code as outputs reach the HTTP side (what a client
sees); gauges and token counters are read from ``AsyncLLMEngine.stats()`` at scrape time, so the
engine thread does no metrics work at all.
"""

from __future__ import annotations

import bisect
import re
import threading
import time

from phase3_scheduling.step_timeline import KINDS, StepCounters

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
               10.0, 20.0, 40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
               120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)


class Histogram:
    def __init__(self, name: str, doc: str, buckets: tuple[float, ...]):
        self.name, self.doc, self.buckets = name, doc, buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0
        self._lock = threading.Lock()

    def observe(self, value: float, times: int = 1) -> None:
        with self._lock:
            self.counts[bisect.bisect_left(self.buckets, value)] += times
            self.sum += value * times
            self.count += times

    def render(self, labels: str) -> list[str]:
        lines = [f"# HELP {self.name} {self.doc}", f"# TYPE {self.name} histogram"]
        running = 0
        for bound, n in zip(self.buckets, self.counts):
            running += n
            lines.append(f'{self.name}_bucket{{{labels},le="{bound}"}} {running}')
        lines.append(f'{self.name}_bucket{{{labels},le="+Inf"}} {self.count}')
        lines.append(f"{self.name}_sum{{{labels}}} {self.sum}")
        lines.append(f"{self.name}_count{{{labels}}} {self.count}")
        return lines


class RequestTimer:
    """Times one request from the HTTP side: first token, gaps between tokens, end to end."""

    def __init__(self, metrics: "ServerMetrics"):
        self.metrics = metrics
        self.start = self.last = time.monotonic()
        self.tokens = 0

    def on_tokens(self, total_tokens: int) -> None:
        new = total_tokens - self.tokens
        if new <= 0:
            return
        now = time.monotonic()
        if self.tokens == 0:
            self.metrics.ttft.observe(now - self.start)
            if new > 1:
                self.metrics.itl.observe(0.0, new - 1)
        else:
            self.metrics.itl.observe((now - self.last) / new, new)
        self.tokens, self.last = total_tokens, now

    def finish(self, reason: str | None) -> None:
        self.metrics.e2e.observe(time.monotonic() - self.start)
        self.metrics.count_finished(reason or "abort")


class ServerMetrics:
    def __init__(self, model_name: str):
        self.model_name = model_name
        self.ttft = Histogram("vllm:time_to_first_token_seconds",
                              "Time to first token in seconds.", TTFT_BUCKETS)
        self.itl = Histogram("vllm:inter_token_latency_seconds",
                             "Inter-token latency in seconds.", ITL_BUCKETS)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds",
                             "End-to-end request latency in seconds.", E2E_BUCKETS)
        self.finished: dict[str, int] = {}
        self.http_requests: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()

    def timer(self) -> RequestTimer:
        return RequestTimer(self)

    def count_finished(self, reason: str) -> None:
        with self._lock:
            self.finished[reason] = self.finished.get(reason, 0) + 1

    def render(self, stats) -> str:
        labels = f'model_name="{self.model_name}"'
        lines: list[str] = []

        def scalar(name: str, kind: str, doc: str, value: float) -> None:
            lines.extend([f"# HELP {name} {doc}", f"# TYPE {name} {kind}", f"{name}{{{labels}}} {value}"])

        if stats is not None:
            scalar("vllm:num_requests_running", "gauge", "Sequences in the running batch.",
                   stats.num_running)
            scalar("vllm:num_requests_waiting", "gauge", "Sequences waiting to be scheduled.",
                   stats.num_waiting)
            scalar("vllm:kv_cache_usage_perc", "gauge", "Fraction of KV-cache blocks in use (0-1).",
                   stats.kv_cache_usage)
            scalar("vllm:num_preemptions_total", "counter", "Cumulative preemptions.",
                   stats.num_preemptions)
            scalar("vllm:prompt_tokens_total", "counter", "Prompt tokens processed.",
                   stats.prompt_tokens)
            scalar("vllm:generation_tokens_total", "counter", "Generation tokens produced.",
                   stats.generation_tokens)
            scalar("vllm:prefix_cache_queries_total", "counter", "Prefix-cache block queries.",
                   stats.prefix_cache_queries)
            scalar("vllm:prefix_cache_hits_total", "counter", "Prefix-cache block hits.",
                   stats.prefix_cache_hits)
            if stats.steps is not None:
                lines.extend(_step_lines(labels, stats.steps))
        for hist in (self.ttft, self.itl, self.e2e):
            lines.extend(hist.render(labels))
        name = "vllm:request_success_total"
        lines.extend([f"# HELP {name} Finished requests by finish reason.", f"# TYPE {name} counter"])
        with self._lock:
            for reason, n in sorted(self.finished.items()):
                lines.append(f'{name}{{{labels},finished_reason="{reason}"}} {n}')
        return "\n".join(lines) + "\n"


# The engine core's step counters (phase3_scheduling/step_timeline.py), one series per step kind.
STEP_SERIES = (("lightvllm:engine_steps_total", "steps", "Engine steps by kind (decode: every "
                "row one token; mixed: a prompt or a chunk of one with the decodes)."),
               ("lightvllm:engine_step_seconds_total", "seconds", "Wall seconds of engine steps "
                "by kind (submission or the previous result, to this step's result)."),
               ("lightvllm:engine_step_rows_total", "rows", "Sequences the steps carried."),
               ("lightvllm:engine_step_prompt_tokens_total", "prompt_tokens",
                "Prompt tokens the steps carried."))


def _step_lines(labels: str, steps: StepCounters) -> list[str]:
    lines = []
    for name, field, doc in STEP_SERIES:
        lines.extend([f"# HELP {name} {doc}", f"# TYPE {name} counter"])
        for kind, value in zip(KINDS, getattr(steps, field)):
            lines.append(f'{name}{{{labels},kind="{kind}"}} {value}')
    return lines


_SERIES = re.compile(r'^(lightvllm:engine_step\w*_total)\{[^}]*kind="(\w+)"[^}]*\} (\S+)$', re.M)


def parse_step_counters(text: str) -> StepCounters | None:
    """The step counters of a ``/metrics`` page (None where the server has none, as vLLM's)."""
    fields = {name: field for name, field, _ in STEP_SERIES}
    counters, seen = StepCounters(), False
    for name, kind, value in _SERIES.findall(text):
        if name in fields and kind in KINDS:
            column = getattr(counters, fields[name])
            column[KINDS.index(kind)] = type(column[0])(float(value))
            seen = True
    return counters if seen else None
