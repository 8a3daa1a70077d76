"""``LightvLLM``: the roadmap's phase-1 entry point.

``LightvLLM.from_pretrained(name_or_path)`` loads a LLaMA checkpoint with our own loader;
``model(input_ids).logits`` matches HuggingFace's; ``generate`` is a simple KV-cached loop
(greedy or temperature sampling) over a batch of prompts, the baseline later phases beat.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from shared.model_registry import resolve_model
from shared.tokenizer import Tokenizer

from .config import ModelConfig
from .layers.attention import AttentionBackend, AttentionMetadata
from .loader import build_model
from .models.llama import LlamaForCausalLM

logger = logging.getLogger(__name__)


@dataclass
class CausalLMOutput:
    logits: torch.Tensor  # [batch, seq_len, vocab], fp32


class LightvLLM:
    def __init__(self, model: LlamaForCausalLM, tokenizer: Tokenizer | None = None,
                 model_dir: Path | None = None):
        self.model = model
        self.config: ModelConfig = model.config
        self.tokenizer = tokenizer
        self.model_dir = model_dir

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path | None = None,
        dtype: str | torch.dtype | None = None,
        device: str | torch.device | None = None,
        load_format: str = "auto",
        attn_backend: str | AttentionBackend | None = None,
        kernel_impl: str | None = None,
        config: ModelConfig | dict | None = None,
        seed: int = 0,
    ) -> "LightvLLM":
        """Load a built-in model name or a local HF directory (default: the embedded SmolLM2).

        ``load_format="dummy"`` with ``config`` (a ``ModelConfig`` or config.json-style dict)
        builds random weights of any shape with no files at all.
        """
        model_dir = None
        if load_format == "dummy" and config is not None:
            cfg = config if isinstance(config, ModelConfig) else ModelConfig.from_dict(config)
        else:
            model_dir = resolve_model(name_or_path)
            cfg = ModelConfig.from_pretrained(model_dir)
        model = build_model(cfg, model_dir, load_format, dtype, device, attn_backend,
                            kernel_impl=kernel_impl, seed=seed)
        tokenizer = None
        if model_dir is not None and (model_dir / "tokenizer.json").is_file():
            tokenizer = Tokenizer(model_dir)
        return cls(model, tokenizer, model_dir)

    @torch.inference_mode()
    def __call__(self, input_ids: torch.Tensor | Sequence[Sequence[int]]) -> CausalLMOutput:
        """Logits for every position of each row of ``input_ids`` ([batch, len] or [len])."""
        ids = torch.as_tensor(input_ids, device=self.device)
        squeeze = ids.dim() == 1
        if squeeze:
            ids = ids.unsqueeze(0)
        batch, length = ids.shape
        self._check_length(length)
        metadata = AttentionMetadata.build([length] * batch, device=self.device)
        positions = torch.arange(length, device=self.device).repeat(batch)
        hidden = self.model(ids.reshape(-1), positions, metadata)
        logits = self.model.compute_logits(hidden).view(batch, length, -1)
        return CausalLMOutput(logits[0:1] if squeeze else logits)

    def _check_length(self, length: int) -> None:
        limit = self.config.max_position_embeddings
        if length > limit:
            raise ValueError(f"sequence has {length} tokens, the model's limit is {limit}")

    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        seed: int | None = None,
        stop_token_ids: Sequence[int] | None = None,
    ) -> list[list[int]]:
        """Continue each token-id prompt; returns only the new tokens of each.

        All prompts are prefilled in one flattened varlen batch; then every unfinished sequence
        decodes one token per step, reading its history from a contiguous KV cache that reserves
        ``max(prompt) + max_new_tokens`` slots per sequence. ``temperature=0`` is greedy.
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        prompts = [list(p) for p in prompts]
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        vocab = self.config.vocab_size
        for p in prompts:
            if min(p) < 0 or max(p) >= vocab:
                raise ValueError(f"token ids must be in [0, {vocab}), got {min(p)}..{max(p)}")
        max_len = max(len(p) for p in prompts) + max_new_tokens
        self._check_length(max_len)
        stops = set(self.config.eos_token_ids if stop_token_ids is None else stop_token_ids)
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(seed)

        cfg = self.config
        layers = self.model.attention_layers
        cache_shape = (2, len(prompts), max_len, layers[0].num_kv_heads, cfg.head_dim)
        for layer in layers:
            layer.kv_cache = torch.empty(cache_shape, dtype=self.dtype, device=self.device)
        try:
            outputs: list[list[int]] = [[] for _ in prompts]
            active = list(range(len(prompts)))
            # prefill: all prompts in one flattened batch
            ids = [t for p in prompts for t in p]
            positions = [i for p in prompts for i in range(len(p))]
            lens = [len(p) for p in prompts]
            metadata = AttentionMetadata.build(lens, lens, cache_rows=active, device=self.device)
            last_rows = torch.tensor(lens, device=self.device).cumsum(0) - 1
            while active:
                hidden = self.model(torch.tensor(ids, device=self.device),
                                    torch.tensor(positions, device=self.device), metadata)
                logits = self.model.compute_logits(hidden[last_rows])
                next_ids = _sample(logits, temperature, generator).tolist()
                still = []
                for row, token in zip(active, next_ids):
                    outputs[row].append(token)
                    if token not in stops and len(outputs[row]) < max_new_tokens:
                        still.append(row)
                active = still
                # decode: one new token per unfinished sequence
                ids = [outputs[r][-1] for r in active]
                positions = [len(prompts[r]) + len(outputs[r]) - 1 for r in active]
                seq_lens = [p + 1 for p in positions]
                metadata = AttentionMetadata.build([1] * len(active), seq_lens, active, self.device)
                last_rows = torch.arange(len(active), device=self.device)
            return outputs
        finally:
            for layer in layers:
                layer.kv_cache = None

    def generate_text(self, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0,
                      chat: bool = True, seed: int | None = None) -> str:
        """Generate from a text prompt (through the chat template when the model has one)."""
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer.json; pass token ids to generate()")
        if chat and self.tokenizer.chat_template:
            ids = self.tokenizer.encode_chat([{"role": "user", "content": prompt}])
        else:
            ids = self.tokenizer.encode(prompt)
        stops = self.tokenizer.eos_token_ids or None
        out = self.generate([ids], max_new_tokens, temperature, seed, stop_token_ids=stops)[0]
        return self.tokenizer.decode(out)


def _sample(logits: torch.Tensor, temperature: float,
            generator: torch.Generator | None) -> torch.Tensor:
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
