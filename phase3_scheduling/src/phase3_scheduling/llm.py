"""``LLM``: the offline API (vLLM's ``LLM.generate`` / ``LLM.chat``)."""

from __future__ import annotations

import logging
from typing import Sequence, cast

from tqdm.auto import tqdm

from .config import EngineArgs
from .llm_engine import LLMEngine
from .outputs import RequestOutput
from .sampling_params import SamplingParams

logger = logging.getLogger(__name__)

Prompt = str | Sequence[int]


class LLM:
    def __init__(self, model: str | None = None, **engine_kwargs):
        self.engine = LLMEngine(EngineArgs(model=model, **engine_kwargs))

    @classmethod
    def from_engine_args(cls, args: EngineArgs) -> "LLM":
        return cls.from_engine(LLMEngine(args))

    @classmethod
    def from_engine(cls, engine: LLMEngine) -> "LLM":
        """The offline API over an engine built elsewhere (e.g. with a chosen executor class)."""
        llm = cls.__new__(cls)
        llm.engine = engine
        return llm

    def get_tokenizer(self):
        return self.engine.tokenizer

    def generate(self, prompts: Prompt | Sequence[Prompt],
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 use_tqdm: bool = True) -> list[RequestOutput]:
        """Run every prompt to completion with continuous batching; outputs in input order."""
        batch: Sequence[Prompt]
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            batch = [cast(Prompt, prompts)]  # one prompt: text, or token ids
        else:
            batch = cast(Sequence[Prompt], prompts)
        params = sampling_params or SamplingParams()
        if isinstance(params, SamplingParams):
            params = [params] * len(batch)
        if len(params) != len(batch):
            raise ValueError(f"{len(batch)} prompts but {len(params)} sampling params")
        ids = []
        try:
            for prompt, p in zip(batch, params):
                ids.append(self.engine.add_request(None, prompt, p, stream=False))
        except Exception:
            self.engine.abort_request(ids)
            raise
        return self._run(ids, use_tqdm)

    def chat(self, messages: Sequence[dict] | Sequence[Sequence[dict]],
             sampling_params: SamplingParams | None = None, use_tqdm: bool = True,
             add_generation_prompt: bool = True) -> list[RequestOutput]:
        """Render each conversation with the model's chat template, then ``generate``."""
        tok = self.engine.tokenizer
        if tok is None:
            raise ValueError("chat needs a tokenizer with a chat template")
        conversations = (
            [cast(Sequence[dict], messages)] if messages and isinstance(messages[0], dict)
            else cast(Sequence[Sequence[dict]], messages))  # one conversation, or several
        for conv in conversations:
            for m in conv:
                if m.get("role") not in ("system", "user", "assistant"):
                    raise ValueError(f"message role must be system, user or assistant, "
                                     f"got {m.get('role')!r}")
        # contents are encoded as plain text: a user's "<|im_start|>" cannot forge a turn
        prompts = [tok.encode_chat(conv, add_generation_prompt) for conv in conversations]
        return self.generate(prompts, sampling_params, use_tqdm)

    def _run(self, ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        done: dict[str, RequestOutput] = {}
        bar = tqdm(total=len(ids), desc="generating", unit="req", disable=not use_tqdm)
        generated = 0
        try:
            while self.engine.has_unfinished_requests():
                for out in self.engine.step():
                    if out.finished:
                        done[out.request_id] = out
                        generated += sum(len(o.token_ids) for o in out.outputs)
                        bar.update(1)
                        bar.set_postfix(output_tokens=generated)
        finally:
            bar.close()
        return [done[i] for i in ids]
