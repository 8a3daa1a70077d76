"""The front end's half after the engine core: tokens -> text, stop strings, logprob objects, and
the children of an ``n > 1`` request gathered back into one ``RequestOutput``.

A stop string is found here, not in the core, so the core is told to abort that sequence
(``ProcessedOutputs.abort_ids``); any token the core produced meanwhile is dropped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from shared.tokenizer import Tokenizer

from .core_messages import EngineCoreOutput, TokenLogprobs
from .detokenizer import IncrementalDetokenizer
from .outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput
from .sampling_params import SamplingParams


@dataclass
class SequenceState:
    """One sample of a request, as the user will see it."""

    request_id: str  # the core's id (``parent#i`` for n > 1)
    index: int
    params: SamplingParams
    detokenizer: IncrementalDetokenizer | None
    output_token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[int, Logprob]] | None = None
    cumulative_logprob: float = 0.0
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def add_token(self, token: int, logprobs: TokenLogprobs | None) -> bool:
        """Append one token; True if a stop string completed (the sequence ends here)."""
        self.output_token_ids.append(token)
        if logprobs is not None:
            self._record_logprobs(token, logprobs)
        if self.detokenizer is None:
            return False
        check = len(self.output_token_ids) >= self.params.min_tokens
        stop = self.detokenizer.add_token(token, check_stop=check)
        if stop is None:
            return False
        self.finish_reason, self.stop_reason = "stop", stop
        return True

    def _record_logprobs(self, token: int, lp: TokenLogprobs) -> None:
        self.cumulative_logprob += lp.logprob
        if self.logprobs is None:
            return
        entry = {tid: Logprob(value, rank + 1)
                 for rank, (tid, value) in enumerate(zip(lp.top_ids, lp.top_logprobs))}
        entry.setdefault(token, Logprob(lp.logprob, lp.rank))
        self.logprobs.append(entry)

    def completion(self) -> CompletionOutput:
        text = self.detokenizer.visible_text(self.finished) if self.detokenizer else ""
        return CompletionOutput(
            index=self.index, text=text, token_ids=list(self.output_token_ids),
            cumulative_logprob=self.cumulative_logprob if self.params.logprobs is not None else None,
            logprobs=self.logprobs, finish_reason=self.finish_reason, stop_reason=self.stop_reason)


@dataclass
class RequestState:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    sequences: list[SequenceState]
    stream: bool
    metrics: RequestMetrics
    num_cached_tokens: int = 0

    num_finished: int = 0  # sequences that ended (kept by OutputProcessor._apply)

    @property
    def finished(self) -> bool:
        return self.num_finished == len(self.sequences)

    def output(self) -> RequestOutput:
        errors = [s.error for s in self.sequences if s.error]
        return RequestOutput(self.request_id, self.prompt, self.prompt_token_ids,
                             [s.completion() for s in self.sequences], self.finished,
                             metrics=self.metrics, num_cached_tokens=self.num_cached_tokens,
                             error=errors[0] if errors else None)


@dataclass
class ProcessedOutputs:
    request_outputs: list[RequestOutput]
    abort_ids: list[str]  # core sequences to stop (a stop string ended them here)


class OutputProcessor:
    def __init__(self, tokenizer: Tokenizer | None):
        self.tokenizer = tokenizer
        self.requests: dict[str, RequestState] = {}
        self._by_core_id: dict[str, tuple[RequestState, SequenceState]] = {}

    def add_request(self, request_id: str, prompt: str | None, prompt_ids: list[int],
                    params: SamplingParams, core_ids: list[str], arrival_time: float,
                    stream: bool = True) -> None:
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        sequences = []
        for index, core_id in enumerate(core_ids):
            child = params if len(core_ids) == 1 else params.child(index)
            detok = None
            if self.tokenizer is not None:
                detok = IncrementalDetokenizer(self.tokenizer, prompt_ids, child.stop_strings,
                                               child.skip_special_tokens)
            sequences.append(SequenceState(core_id, index, child, detok,
                                           logprobs=[] if child.logprobs is not None else None))
        state = RequestState(request_id, prompt, list(prompt_ids), sequences, stream,
                             RequestMetrics(arrival_time=arrival_time))
        self.requests[request_id] = state
        for seq in sequences:
            self._by_core_id[seq.request_id] = (state, seq)

    def abort_request(self, request_id: str) -> list[str]:
        """Forget a request; returns the core ids still to abort."""
        state = self.requests.pop(request_id, None)
        if state is None:
            return []
        for seq in state.sequences:
            self._by_core_id.pop(seq.request_id, None)
        return [s.request_id for s in state.sequences if not s.finished]

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def get_num_unfinished_requests(self) -> int:
        return len(self.requests)

    def process_outputs(self, outputs: list[EngineCoreOutput]) -> ProcessedOutputs:
        now = time.monotonic()
        touched: dict[str, RequestState] = {}
        aborts: list[str] = []
        for out in outputs:
            entry = self._by_core_id.get(out.request_id)
            if entry is None:
                continue  # aborted by the user meanwhile
            state, seq = entry
            if seq.finished:
                continue  # tokens after a stop string
            if self._apply(state, seq, out, now):
                aborts.append(seq.request_id)
            touched[state.request_id] = state
        results = []
        for state in touched.values():
            finished = state.finished
            if state.stream or finished:
                results.append(state.output())
            if finished:
                self._forget(state)
        return ProcessedOutputs(results, aborts)

    def _apply(self, state: RequestState, seq: SequenceState, out: EngineCoreOutput,
               now: float) -> bool:
        """One core output into its sequence; True if a stop string ended it here."""
        metrics = state.metrics
        was_finished = seq.finished
        if metrics.first_scheduled_time is None and out.first_scheduled_time is not None:
            metrics.first_scheduled_time = out.first_scheduled_time
        state.num_cached_tokens = metrics.num_cached_tokens = out.num_cached_tokens
        metrics.num_preemptions = max(metrics.num_preemptions, out.num_preemptions)
        stopped = False
        for i, token in enumerate(out.new_token_ids):
            if metrics.first_token_time is None:
                metrics.first_token_time = now
            metrics.last_token_time = now
            lp = out.logprobs[i] if out.logprobs else None
            if seq.add_token(token, lp):
                stopped = True
                break
        if not stopped and out.finish_reason is not None:
            seq.finish_reason, seq.stop_reason, seq.error = (out.finish_reason, out.stop_reason,
                                                             out.error)
        if seq.finished and not was_finished:
            state.num_finished += 1
            if state.finished:
                metrics.finished_time = now
        return stopped and out.finish_reason is None

    def _forget(self, state: RequestState) -> None:
        self.requests.pop(state.request_id, None)
        for seq in state.sequences:
            self._by_core_id.pop(seq.request_id, None)
