"""Test fixtures: random LLaMA checkpoints of any shape, written in HF format by transformers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TINY_LLAMA = dict(
    vocab_size=320,
    hidden_size=64,
    intermediate_size=144,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=512,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)


def write_random_llama(
    out_dir: str | Path,
    seed: int = 0,
    std: float = 0.08,
    legacy_rope_keys: bool = False,
    max_shard_size: str | None = None,
    **overrides: Any,
) -> Path:
    """Write a randomly initialised ``LlamaForCausalLM`` with ``save_pretrained``.

    Every weight is drawn anew (norm weights around 1) so that a loader that mixes up two tensors
    cannot pass a parity test. ``rope_theta``/``rope_scaling`` may be passed in ``overrides``;
    ``legacy_rope_keys=True`` rewrites config.json with them at top level, as hub checkpoints
    spell them (transformers 5 writes ``rope_parameters``). ``max_shard_size`` (e.g. "200KB")
    produces a sharded checkpoint with an index file.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    settings = {**TINY_LLAMA, **overrides}
    rope_theta = settings.pop("rope_theta", 10000.0)
    rope_scaling = settings.pop("rope_scaling", None)
    rope_parameters = {"rope_type": "default", "rope_theta": rope_theta}
    if rope_scaling:
        rope_parameters.update(rope_scaling)
        rope_parameters["rope_type"] = rope_scaling.get("rope_type", rope_scaling.get("type"))
        rope_parameters.pop("type", None)
    config = LlamaConfig(**settings, rope_parameters=rope_parameters)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.2 * torch.randn_like(param))
            else:
                param.normal_(0.0, std)
    out_dir = Path(out_dir)
    kwargs: dict[str, Any] = {"safe_serialization": True}
    if max_shard_size:
        kwargs["max_shard_size"] = max_shard_size
    model.save_pretrained(out_dir, **kwargs)
    if legacy_rope_keys:
        path = out_dir / "config.json"
        data = json.loads(path.read_text())
        params = data.pop("rope_parameters")
        data["rope_theta"] = params.pop("rope_theta")
        rope_type = params.pop("rope_type")
        data["rope_scaling"] = None if rope_type == "default" else {"rope_type": rope_type, **params}
        path.write_text(json.dumps(data, indent=2))
    return out_dir


# Per-dtype bound on |out - x @ w.T| relative to |x| @ |w|.T (the sum of the products' sizes):
# about 2**-mantissa_bits times a few, so a wrong sum order or a dropped term fails.
MATMUL_TOLERANCE = {"float32": 1e-4, "float16": 2e-3, "bfloat16": 1.6e-2}


def assert_matmul_matches_float64(x, w, out) -> None:
    """``out`` is ``x @ w.T`` in ``x``'s dtype, checked against a float64 product."""
    ref = x.double() @ w.double().T
    scale = (x.double().abs() @ w.double().abs().T).clamp_min(1.0)
    err = ((out.double() - ref).abs() / scale).max().item()
    assert out.dtype == x.dtype and out.shape == ref.shape
    tol = MATMUL_TOLERANCE[str(x.dtype).removeprefix("torch.")]
    assert err < tol, f"relative error {err:.2e} (bound {tol:.1e})"
