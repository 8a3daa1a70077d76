import json

import pytest

from phase1_kernels.config import ConfigError, ModelConfig
from shared.fixtures import write_random_llama

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 64}


def test_both_rope_spellings_give_the_same_config(tmp_path):
    new = write_random_llama(tmp_path / "new", rope_theta=5e5, rope_scaling=LLAMA3)
    old = write_random_llama(tmp_path / "old", rope_theta=5e5, rope_scaling=LLAMA3,
                             legacy_rope_keys=True)
    assert "rope_parameters" in json.loads((new / "config.json").read_text())
    legacy = json.loads((old / "config.json").read_text())
    assert legacy["rope_theta"] == 5e5 and legacy["rope_scaling"]["rope_type"] == "llama3"
    a, b = ModelConfig.from_pretrained(new), ModelConfig.from_pretrained(old)
    assert a.rope_theta == b.rope_theta == 5e5
    assert a.rope_type == b.rope_type == "llama3"
    assert a.rope_scaling["factor"] == b.rope_scaling["factor"] == 8.0


def test_legacy_type_key_and_defaults():
    cfg = ModelConfig.from_dict(dict(vocab_size=10, hidden_size=8, intermediate_size=16,
                                     num_hidden_layers=1, num_attention_heads=2,
                                     rope_scaling={"type": "linear", "factor": 2.0}))
    assert cfg.num_key_value_heads == 2 and cfg.head_dim == 4 and cfg.rope_type == "linear"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"architectures": ["GPT2LMHeadModel"]}, "not supported"),
        ({"num_key_value_heads": 3}, "multiple of num_key_value_heads"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "yarn"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"hidden_size": 0}, "positive integer"),
    ],
)
def test_invalid_configs_raise_clear_errors(change, message):
    base = dict(vocab_size=10, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                num_attention_heads=4, num_key_value_heads=2)
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_dict({**base, **change})
