"""Pipeline-parallel injection point, in one process: stages built with ``layer_range`` and
chained through ``IntermediateTensors`` give the full model's logits; each stage loads and holds
only its own layers."""

import pytest
import torch

from phase1_kernels import ModelConfig
from phase1_kernels.layers.attention import AttentionMetadata
from phase1_kernels.loader import build_model
from phase1_kernels.models.pipeline import IntermediateTensors, PPMissingLayer
from shared.fixtures import write_random_llama


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def checkpoint(request, tmp_path_factory):
    return write_random_llama(tmp_path_factory.mktemp("pp"), seed=3, num_hidden_layers=3,
                              tie_word_embeddings=request.param)


def _build(path, layer_range=None):
    return build_model(ModelConfig.from_pretrained(path), path, dtype=torch.float64, device="cpu",
                       kernel_impl="native", layer_range=layer_range)


def test_chained_stages_equal_the_full_model(checkpoint):
    full = _build(checkpoint)
    stages = [_build(checkpoint, (0, 1)), _build(checkpoint, (1, 2)), _build(checkpoint, (2, 3))]
    ids = torch.tensor([5, 17, 3, 99, 250, 1, 7])
    positions = torch.tensor([0, 1, 2, 3, 0, 1, 2])
    metadata = AttentionMetadata.build([4, 3])
    expected = full.compute_logits(full(ids, positions, metadata))
    out = None
    for stage in stages:
        out = stage(ids, positions, metadata, intermediate_tensors=out)
        assert isinstance(out, IntermediateTensors) is (stage is not stages[-1])
    torch.testing.assert_close(stages[-1].compute_logits(out), expected, rtol=0, atol=1e-12)


def test_a_stage_holds_only_its_layers(checkpoint):
    full, middle, last = _build(checkpoint), _build(checkpoint, (1, 2)), _build(checkpoint, (2, 3))
    assert [a.layer_idx for a in middle.attention_layers] == [1]
    assert isinstance(middle.model.embed_tokens, PPMissingLayer)
    assert isinstance(middle.lm_head, PPMissingLayer) and isinstance(middle.model.norm, PPMissingLayer)
    names = {n for n, _ in middle.named_parameters()}
    assert names and all(n.startswith("model.layers.1.") for n in names)
    for name, param in middle.named_parameters():
        assert torch.equal(param, dict(full.named_parameters())[name])
    # the last stage's head is the checkpoint's head (or, tied, its embedding)
    assert torch.equal(last.lm_head.weight, full.lm_head.weight)
    with pytest.raises(ValueError, match="needs the previous stage's intermediate tensors"):
        middle(torch.tensor([1]), torch.tensor([0]), AttentionMetadata.build([1]))


def test_layer_range_outside_the_model_is_refused(checkpoint):
    with pytest.raises(ValueError, match=r"layer range \[2, 5\).*3 layers"):
        _build(checkpoint, (2, 5))


def test_first_layers_only_runs_the_stages_first_layers_then_restores_it(checkpoint):
    """What the start-up's compile-ahead pass uses: inside, the forward is a one-layer model's
    (the first stage (0, 1) followed by the final norm), afterwards the whole model again."""
    full, first = _build(checkpoint), _build(checkpoint, (0, 1))
    ids, positions = torch.tensor([5, 17, 3, 99]), torch.tensor([0, 1, 2, 3])
    metadata = AttentionMetadata.build([4])
    expected = full(ids, positions, metadata)
    stage_out = first(ids, positions, metadata)
    with full.model.first_layers_only(1):
        short = full(ids, positions, metadata)
    one_layer, _ = full.model.norm(stage_out.hidden_states, stage_out.residual)
    torch.testing.assert_close(short, one_layer, rtol=0, atol=0)
    assert not torch.allclose(short, expected)
    torch.testing.assert_close(full(ids, positions, metadata), expected, rtol=0, atol=0)
