"""The batched sampler: one pass over a step's logits on the device.

Order, as in vLLM: raw logprobs (what ``logprobs`` returns) -> min_tokens mask -> repetition,
frequency and presence penalties -> greedy argmax, or temperature -> top-k -> top-p -> min-p ->
sample. Sampling draws ``argmax(p / q)`` with ``q ~ Exp(1)`` (the Gumbel-max trick, same
distribution as multinomial); a request with a seed draws its ``q`` from its own generator, so
its samples do not depend on which other requests share the batch.

Nothing here waits for the device: every decision is taken from the parameters on the host and
small parameter tensors go up from pinned memory without blocking, so the engine can launch the
next step before this one's tokens are read (``DeviceSample`` holds them on the device;
``to_host`` is where the waiting happens).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import torch

from .protocol import WireSamplingParams
from .sampling_params import SamplingParams

logger = logging.getLogger(__name__)


@dataclass
class SamplingInputs:
    """What the sampler needs about the requests behind each row of logits."""

    params: list[SamplingParams | WireSamplingParams]  # the runner's come from the step
    output_token_ids: list[list[int]]  # empty lists allowed unless needs_token_history(params)
    prompt_token_ids: list[list[int]]
    generators: list[torch.Generator | None]
    min_tokens_block: list[list[int]]  # per row: ids to forbid (eos, stop ids) until min_tokens


def needs_token_history(params: Sequence[SamplingParams | WireSamplingParams]) -> bool:
    """Whether any row's penalties read its prompt and output ids (``SamplingInputs``' token
    lists); without penalties the caller may pass empty lists and copy nothing each step."""
    return any(p.repetition_penalty != 1 or p.frequency_penalty or p.presence_penalty
               for p in params)


@dataclass
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[float] | None  # logprob of each sampled token (raw model distribution)
    ranks: list[int] | None  # its rank in that distribution (1 = most likely)
    top_logprobs: list[list[tuple[int, float]]] | None  # per row, top-k (id, logprob)


@dataclass
class DeviceSample:
    """A step's sampled tokens (and logprobs when asked), where they were computed: on a GPU
    nothing has been waited for yet."""

    token_ids: torch.Tensor  # [rows] int64
    num_top: list[int]  # per row: how many top logprobs were asked (0: none)
    chosen: torch.Tensor | None = None  # [rows] logprob of the sampled token
    ranks: torch.Tensor | None = None  # [rows] its rank (1 = most likely)
    top_ids: torch.Tensor | None = None  # [rows, k]
    top_values: torch.Tensor | None = None

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.token_ids, self.chosen, self.ranks, self.top_ids,
                            self.top_values) if t is not None]

    def copy_to_host(self) -> "DeviceSample":
        """GPU tensors: start copies into pinned host memory on the current stream (no
        waiting; ``to_host`` after the stream's work is done reads them)."""
        def host(t: torch.Tensor) -> torch.Tensor:
            return torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t, non_blocking=True)

        def maybe(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else host(t)

        return DeviceSample(host(self.token_ids), self.num_top, maybe(self.chosen),
                            maybe(self.ranks), maybe(self.top_ids), maybe(self.top_values))

    def to_host(self) -> SamplerOutput:
        """Plain lists (waits for the device if the tensors are still there)."""
        out = SamplerOutput(self.token_ids.tolist(), None, None, None)
        if self.chosen is not None and self.ranks is not None:
            out.logprobs = self.chosen.tolist()
            out.ranks = self.ranks.tolist()
            ids = self.top_ids.tolist() if self.top_ids is not None else []
            values = self.top_values.tolist() if self.top_values is not None else []
            out.top_logprobs = [list(zip(ids[i][:k], values[i][:k])) if k else []
                                for i, k in enumerate(self.num_top)]
        return out


def device_tensor(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small host list on ``device`` without blocking the host (pinned, non-blocking)."""
    if device.type != "cuda":
        return torch.tensor(values, dtype=dtype, device=device)
    return torch.tensor(values, dtype=dtype, pin_memory=True).to(device, non_blocking=True)


class Sampler:
    @torch.inference_mode()
    def __call__(self, logits: torch.Tensor, inputs: SamplingInputs) -> SamplerOutput:
        return self.sample_on_device(logits, inputs).to_host()

    @torch.inference_mode()
    def sample_on_device(self, logits: torch.Tensor, inputs: SamplingInputs) -> DeviceSample:
        device = logits.device
        params = inputs.params
        want_logprobs = any(p.logprobs is not None for p in params)
        raw_logprobs = torch.log_softmax(logits, dim=-1) if want_logprobs else None

        if any(inputs.min_tokens_block):
            logits = logits.clone()
            for i, block in enumerate(inputs.min_tokens_block):
                if block:
                    logits[i].index_fill_(0, device_tensor(block, torch.long, device),
                                          float("-inf"))
        self._apply_penalties(logits, inputs)

        token_ids = logits.argmax(dim=-1)
        if not all(p.greedy for p in params):  # decided on the host: no device sync
            greedy = device_tensor([p.greedy for p in params], torch.bool, device)
            sampled = self._sample(logits, params, inputs.generators)
            token_ids = torch.where(greedy, token_ids, sampled)

        num_top = [p.logprobs or 0 for p in params]
        out = DeviceSample(token_ids, num_top)
        if raw_logprobs is not None:  # i.e. want_logprobs
            out.chosen = raw_logprobs.gather(1, token_ids.unsqueeze(1)).squeeze(1)
            out.ranks = (raw_logprobs > out.chosen.unsqueeze(1)).sum(dim=-1) + 1
            if max(num_top):
                top = raw_logprobs.topk(max(num_top), dim=-1)
                out.top_ids, out.top_values = top.indices, top.values
        return out

    @staticmethod
    def _apply_penalties(logits: torch.Tensor, inputs: SamplingInputs) -> None:
        params = inputs.params
        rows, vocab = logits.shape
        if not needs_token_history(params):
            return
        device = logits.device
        width = max(1, max(len(o) for o in inputs.output_token_ids))
        padded = [list(ids) + [vocab] * (width - len(ids)) for ids in inputs.output_token_ids]
        out_ids = device_tensor(padded, torch.long, device)
        counts = torch.zeros(rows, vocab + 1, device=device)
        counts.scatter_add_(1, out_ids, torch.ones_like(out_ids, dtype=counts.dtype))
        counts = counts[:, :vocab]
        if any(p.repetition_penalty != 1 for p in params):
            rep = device_tensor([p.repetition_penalty for p in params], torch.float32,
                                device).unsqueeze(1)
            seen = counts > 0
            for i, ids in enumerate(inputs.prompt_token_ids):
                if params[i].repetition_penalty != 1 and ids:
                    seen[i].index_fill_(0, device_tensor(ids, torch.long, device), True)
            penalised = torch.where(logits > 0, logits / rep, logits * rep)
            logits.copy_(torch.where(seen, penalised, logits))
        freq = device_tensor([p.frequency_penalty for p in params], torch.float32,
                             device).unsqueeze(1)
        pres = device_tensor([p.presence_penalty for p in params], torch.float32,
                             device).unsqueeze(1)
        logits -= freq * counts + pres * (counts > 0).to(logits.dtype)

    @staticmethod
    def _sample(logits: torch.Tensor, params: list[SamplingParams | WireSamplingParams],
                generators: list[torch.Generator | None]) -> torch.Tensor:
        device = logits.device
        temps = device_tensor([p.temperature if not p.greedy else 1.0 for p in params],
                              torch.float32, device)
        logits = logits / temps.unsqueeze(1)
        vocab = logits.shape[1]
        top_k = device_tensor([p.top_k if 0 < p.top_k < vocab else vocab for p in params],
                              torch.long, device)
        top_p = device_tensor([p.top_p for p in params], torch.float32, device)
        min_p = device_tensor([p.min_p for p in params], torch.float32, device)
        if any(0 < p.top_k < vocab or p.top_p < 1 for p in params):
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            ranks = torch.arange(vocab, device=device).unsqueeze(0)
            sorted_logits = sorted_logits.masked_fill(ranks >= top_k.unsqueeze(1), float("-inf"))
            probs = sorted_logits.softmax(dim=-1)
            # drop a token when the tokens ranked above it already reach top_p
            before = probs.cumsum(dim=-1) - probs
            sorted_logits = sorted_logits.masked_fill(before >= top_p.unsqueeze(1), float("-inf"))
            logits = torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
        probs = logits.softmax(dim=-1)
        if any(p.min_p > 0 for p in params):
            threshold = min_p.unsqueeze(1) * probs.max(dim=-1, keepdim=True).values
            probs = probs.masked_fill(probs < threshold, 0.0)
        noise = torch.empty_like(probs)
        if any(g is None for g in generators):
            noise.exponential_()  # seeded rows are redrawn from their own generators below
        for i, gen in enumerate(generators):
            if gen is not None:
                noise[i].exponential_(generator=gen)
        return (probs / noise).argmax(dim=-1)
