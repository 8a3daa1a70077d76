"""TP and PP across real processes (gloo on the CPU, loopback rendezvous): one varlen forward
of two steps per layout, against phase 1's single-process model in float64.

Checked per layout: logits equal TP=1 within 1e-6; each rank holds exactly its checkpoint
slices (and reads only those bytes); all-reduces per forward = 2 x layers + 1 (the vocab
embedding's, then o_proj's and down_proj's in every layer; the LM head's all-gather counted
apart); PP sends exactly hidden + residual per step; each stage's KV cache covers its layers.
"""

from __future__ import annotations


import pytest
import torch
from safetensors.torch import load_file

from phase1_kernels import ModelConfig
from phase4_distributed.testing import BLOCK_SIZE, NUM_BLOCKS, reference_logits, run_layouts
from shared.fixtures import write_random_llama

LAYOUTS = {"tp2": (2, 1), "tp4": (4, 1), "pp2": (1, 2), "tp2pp2": (2, 2)}
TIES = ("untied", "tied")
NUM_LAYERS = 3  # PP=2 splits them unevenly: [0, 2) and [2, 3)
PAD = 64  # vocabulary padding multiple per rank (the default)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return {tie: write_random_llama(tmp_path_factory.mktemp(tie), seed=11, num_hidden_layers=NUM_LAYERS,
                                    tie_word_embeddings=tie == "tied") for tie in TIES}


@pytest.fixture(scope="module")
def world_runs(checkpoints, tmp_path_factory):
    """Layouts of one world size run in one launch (2 ranks: tp2, pp2; 4 ranks: tp4,
    tp2pp2), started the first time a test asks for one of them."""
    done: dict[str, dict] = {}

    def get(layout: str) -> dict:
        if layout not in done:
            world = LAYOUTS[layout][0] * LAYOUTS[layout][1]
            same = {k: v for k, v in LAYOUTS.items() if v[0] * v[1] == world}
            done.update(run_layouts(same, checkpoints, tmp_path_factory.mktemp(f"world{world}")))
        return done[layout]
    return get


@pytest.fixture(params=list(LAYOUTS))
def layout_run(request, world_runs):
    tp, pp = LAYOUTS[request.param]
    return tp, pp, world_runs(request.param)


def stage_range(pp_rank: int, pp: int) -> tuple[int, int]:
    return (0, NUM_LAYERS) if pp == 1 else [(0, 2), (2, 3)][pp_rank]


def expected_shards(ckpt: dict, config: ModelConfig, tp: int, r: int, start: int, end: int) -> dict:
    """Rank r's parameters cut by hand from the checkpoint: q heads [r*h, (r+1)*h), the kv heads
    those query heads read (GQA group = heads / kv heads), 1/tp of the MLP, vocab rows of the
    padded vocabulary (padding rows zero)."""
    heads, d, inter = config.num_attention_heads, config.head_dim, config.intermediate_size
    hq, group = heads // tp, heads // config.num_key_value_heads
    kv_per, kv0 = max(1, config.num_key_value_heads // tp), (r * hq) // group
    q_rows, kv_rows = slice(r * hq * d, (r + 1) * hq * d), slice(kv0 * d, (kv0 + kv_per) * d)
    i_rows = slice(r * inter // tp, (r + 1) * inter // tp)
    per = -(-config.vocab_size // (PAD * tp)) * PAD

    def vocab_rows(t):
        shard = torch.zeros(per, t.shape[1], dtype=t.dtype)
        real = t[r * per:(r + 1) * per]
        shard[: len(real)] = real
        return shard

    out = {}
    tied, first, last = config.tie_word_embeddings, start == 0, end == config.num_hidden_layers
    if first:
        out["model.embed_tokens.weight"] = vocab_rows(ckpt["model.embed_tokens.weight"])
    if last:
        out["model.norm.weight"] = ckpt["model.norm.weight"]
        if not (tied and first):
            out["lm_head.weight"] = vocab_rows(ckpt["model.embed_tokens.weight" if tied else "lm_head.weight"])
    for i in range(start, end):
        p = f"model.layers.{i}."
        out[p + "self_attn.qkv_proj.weight"] = torch.cat([
            ckpt[p + "self_attn.q_proj.weight"][q_rows], ckpt[p + "self_attn.k_proj.weight"][kv_rows],
            ckpt[p + "self_attn.v_proj.weight"][kv_rows]])
        out[p + "self_attn.o_proj.weight"] = ckpt[p + "self_attn.o_proj.weight"][:, q_rows]
        out[p + "mlp.gate_up_proj.weight"] = torch.cat([ckpt[p + "mlp.gate_proj.weight"][i_rows],
                                                        ckpt[p + "mlp.up_proj.weight"][i_rows]])
        out[p + "mlp.down_proj.weight"] = ckpt[p + "mlp.down_proj.weight"][:, i_rows]
        for norm in ("input_layernorm", "post_attention_layernorm"):
            out[p + norm + ".weight"] = ckpt[p + norm + ".weight"]
    return out


def test_logits_equal_tp1(layout_run, checkpoints):
    tp, pp, results = layout_run
    for tie in TIES:
        expected = reference_logits(checkpoints[tie])
        last_stage = [r for r in results[tie] if r["pp_rank"] == pp - 1]
        assert len(last_stage) == tp
        for rank in last_stage:
            for step, logits in enumerate(expected):
                got = rank["tensors"][f"logits{step}"]
                assert got.shape == logits.shape == (rank["steps"][step]["num_tokens"], 320)
                torch.testing.assert_close(got, logits, rtol=0, atol=1e-6)
        assert all(not any(k.startswith("logits") for k in r["tensors"]) for r in results[tie]
                   if r["pp_rank"] != pp - 1)


def test_each_rank_holds_exactly_its_checkpoint_slices(layout_run, checkpoints):
    tp, pp, results = layout_run
    for tie in TIES:
        config = ModelConfig.from_pretrained(checkpoints[tie])
        ckpt = load_file(checkpoints[tie] / "model.safetensors")
        for rank in results[tie]:
            start, end = stage_range(rank["pp_rank"], pp)
            expected = expected_shards(ckpt, config, tp, rank["tp_rank"], start, end)
            params = {k: v for k, v in rank["tensors"].items() if not k.startswith("logits")}
            assert sorted(params) == sorted(expected)
            for name, shard in expected.items():
                assert torch.equal(params[name], shard.double()), name
            assert rank["num_params"] == sum(t.numel() for t in expected.values())
            padding = sum(int((t == 0).all(dim=1).sum()) * t.shape[1] for n, t in expected.items()
                          if n in ("model.embed_tokens.weight", "lm_head.weight"))
            assert rank["bytes_read"] == 4 * (rank["num_params"] - padding)  # fp32 file, no more


def test_sharded_weights_are_one_tp_th(layout_run, checkpoints):
    """Exact per-rank counts for the untied tiny model (hidden 64, 4 heads, 2 kv heads of 16,
    MLP 144, vocab 320 padded to a multiple of 64 x tp): everything but the replicated norms
    (and k/v when tp > kv heads) is 1/tp of the whole."""
    tp, pp, results = layout_run
    per_layer_sharded = {1: 8192 + 4096 + 18432 + 9216, 2: 19968, 4: 3072 + 1024 + 4608 + 2304}
    vocab_rows = {1: 320, 2: 192, 4: 128}  # 320 -> 384 (tp 2) / 512 (tp 4) padded rows
    norms = 2 * 64
    for rank in results["untied"]:
        start, end = stage_range(rank["pp_rank"], pp)
        first, last = start == 0, end == NUM_LAYERS
        expected = (end - start) * (per_layer_sharded[tp] + norms) + 64 * last \
            + vocab_rows[tp] * 64 * (first + last)
        assert rank["num_params"] == expected
    assert per_layer_sharded[2] * 2 == per_layer_sharded[1]
    # tp 4 > 2 kv heads: every kv head lives on two ranks, one extra copy of k and v in all
    assert per_layer_sharded[4] * 4 - per_layer_sharded[1] == 2 * (2 * 16 * 64)


def test_all_reduces_per_forward_are_two_per_layer_plus_one(layout_run):
    tp, pp, results = layout_run
    hidden_bytes = 64 * 8  # one float64 row of the hidden state
    for tie in TIES:
        for step in range(2):
            total = 0
            for rank in (r for r in results[tie] if r["tp_rank"] == 0):
                start, end = stage_range(rank["pp_rank"], pp)
                stats = rank["steps"][step]
                calls = stats["tp_forward"]["calls"].get("all_reduce", 0)
                want = 0 if tp == 1 else 2 * (end - start) + (start == 0)
                assert calls == want
                assert stats["tp_forward"]["bytes"].get("all_reduce", 0) == want * stats["num_tokens"] * hidden_bytes
                assert set(stats["tp_forward"]["calls"]) <= {"all_reduce"}
                if end == NUM_LAYERS and tp > 1:
                    assert stats["tp_logits"]["calls"] == {"all_gather": 1}
                total += calls
            assert total == (0 if tp == 1 else 2 * NUM_LAYERS + 1)


def test_pipeline_moves_hidden_and_residual_only(layout_run):
    tp, pp, results = layout_run
    for tie in TIES:
        for rank in results[tie]:
            for stats in rank["steps"]:
                calls, nbytes = stats["pp"]["calls"], stats["pp"]["bytes"]
                activation = stats["num_tokens"] * 64 * 8
                sends = 2 if pp > 1 and rank["pp_rank"] < pp - 1 else 0
                recvs = 2 if pp > 1 and rank["pp_rank"] > 0 else 0
                assert (calls.get("send", 0), nbytes.get("send", 0)) == (sends, sends * activation)
                assert (calls.get("recv", 0), nbytes.get("recv", 0)) == (recvs, recvs * activation)
                assert calls.get("send_metadata", 0) == (1 if sends else 0)  # one header message


def test_each_stage_caches_only_its_layers(layout_run):
    tp, pp, results = layout_run
    for rank in results["untied"]:
        start, end = stage_range(rank["pp_rank"], pp)
        kv_heads = max(1, 2 // tp)
        assert rank["kv_cache"] == [[i, [2, NUM_BLOCKS, BLOCK_SIZE, kv_heads, 16], True]
                                    for i in range(start, end)]


def test_smollm2_tp3_equals_tp1(smollm2_dir, tmp_path):
    results = run_layouts({"tp3": (3, 1)}, {"smollm2": smollm2_dir}, tmp_path, dump_params=False,
                          timeout_s=300)["tp3"]
    expected = reference_logits(smollm2_dir)
    config = ModelConfig.from_pretrained(smollm2_dir)
    layer = (3 * 64 + 2 * 64) * 576 + 3 * 64 * 576 + 2 * 512 * 576 + 576 * 512 + 2 * 576
    for rank in results["smollm2"]:
        for step, logits in enumerate(expected):
            torch.testing.assert_close(rank["tensors"][f"logits{step}"], logits, rtol=0, atol=1e-6)
        # 9 heads / 3 kv heads of 64 -> 3 q + 1 k + 1 v heads per rank; tied vocab 49152 / 3
        assert rank["num_params"] == 30 * layer + 576 + 16384 * 576
        assert rank["bytes_read"] == 4 * rank["num_params"]
        assert [s["tp_forward"]["calls"]["all_reduce"] for s in rank["steps"]] == [61, 61]
    assert config.num_hidden_layers == 30
