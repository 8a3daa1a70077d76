"""A step's output before it is read: what lets the engine launch step N+1 while step N runs.

On a GPU the sampled ids (and logprobs) are copied to pinned host memory on a side stream that
waits only for the sampler's kernels, so the main stream goes straight on to the next step;
``result()`` waits for that copy alone and builds the wire message. On the CPU everything has
already run and ``result()`` just converts.
"""

from __future__ import annotations

import time
from typing import Protocol

import torch

from ..protocol import ModelRunnerOutput, SampledLogprobs
from ..sampler import DeviceSample


class StepOutput(Protocol):
    def result(self) -> ModelRunnerOutput: ...


class ReadyOutput:
    """An output with nothing left to wait for (empty steps, mid-prompt chunks)."""

    def __init__(self, output: ModelRunnerOutput):
        self.output = output

    def result(self) -> ModelRunnerOutput:
        return self.output


class AsyncStepOutput:
    """Sampled rows on their way to the host; ``timings[kind + "_wait"]`` gets the seconds
    ``result()`` waited for the device."""

    def __init__(self, req_ids: list[str], sample: DeviceSample,
                 copy_stream: torch.cuda.Stream | None, timings: dict[str, float], kind: str):
        self.req_ids = req_ids
        self.timings, self.kind = timings, kind
        self._done: torch.cuda.Event | None = None
        self._output: ModelRunnerOutput | None = None
        if copy_stream is None:  # CPU: the values are there already
            self._sample = sample
            return
        copy_stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(copy_stream):
            self._sample = sample.copy_to_host()
            self._done = torch.cuda.Event()
            self._done.record(copy_stream)
        for tensor in sample.tensors():  # made on the main stream, read on the copy stream
            tensor.record_stream(copy_stream)

    def result(self) -> ModelRunnerOutput:
        if self._output is None:
            start = time.perf_counter()
            if self._done is not None:
                self._done.synchronize()
            self.timings[self.kind + "_wait"] += time.perf_counter() - start
            self._output = runner_output(self.req_ids, self._sample)
        return self._output


def runner_output(req_ids: list[str], sample: DeviceSample) -> ModelRunnerOutput:
    """The wire form of a step's samples (host tensors or lists)."""
    result = sample.to_host()
    logprobs = None
    if result.logprobs is not None:  # then the sampler filled ranks and top_logprobs too
        assert result.ranks is not None and result.top_logprobs is not None
        logprobs = SampledLogprobs(result.logprobs, result.ranks,
                                   [[t for t, _ in top] for top in result.top_logprobs],
                                   [[lp for _, lp in top] for top in result.top_logprobs])
    return ModelRunnerOutput(req_ids, result.token_ids, logprobs)
