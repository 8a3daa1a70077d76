"""LLaMA, defined once. Later phases extend it by injection, never by copying:
``attn_backend`` (phase 2's paged backends), ``linear_factory`` (phase 4's tensor-parallel
layers) and ``kernel_impl`` (which kernels the norm/rotary/activation layers use).

``forward(input_ids, positions, attn_metadata)`` takes one flattened batch of tokens
(``[num_tokens]``) and returns hidden states ``[num_tokens, hidden]``; ``compute_logits`` turns
the rows you need into fp32 logits.

Pipeline parallelism enters through ``layer_range=(start, end)``: the model then builds only
those layers (see ``pipeline.py``); a stage that is not the first takes the previous stage's
``IntermediateTensors`` and one that is not the last returns its own instead of hidden states.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Iterable

import torch
from torch import nn

from ..config import ModelConfig
from ..layers.activation import SiluAndMul
from ..layers.attention import Attention, AttentionBackend, AttentionMetadata, get_backend
from ..layers.layernorm import RMSNorm
from ..layers.linear import LinearFactory, default_weight_loader
from ..layers.rotary_embedding import RotaryEmbedding
from ..lazy_tensor import LazyTensor
from .pipeline import IntermediateTensors, PPMissingLayer, check_layer_range

logger = logging.getLogger(__name__)


def _load_into(param: nn.Parameter, tensor: torch.Tensor | LazyTensor, name: str, *shard: object) -> None:
    """The parameter's own loader copies (and converts) the tensor or just its shard of it."""
    try:
        loader = getattr(param, "weight_loader", None) or default_weight_loader
        loader(param, tensor, *shard)
    except ValueError as error:
        raise ValueError(f"checkpoint tensor {name!r}: {error}") from None


class LlamaMLP(nn.Module):
    def __init__(self, config: ModelConfig, factory: LinearFactory, kernel_impl: str | None):
        super().__init__()
        size = config.intermediate_size
        self.gate_up_proj = factory.merged_column(config.hidden_size, [size, size], config.mlp_bias)
        self.down_proj = factory.row(size, config.hidden_size, config.mlp_bias)
        self.act_fn = SiluAndMul(kernel_impl)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.gate_up_proj.forward_act(x, self.act_fn))


class LlamaAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int, factory: LinearFactory,
                 backend: AttentionBackend, kernel_impl: str | None):
        super().__init__()
        head_dim = config.head_dim
        self.qkv_proj = factory.qkv(config.hidden_size, head_dim, config.num_attention_heads,
                                    config.num_key_value_heads, config.attention_bias)
        self.o_proj = factory.row(config.num_attention_heads * head_dim, config.hidden_size,
                                  config.attention_bias)
        tp = factory.tp_size
        self.num_heads = config.num_attention_heads // tp
        self.num_kv_heads = max(1, config.num_key_value_heads // tp)
        self.q_size = self.num_heads * head_dim
        self.kv_size = self.num_kv_heads * head_dim
        self.rotary_emb = RotaryEmbedding(
            head_dim, head_dim, config.max_position_embeddings, config.rope_theta,
            is_neox_style=True, scaling=config.rope_scaling, impl=kernel_impl,
        )
        self.attn = Attention(self.num_heads, head_dim, head_dim**-0.5, self.num_kv_heads,
                              backend, layer_idx)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor,
                attn_metadata: AttentionMetadata) -> torch.Tensor:
        qkv = self.qkv_proj(hidden_states)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        # the rotation happens in the attention layer: a paged backend fuses it into its store
        return self.o_proj(self.attn(q, k, v, attn_metadata, positions, self.rotary_emb))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int, factory: LinearFactory,
                 backend: AttentionBackend, kernel_impl: str | None):
        super().__init__()
        self.self_attn = LlamaAttention(config, layer_idx, factory, backend, kernel_impl)
        self.mlp = LlamaMLP(config, factory, kernel_impl)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, kernel_impl)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, kernel_impl)

    def forward(self, positions, hidden_states, residual, attn_metadata):
        """Pre-norm block; the residual stream is carried separately so each residual add is
        fused into the following RMSNorm (one pass over memory instead of two)."""
        if residual is None:
            residual = hidden_states
            hidden_states = self.input_layernorm(hidden_states)
        else:
            hidden_states, residual = self.input_layernorm(hidden_states, residual)
        hidden_states = self.self_attn(positions, hidden_states, attn_metadata)
        hidden_states, residual = self.post_attention_layernorm(hidden_states, residual)
        return self.mlp(hidden_states), residual


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig, factory: LinearFactory, backend: AttentionBackend,
                 kernel_impl: str | None, layer_range: tuple[int, int] | None = None):
        super().__init__()
        num_layers = config.num_hidden_layers
        self.start_layer, self.end_layer = check_layer_range(layer_range, num_layers)
        self.is_first_stage = self.start_layer == 0
        self.is_last_stage = self.end_layer == num_layers
        self.embed_tokens = (factory.embedding(config.vocab_size, config.hidden_size)
                             if self.is_first_stage else PPMissingLayer())
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, i, factory, backend, kernel_impl)
            if self.start_layer <= i < self.end_layer else PPMissingLayer()
            for i in range(num_layers)
        )
        self.norm = (RMSNorm(config.hidden_size, config.rms_norm_eps, kernel_impl)
                     if self.is_last_stage else PPMissingLayer())

    @contextmanager
    def first_layers_only(self, count: int) -> Iterator[None]:
        """Inside, a forward runs only this stage's first ``count`` layers (then as ever): for a
        pass that needs each layer's kernels once, not the model's output (every layer launches
        the same kernels on the same shapes)."""
        end = self.end_layer
        self.end_layer = min(end, self.start_layer + max(count, 1))
        try:
            yield
        finally:
            self.end_layer = end

    def forward(self, input_ids, positions, attn_metadata,
                intermediate_tensors: IntermediateTensors | None = None):
        if self.is_first_stage:
            hidden_states, residual = self.embed_tokens(input_ids), None
        elif intermediate_tensors is None:
            raise ValueError(f"the stage starting at layer {self.start_layer} needs the previous "
                             "stage's intermediate tensors")
        else:
            hidden_states = intermediate_tensors.hidden_states
            residual = intermediate_tensors.residual
        for layer in self.layers[self.start_layer:self.end_layer]:
            hidden_states, residual = layer(positions, hidden_states, residual, attn_metadata)
        if not self.is_last_stage:
            # check_layer_range keeps at least one layer, and each layer returns the residual
            assert residual is not None
            return IntermediateTensors(hidden_states, residual)
        hidden_states, _ = self.norm(hidden_states, residual)
        return hidden_states


class LlamaForCausalLM(nn.Module):
    # HF checkpoint names that land inside one of our fused parameters:
    # (our parameter, checkpoint part, shard id)
    stacked_params_mapping = (
        (".qkv_proj", ".q_proj", "q"),
        (".qkv_proj", ".k_proj", "k"),
        (".qkv_proj", ".v_proj", "v"),
        (".gate_up_proj", ".gate_proj", 0),
        (".gate_up_proj", ".up_proj", 1),
    )

    def __init__(self, config: ModelConfig, attn_backend: str | AttentionBackend | None = None,
                 linear_factory: LinearFactory | None = None, kernel_impl: str | None = None,
                 layer_range: tuple[int, int] | None = None):
        super().__init__()
        self.config = config
        factory = linear_factory or LinearFactory()
        self.attn_backend = get_backend(attn_backend)
        self.model = LlamaModel(config, factory, self.attn_backend, kernel_impl, layer_range)
        last, first = self.model.is_last_stage, self.model.is_first_stage
        self.lm_head = (factory.lm_head(config.hidden_size, config.vocab_size) if last
                        else PPMissingLayer())
        if config.tie_word_embeddings and first and last:
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def attention_layers(self) -> list[Attention]:
        """The attention layers this model (or pipeline stage) holds, in layer order."""
        return [layer.self_attn.attn for layer in self.model.layers
                if isinstance(layer, LlamaDecoderLayer)]  # the others are PPMissingLayer

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                attn_metadata: AttentionMetadata,
                intermediate_tensors: IntermediateTensors | None = None,
                ) -> torch.Tensor | IntermediateTensors:
        return self.model(input_ids, positions, attn_metadata, intermediate_tensors)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden_states).float()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor | LazyTensor]]) -> set[str]:
        """Copy HF-named checkpoint tensors into our (partly fused) parameters, one at a time.

        Returns the names of the parameters that were filled. Raises on a tensor with no place
        in the model; the caller checks that nothing is missing.
        """
        params = dict(self.named_parameters())
        elsewhere = self._missing_prefixes()
        loaded: set[str] = set()
        for checkpoint_name, tensor in weights:
            name = self._checkpoint_name_here(checkpoint_name, elsewhere)
            if name is None:
                continue
            for ours, theirs, shard_id in self.stacked_params_mapping:
                if theirs in name:
                    target = name.replace(theirs, ours)
                    if target not in params:
                        raise KeyError(f"checkpoint tensor {name!r} has no place in the model")
                    param = params[target]
                    _load_into(param, tensor, name, shard_id)
                    loaded.add(f"{target}#{shard_id}")
                    break
            else:
                if name not in params:
                    raise KeyError(f"checkpoint tensor {name!r} has no place in the model")
                param = params[name]
                _load_into(param, tensor, name)
                loaded.add(name)
        return loaded

    def _checkpoint_name_here(self, name: str, elsewhere: tuple[str, ...]) -> str | None:
        """The name a checkpoint tensor loads under in this model, or None to skip it."""
        if "rotary_emb.inv_freq" in name:
            return None
        if self.config.tie_word_embeddings:
            if name == "lm_head.weight":
                return None  # tied: the embedding is the head
            if name == "model.embed_tokens.weight" and self.model.is_last_stage \
                    and not self.model.is_first_stage:
                return "lm_head.weight"  # a last stage without the embedding loads its head
        if name.startswith(elsewhere):
            return None  # owned by another pipeline stage
        return name

    def _missing_prefixes(self) -> tuple[str, ...]:
        """Name prefixes of the modules another pipeline stage owns (empty without PP)."""
        return tuple(f"{name}." for name, module in self.named_modules()
                     if isinstance(module, PPMissingLayer))

    def expected_checkpoint_parts(self) -> set[str]:
        """What ``load_weights`` must have filled for the model to be complete."""
        parts = set()
        for name, _ in self.named_parameters():
            for ours, _, shard_id in self.stacked_params_mapping:
                if ours in name:
                    parts.add(f"{name}#{shard_id}")
            if not any(ours in name for ours, _, _ in self.stacked_params_mapping):
                parts.add(name)
        return parts
