import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from phase1_kernels import LLAMA_3_1_8B, LightvLLM, ModelConfig
from phase1_kernels.config import ConfigError
from phase1_kernels.loader import WeightsError, build_model
from shared.fixtures import write_random_llama


def _rewrite(path, edit):
    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def test_fused_parameters_hold_the_hf_tensors(tiny_llama_dir):
    hf = load_file(tiny_llama_dir / "model.safetensors")
    model = LightvLLM.from_pretrained(tiny_llama_dir, device="cpu").model
    layer = model.model.layers[1]
    q, k, v = layer.self_attn.qkv_proj.weight.split([64, 32, 32])
    assert torch.equal(q, hf["model.layers.1.self_attn.q_proj.weight"])
    assert torch.equal(v, hf["model.layers.1.self_attn.v_proj.weight"])
    gate, up = layer.mlp.gate_up_proj.weight.chunk(2)
    assert torch.equal(up, hf["model.layers.1.mlp.up_proj.weight"])
    assert torch.equal(model.lm_head.weight, hf["lm_head.weight"])


def test_tied_embeddings_share_one_tensor(tmp_path):
    path = write_random_llama(tmp_path, tie_word_embeddings=True)
    model = LightvLLM.from_pretrained(path, device="cpu").model
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dtype_conversion(tiny_llama_dir, dtype):
    model = LightvLLM.from_pretrained(tiny_llama_dir, dtype=dtype, device="cpu")
    assert {p.dtype for p in model.model.parameters()} == {dtype}
    hf = load_file(tiny_llama_dir / "model.safetensors")
    assert torch.equal(model.model.model.norm.weight, hf["model.norm.weight"].to(dtype))


def test_missing_tensor_is_named(tmp_path):
    path = write_random_llama(tmp_path)
    _rewrite(path, lambda t: t.pop("model.layers.0.mlp.up_proj.weight"))
    with pytest.raises(WeightsError, match=r"missing.*layers\.0\.mlp\.gate_up_proj"):
        LightvLLM.from_pretrained(path, device="cpu")


def test_unexpected_tensor_is_named(tmp_path):
    path = write_random_llama(tmp_path)
    _rewrite(path, lambda t: t.__setitem__("model.layers.9.extra.weight", torch.zeros(2)))
    with pytest.raises(WeightsError, match=r"layers\.9\.extra\.weight.*no place"):
        LightvLLM.from_pretrained(path, device="cpu")


def test_wrong_shape_is_named(tmp_path):
    path = write_random_llama(tmp_path)
    _rewrite(path, lambda t: t.__setitem__("model.norm.weight", torch.ones(7)))
    with pytest.raises(WeightsError, match=r"model\.norm\.weight.*shape \(7,\)"):
        LightvLLM.from_pretrained(path, device="cpu")


def test_unsupported_architecture(tmp_path):
    path = write_random_llama(tmp_path)
    config = json.loads((path / "config.json").read_text())
    config["architectures"] = ["MixtralForCausalLM"]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="MixtralForCausalLM"):
        LightvLLM.from_pretrained(path, device="cpu")


def test_pytorch_bin_only_checkpoint(tmp_path):
    path = write_random_llama(tmp_path)
    (path / "model.safetensors").rename(path / "pytorch_model.bin")
    with pytest.raises(WeightsError, match="convert them to safetensors"):
        LightvLLM.from_pretrained(path, device="cpu")


def test_dummy_weights_need_no_files():
    config = ModelConfig.from_dict(dict(LLAMA_3_1_8B, num_hidden_layers=1, vocab_size=512,
                                        hidden_size=256, intermediate_size=512,
                                        num_attention_heads=4, num_key_value_heads=2, head_dim=64))
    llm = LightvLLM.from_pretrained(load_format="dummy", config=config, device="cpu")
    params = list(llm.model.parameters())
    assert all(torch.isfinite(p).all() for p in params)
    assert llm(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 512)
    again = build_model(config, load_format="dummy", device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(params, again.parameters()))
