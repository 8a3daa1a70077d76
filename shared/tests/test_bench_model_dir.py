"""The config-only model directory that the vLLM baselines are built from must describe the same
model as our ``--hf-config llama-3.1-8b`` preset, read by transformers (the reference) and by us."""

import json

from phase1_kernels import LLAMA_3_1_8B, ModelConfig

from shared.bench import write_hf_model_dir


def test_transformers_reads_the_preset_shape_back(tmp_path):
    from transformers import AutoConfig

    directory = write_hf_model_dir(dict(LLAMA_3_1_8B), str(tmp_path / "m"))
    theirs = AutoConfig.from_pretrained(directory)
    assert type(theirs).__name__ == "LlamaConfig"
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings",
                "rms_norm_eps", "tie_word_embeddings"):
        assert getattr(theirs, key) == LLAMA_3_1_8B[key], key
    rope = theirs.rope_parameters
    assert rope["rope_type"] == "llama3" and rope["rope_theta"] == 500000.0 and rope["factor"] == 8.0
    assert theirs.hidden_act == "silu"


def test_our_loader_sees_the_preset_model(tmp_path):
    directory = write_hf_model_dir(dict(LLAMA_3_1_8B), str(tmp_path / "m"))
    ours, preset = ModelConfig.from_pretrained(directory), ModelConfig.from_dict(dict(LLAMA_3_1_8B))
    shape = [f for f in ModelConfig.__dataclass_fields__ if f not in ("torch_dtype", "extra")]
    assert {f: getattr(ours, f) for f in shape} == {f: getattr(preset, f) for f in shape}
    assert ours.torch_dtype == "bfloat16"
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["torch_dtype"] == "bfloat16"
