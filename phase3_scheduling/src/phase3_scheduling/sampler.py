"""The batched sampler: one pass over a step's logits on the device.

Order, as in vLLM: raw logprobs (what ``logprobs`` returns) -> min_tokens mask -> repetition,
frequency and presence penalties -> greedy argmax, or temperature -> top-k -> top-p -> min-p ->
sample. Sampling draws ``argmax(p / q)`` with ``q ~ Exp(1)`` (the Gumbel-max trick, same
distribution as multinomial); a request with a seed draws its ``q`` from its own generator, so
its samples do not depend on which other requests share the batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from .protocol import WireSamplingParams
from .sampling_params import SamplingParams

logger = logging.getLogger(__name__)


@dataclass
class SamplingInputs:
    """What the sampler needs about the requests behind each row of logits."""

    params: list[SamplingParams | WireSamplingParams]  # the runner's come from the step
    output_token_ids: list[list[int]]
    prompt_token_ids: list[list[int]]
    generators: list[torch.Generator | None]
    min_tokens_block: list[list[int]]  # per row: ids to forbid (eos, stop ids) until min_tokens


@dataclass
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[float] | None  # logprob of each sampled token (raw model distribution)
    ranks: list[int] | None  # its rank in that distribution (1 = most likely)
    top_logprobs: list[list[tuple[int, float]]] | None  # per row, top-k (id, logprob)


class Sampler:
    @torch.inference_mode()
    def __call__(self, logits: torch.Tensor, inputs: SamplingInputs) -> SamplerOutput:
        rows, vocab = logits.shape
        device = logits.device
        params = inputs.params
        want_logprobs = any(p.logprobs is not None for p in params)
        raw_logprobs = torch.log_softmax(logits, dim=-1) if want_logprobs else None

        if any(inputs.min_tokens_block):
            logits = logits.clone()
            for i, block in enumerate(inputs.min_tokens_block):
                if block:
                    logits[i, block] = float("-inf")
        self._apply_penalties(logits, inputs)

        token_ids = logits.argmax(dim=-1)
        if not all(p.greedy for p in params):  # decided on the host: no device sync
            greedy = torch.tensor([p.greedy for p in params], device=device)
            sampled = self._sample(logits, params, inputs.generators)
            token_ids = torch.where(greedy, token_ids, sampled)

        out = SamplerOutput(token_ids.tolist(), None, None, None)
        if raw_logprobs is not None:  # i.e. want_logprobs
            chosen = raw_logprobs.gather(1, token_ids.unsqueeze(1)).squeeze(1)
            k = max(p.logprobs or 0 for p in params)
            top = raw_logprobs.topk(k, dim=-1) if k else None
            out.logprobs = chosen.tolist()
            out.ranks = ((raw_logprobs > chosen.unsqueeze(1)).sum(dim=-1) + 1).tolist()
            out.top_logprobs = [
                list(zip(top.indices[i, : p.logprobs or 0].tolist(), top.values[i, : p.logprobs or 0].tolist()))
                if top is not None else [] for i, p in enumerate(params)
            ]
        return out

    @staticmethod
    def _apply_penalties(logits: torch.Tensor, inputs: SamplingInputs) -> None:
        params = inputs.params
        rows, vocab = logits.shape
        if not any(p.repetition_penalty != 1 or p.frequency_penalty or p.presence_penalty for p in params):
            return
        device = logits.device
        width = max(1, max(len(o) for o in inputs.output_token_ids))
        out_ids = torch.full((rows, width), vocab, dtype=torch.long, device=device)
        for i, ids in enumerate(inputs.output_token_ids):
            if ids:
                out_ids[i, : len(ids)] = torch.tensor(ids, device=device)
        counts = torch.zeros(rows, vocab + 1, device=device)
        counts.scatter_add_(1, out_ids, torch.ones_like(out_ids, dtype=counts.dtype))
        counts = counts[:, :vocab]
        rep = torch.tensor([p.repetition_penalty for p in params], device=device).unsqueeze(1)
        if bool((rep != 1).any()):
            seen = counts > 0
            for i, ids in enumerate(inputs.prompt_token_ids):
                if params[i].repetition_penalty != 1 and ids:
                    seen[i, torch.tensor(ids, device=device)] = True
            penalised = torch.where(logits > 0, logits / rep, logits * rep)
            logits.copy_(torch.where(seen, penalised, logits))
        freq = torch.tensor([p.frequency_penalty for p in params], device=device).unsqueeze(1)
        pres = torch.tensor([p.presence_penalty for p in params], device=device).unsqueeze(1)
        logits -= freq * counts + pres * (counts > 0).to(logits.dtype)

    @staticmethod
    def _sample(logits: torch.Tensor, params: list[SamplingParams | WireSamplingParams],
                generators: list[torch.Generator | None]) -> torch.Tensor:
        device = logits.device
        temps = torch.tensor([p.temperature if not p.greedy else 1.0 for p in params], device=device)
        logits = logits / temps.unsqueeze(1)
        vocab = logits.shape[1]
        top_k = torch.tensor([p.top_k if p.top_k else vocab for p in params], device=device)
        top_p = torch.tensor([p.top_p for p in params], device=device)
        min_p = torch.tensor([p.min_p for p in params], device=device)
        if bool((top_k < vocab).any()) or bool((top_p < 1).any()):
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            ranks = torch.arange(vocab, device=device).unsqueeze(0)
            sorted_logits = sorted_logits.masked_fill(ranks >= top_k.unsqueeze(1), float("-inf"))
            probs = sorted_logits.softmax(dim=-1)
            # drop a token when the tokens ranked above it already reach top_p
            before = probs.cumsum(dim=-1) - probs
            sorted_logits = sorted_logits.masked_fill(before >= top_p.unsqueeze(1), float("-inf"))
            logits = torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
        probs = logits.softmax(dim=-1)
        if bool((min_p > 0).any()):
            threshold = min_p.unsqueeze(1) * probs.max(dim=-1, keepdim=True).values
            probs = probs.masked_fill(probs < threshold, 0.0)
        noise = torch.empty_like(probs)
        unseeded = [i for i, g in enumerate(generators) if g is None]
        if unseeded:
            noise[unseeded] = torch.empty(len(unseeded), vocab, device=device).exponential_()
        for i, gen in enumerate(generators):
            if gen is not None:
                noise[i].exponential_(generator=gen)
        return (probs / noise).argmax(dim=-1)
