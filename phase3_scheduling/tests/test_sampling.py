"""Sampler, SamplingParams and detokenizer against independent references."""

import pytest
import torch

from phase3_scheduling import SamplingParams, SamplingParamsError
from phase3_scheduling.detokenizer import IncrementalDetokenizer
from phase3_scheduling.sampler import Sampler, SamplingInputs
from shared.tokenizer import Tokenizer


def inputs(params, outputs=None, prompts=None, gens=None):
    n = len(params)
    return SamplingInputs(params, outputs or [[] for _ in range(n)], prompts or [[] for _ in range(n)],
                          gens or [None] * n, [[] for _ in range(n)])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=-0.1), "temperature"), (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"),
        (dict(top_k=-2), "top_k"), (dict(min_p=1.5), "min_p"), (dict(max_tokens=0), "max_tokens"),
        (dict(n=0), "n must"), (dict(repetition_penalty=0), "repetition_penalty"),
        (dict(presence_penalty=3), "presence_penalty"), (dict(frequency_penalty=-3), "frequency_penalty"),
        (dict(min_tokens=5, max_tokens=2), "min_tokens"), (dict(logprobs=50), "logprobs"),
        (dict(stop=[""]), "stop"),
    ],
)
def test_invalid_sampling_params(kwargs, message):
    with pytest.raises(SamplingParamsError, match=message):
        SamplingParams(**kwargs)


def test_filters_match_transformers_logits_processors():
    from transformers.generation.logits_process import (
        MinPLogitsWarper, RepetitionPenaltyLogitsProcessor, TopKLogitsWarper, TopPLogitsWarper,
    )

    torch.manual_seed(0)
    logits = torch.randn(1, 50) * 3
    prompt = [1, 2, 3, 7]
    # repetition penalty on prompt tokens vs HF
    p = SamplingParams(repetition_penalty=1.3, temperature=0)
    ours = logits.clone()
    Sampler._apply_penalties(ours, inputs([p], prompts=[prompt]))
    ref = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([prompt]), logits.clone())
    torch.testing.assert_close(ours, ref)
    # the support that sampling can reach, vs HF warpers chained the same way
    for params, warpers in [
        (SamplingParams(top_k=5), [TopKLogitsWarper(5)]),
        (SamplingParams(top_p=0.7), [TopPLogitsWarper(0.7)]),
        (SamplingParams(top_k=10, top_p=0.8), [TopKLogitsWarper(10), TopPLogitsWarper(0.8)]),
        (SamplingParams(min_p=0.2), [MinPLogitsWarper(0.2)]),
    ]:
        expected = logits.clone()
        for w in warpers:
            expected = w(torch.tensor([prompt]), expected)
        support = set(torch.isfinite(expected[0]).nonzero().flatten().tolist())
        seen = set()
        gen = torch.Generator().manual_seed(0)
        for _ in range(400):
            seen.add(Sampler._sample(logits.clone(), [params], [gen]).item())
        assert seen <= support and len(seen) >= min(len(support), 3)


def test_frequency_and_presence_penalties():
    logits = torch.zeros(1, 6)
    p = SamplingParams(frequency_penalty=0.5, presence_penalty=0.25)
    Sampler._apply_penalties(logits, inputs([p], outputs=[[2, 2, 2, 4]]))
    assert logits[0].tolist() == [0, 0, -1.75, 0, -0.75, 0]


def test_sampled_frequencies_follow_the_distribution():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().repeat(4000, 1)
    p = SamplingParams(temperature=1.0)
    out = Sampler()(logits, inputs([p] * 4000))
    freq = torch.bincount(torch.tensor(out.token_ids), minlength=4) / 4000
    assert (freq - probs).abs().max() < 0.03


def test_seeded_rows_do_not_depend_on_neighbours():
    torch.manual_seed(1)
    logits = torch.randn(3, 100)
    p = SamplingParams(temperature=1.0, seed=9)
    seq = []
    for batch_rows in ([1], [0, 1, 2]):
        gen = torch.Generator().manual_seed(9)
        draws = []
        for _ in range(5):
            params = [SamplingParams(temperature=1.0) if r != 1 else p for r in batch_rows]
            gens = [gen if r == 1 else None for r in batch_rows]
            out = Sampler()(logits[batch_rows], inputs(params, gens=gens))
            draws.append(out.token_ids[batch_rows.index(1)])
        seq.append(draws)
    assert seq[0] == seq[1]


@pytest.fixture(scope="module")
def tok(smollm2_dir):
    return Tokenizer(smollm2_dir)


@pytest.mark.parametrize("text", ["héllo wörld 東京タワー 🎉🚀 done", "naïve café — “quotes” ©", "a\n\n  b\tc"])
def test_incremental_text_equals_full_decode(tok, text):
    ids = tok.encode(text)
    detok = IncrementalDetokenizer(tok, tok.encode("Say:"), [])
    seen = []
    for t in ids:
        detok.add_token(t)
        seen.append(detok.text)
        assert "\ufffd" not in detok.text
    assert detok.text == tok.decode(ids) == text
    assert all(b.startswith(a) for a, b in zip(seen, seen[1:]))


def test_stop_string_spanning_tokens_is_cut(tok):
    text = "The answer is 42. END OF STORY and more"
    ids = tok.encode(text)
    detok = IncrementalDetokenizer(tok, [], ["END OF STORY"])
    streamed = []
    for t in ids:
        stop = detok.add_token(t)
        streamed.append(detok.visible_text(stop is not None))
        if stop:
            break
    assert stop == "END OF STORY"
    assert detok.text == "The answer is 42. "
    assert all("END" not in s for s in streamed)
