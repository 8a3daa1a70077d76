import json

import pytest

from shared.fixtures import write_random_llama
from shared.model_registry import DEFAULT_MODEL, ModelNotFoundError, resolve_model
from shared.tokenizer import Tokenizer


def test_embedded_model_is_a_complete_hf_directory(smollm2_dir):
    assert smollm2_dir == resolve_model(DEFAULT_MODEL) == resolve_model(None)
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["hidden_size"] == 576 and config["num_hidden_layers"] == 30
    assert config["num_key_value_heads"] == 3 and config["tie_word_embeddings"] is True
    assert "quantization_config" not in config
    assert (smollm2_dir / "model.safetensors").stat().st_size > 400e6  # fp32, dequantized


def test_tokenizer_matches_transformers(smollm2_dir):
    from transformers import AutoTokenizer

    ours, theirs = Tokenizer(smollm2_dir), AutoTokenizer.from_pretrained(smollm2_dir)
    text = "Héllo, wörld! 東京 is big.\n  tabs\tand spaces"
    assert ours.encode(text) == theirs.encode(text, add_special_tokens=False)
    assert ours.decode(ours.encode(text)) == text
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    assert ours.apply_chat_template(messages) == theirs.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    assert ours.eos_token_id == theirs.eos_token_id == 2


def test_local_directory_resolves_to_itself(tmp_path):
    path = write_random_llama(tmp_path / "m")
    assert resolve_model(str(path)) == path


@pytest.mark.parametrize(
    "name, message",
    [
        ("meta-llama/Llama-2-7b-hf", "offline"),
        ("no-such-model", "neither a built-in"),
    ],
)
def test_unknown_names_fail_clearly(name, message):
    with pytest.raises(ModelNotFoundError, match=message):
        resolve_model(name)


def test_directory_without_config_fails(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_model(tmp_path)
