import pytest
import torch

from phase1_kernels import LightvLLM
from phase1_kernels.layers.attention import AttentionMetadata, causal_attention
from phase1_kernels.layers.rotary_embedding import rope_inv_freq


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_type": "default", "rope_theta": 10000.0},
        {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
        {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    ],
)
def test_rope_frequencies_match_transformers(rope):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = LlamaConfig(hidden_size=4096, num_attention_heads=32, head_dim=128,
                         max_position_embeddings=131072, rope_parameters=rope)
    if rope["rope_type"] == "default":
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

        expected = LlamaRotaryEmbedding.compute_default_rope_parameters(config)[0]
    else:
        expected = ROPE_INIT_FUNCTIONS[rope["rope_type"]](config, "cpu")[0]
    scaling = None if rope["rope_type"] == "default" else rope
    got = rope_inv_freq(128, rope["rope_theta"], scaling)
    torch.testing.assert_close(got, expected.float(), rtol=1e-6, atol=0)


def test_causal_attention_against_float64_loop():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 4, 8), torch.randn(7, 2, 8), torch.randn(7, 2, 8)
    out = causal_attention(q, k, v, 0.35)
    for i in range(3):  # query i is position 4 + i of 7
        for h in range(4):
            s = (k[: 5 + i, h // 2].double() @ q[i, h].double()) * 0.35
            ref = torch.softmax(s, 0) @ v[: 5 + i, h // 2].double()
            torch.testing.assert_close(out[i, h].double(), ref, rtol=1e-5, atol=1e-6)


def test_metadata_rejects_inconsistent_lengths():
    with pytest.raises(ValueError, match="query length 5"):
        AttentionMetadata.build([5], [3])


def test_cached_decode_equals_full_recompute(tiny_llama_dir):
    """The KV-cached loop must produce what recomputing every prefix from scratch produces."""
    llm = LightvLLM.from_pretrained(tiny_llama_dir, device="cpu")
    prompts = [[5, 9, 200, 7], [1], [33] * 12]
    cached = llm.generate(prompts, max_new_tokens=10, stop_token_ids=[])
    for prompt, tokens in zip(prompts, cached):
        seq = list(prompt)
        for _ in range(10):
            seq.append(int(llm(torch.tensor([seq])).logits[0, -1].argmax()))
        assert seq[len(prompt):] == tokens


def test_generate_stops_and_samples_reproducibly(tiny_llama_dir):
    llm = LightvLLM.from_pretrained(tiny_llama_dir, device="cpu")
    greedy = llm.generate([[3, 4, 5]], max_new_tokens=8, stop_token_ids=[])[0]
    stopped = llm.generate([[3, 4, 5]], max_new_tokens=8, stop_token_ids=[greedy[2]])[0]
    assert stopped == greedy[: greedy.index(greedy[2]) + 1]
    a = llm.generate([[3, 4, 5]], max_new_tokens=8, temperature=1.0, seed=7, stop_token_ids=[])
    b = llm.generate([[3, 4, 5]], max_new_tokens=8, temperature=1.0, seed=7, stop_token_ids=[])
    assert a == b


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompts=[[1]], max_new_tokens=0), "max_new_tokens"),
        (dict(prompts=[[1]], temperature=-1.0), "temperature"),
        (dict(prompts=[[]]), "at least one token"),
        (dict(prompts=[[100000]]), "token ids must be in"),
        (dict(prompts=[[1] * 600]), "limit is 512"),
    ],
)
def test_generate_rejects_bad_input(tiny_llama_dir, kwargs, message):
    llm = LightvLLM.from_pretrained(tiny_llama_dir, device="cpu")
    with pytest.raises(ValueError, match=message):
        llm.generate(**kwargs)
    assert all(layer.kv_cache is None for layer in llm.model.attention_layers)


def test_attention_override_receives_every_layer_and_its_output_is_used(tiny_llama_dir):
    """Inside ``attention_override`` each layer's reshaped q/k/v go to the override, in layer
    order, and what it returns is the attention output (later phases cut the forward pass there)."""
    from phase1_kernels.layers.attention import attention_override

    llm = LightvLLM.from_pretrained(tiny_llama_dir, device="cpu")
    ids = torch.tensor([[5, 9, 200, 7, 1, 33]])
    reference = llm(ids).logits
    seen = []

    def through_backend(layer, q, k, v, metadata):
        seen.append((layer.layer_idx, tuple(q.shape), tuple(k.shape)))
        return layer.backend.forward(layer, q, k, v, metadata)

    with attention_override(through_backend):
        passed = llm(ids).logits
    layers = llm.model.config.num_hidden_layers
    assert [idx for idx, _, _ in seen] == list(range(layers)) and layers >= 2
    heads = seen[0][1]
    assert heads[0] == 6 and seen[0][2][0] == 6
    assert torch.equal(passed, reference)
    with attention_override(lambda layer, q, k, v, metadata: torch.zeros_like(q)):
        assert not torch.allclose(llm(ids).logits, reference, atol=1e-3)
    assert torch.equal(llm(ids).logits, reference)  # the override ended with its block
