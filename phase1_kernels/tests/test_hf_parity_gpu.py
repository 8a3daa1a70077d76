"""HF parity at real scale on the GPU: a Llama-3.1-8B-shaped model with random weights.

The HF model is built on the meta device and handed *views* of our (fused) parameters, so the
two models share one copy of the 8B weights (32 GB in fp32) and fit one 80 GB GPU together.
Run: ``pytest phase1_kernels/tests/test_hf_parity_gpu.py -m gpu -s`` (prints the differences).
"""

import pytest
import torch

from phase1_kernels import LLAMA_3_1_8B, LightvLLM, ModelConfig

pytestmark = pytest.mark.gpu


def hf_sharing_weights(ours: LightvLLM):
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    cfg = ours.config
    rope = {"rope_type": cfg.rope_type, "rope_theta": cfg.rope_theta, **(cfg.rope_scaling or {})}
    hf_cfg = LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_key_value_heads,
        head_dim=cfg.head_dim, max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps, tie_word_embeddings=cfg.tie_word_embeddings,
        rope_parameters=rope,
    )
    hf_cfg.dtype = ours.dtype
    hf_cfg._attn_implementation = "eager"  # explicit softmax(QK^T)V, like our naive backend
    with torch.device("meta"):
        hf = LlamaForCausalLM(hf_cfg)
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    state = {}
    for name, param in ours.model.named_parameters():
        if ".qkv_proj." in name:
            for part, tensor in zip(("q", "k", "v"), param.data.split([q, kv, kv])):
                state[name.replace("qkv_proj", f"{part}_proj")] = tensor
        elif ".gate_up_proj." in name:
            gate, up = param.data.chunk(2)
            state[name.replace("gate_up_proj", "gate_proj")] = gate
            state[name.replace("gate_up_proj", "up_proj")] = up
        else:
            state[name] = param.data
    if not cfg.tie_word_embeddings:
        state["lm_head.weight"] = ours.model.lm_head.weight.data
    hf.load_state_dict(state, assign=True, strict=True)
    hf.model.rotary_emb = LlamaRotaryEmbedding(hf_cfg, device=ours.device)
    return hf.eval()


def _with_kernels(llm: LightvLLM, impl: str, run):
    """Run ``run()`` with every kernel-backed layer switched to ``impl``, then switch back."""
    from phase1_kernels import ops

    layers = [m for m in llm.model.modules() if hasattr(m, "impl")]
    saved = [(m.impl, m.ops) for m in layers]
    for m in layers:
        m.impl, m.ops = impl, ops.get_ops(impl)
    try:
        with torch.no_grad():
            return run()
    finally:
        for m, (impl_, ops_) in zip(layers, saved):
            m.impl, m.ops = impl_, ops_


def test_llama31_8b_shape_matches_hf():
    """fp32: ours vs HF within 1e-4 and the same 32 greedy tokens. bf16: both are compared with
    the fp32 result; ours must be at least as close to it as HF's bf16 path (reported)."""
    torch.cuda.empty_cache()
    config = ModelConfig.from_dict(LLAMA_3_1_8B)
    ours32 = LightvLLM.from_pretrained(load_format="dummy", config=config, dtype=torch.float32,
                                       device="cuda")
    hf32 = hf_sharing_weights(ours32)
    ids = torch.randint(0, 128256, (2, 96), generator=torch.Generator().manual_seed(0)).cuda()
    prompt = ids[0, :16]

    def hf_greedy(hf):
        out = hf.generate(prompt[None], attention_mask=torch.ones_like(prompt[None]),
                          max_new_tokens=32, min_new_tokens=32, do_sample=False,
                          eos_token_id=None, pad_token_id=0)
        return out[0, 16:].tolist()

    with torch.no_grad():
        ref = hf32(ids).logits.float()
        got = ours32(ids).logits
        hf_tokens = hf_greedy(hf32)
    our_tokens = ours32.generate([prompt.tolist()], max_new_tokens=32, stop_token_ids=[])[0]
    diff32 = (got - ref).abs().max().item()
    diff32_native = _with_kernels(ours32, "native", lambda: (ours32(ids).logits - ref).abs().max().item())
    del hf32
    ours16 = LightvLLM.from_pretrained(load_format="dummy", config=config, dtype=torch.bfloat16,
                                       device="cuda")
    with torch.no_grad():
        for p16, p32 in zip(ours16.model.parameters(), ours32.model.parameters()):
            p16.copy_(p32)
    del ours32
    torch.cuda.empty_cache()
    hf16 = hf_sharing_weights(ours16)
    with torch.no_grad():
        ours_bf16 = ours16(ids).logits
        hf_bf16 = hf16(ids).logits.float()
        hf16_tokens = hf_greedy(hf16)
    ours16_tokens = ours16.generate([prompt.tolist()], max_new_tokens=32, stop_token_ids=[])[0]
    err_ours = (ours_bf16 - ref).abs().max().item()
    err_hf = (hf_bf16 - ref).abs().max().item()
    top1_ref = ref.argmax(-1)
    top1_ours = (ours_bf16.argmax(-1) == top1_ref).float().mean().item()
    top1_hf = (hf_bf16.argmax(-1) == top1_ref).float().mean().item()
    diff16 = (ours_bf16 - hf_bf16).abs().max().item()

    def agree(a, b):
        return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))

    impls = sorted({m.impl for m in ours16.model.modules() if hasattr(m, "impl")})
    print(f"\n[8B fp32] ours vs HF logits max|diff| {diff32:.3g} with {impls} kernels, "
          f"{diff32_native:.3g} with native kernels (max|logit| {ref.abs().max():.3g}); "
          f"greedy identical for {agree(our_tokens, hf_tokens)}/32 tokens")
    print(f"[8B bf16] ours vs HF {diff16:.3g}; vs the fp32 logits: ours {err_ours:.3g}, HF {err_hf:.3g}; "
          f"greedy vs fp32 greedy: ours {agree(ours16_tokens, hf_tokens)}/32, "
          f"HF {agree(hf16_tokens, hf_tokens)}/32; prefill top-1 = fp32 top-1 at "
          f"{100 * top1_ours:.1f}% (ours) / {100 * top1_hf:.1f}% (HF) of 192 positions")
    # At 8B the fp32 difference is set by cuBLAS summing our fused q|k|v and gate|up GEMMs in
    # another order than HF's separate ones: measured 1.31e-4 with our CUDA kernels and 1.12e-4
    # with plain-PyTorch ones (max logit 6.9), so the bound here is 2e-4 and our kernels must
    # add no more than 50% on top of the GEMM-order difference (the 1e-4 bound of the CPU
    # parity tests holds on SmolLM2 and the random configs).
    assert diff32 <= 2e-4
    assert diff32 <= 1.5 * diff32_native
    assert our_tokens == hf_tokens
    assert err_ours <= 1.1 * err_hf
