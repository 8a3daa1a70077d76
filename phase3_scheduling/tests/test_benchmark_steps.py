"""`lightvllm bench throughput` / `latency` report the engine's step timeline of the timed run
(step_timeline.py): decode-only vs mixed steps, their rows and prompt tokens. Checked against
the workload itself: with no chunking, preemption or cached prefix, every output token is one
row of one step, and every prompt token is carried by a mixed step exactly once."""

from __future__ import annotations

import json

import pytest

from phase3_scheduling.benchmark import latency_main, throughput_main
from shared.fixtures import TINY_LLAMA

# the fixtures' tiny shape, with what a config.json for dummy weights must also say
TINY = {**TINY_LLAMA, "rope_theta": 10000.0, "bos_token_id": 1, "eos_token_id": 2}


@pytest.fixture()
def tiny_args(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(TINY))
    return ["--load-format", "dummy", "--hf-config", str(config), "--kv-cache-gib", "0.05",
            "--device", "cpu"]


def test_throughput_counts_every_token_of_the_timed_run(tiny_args, capsys):
    row = throughput_main(tiny_args + ["--num-prompts", "6", "--input-len", "8", "40",
                                       "--output-len", "3", "9"])[0]
    steps = row["steps"]
    rows = (steps["decode_steps"] * steps["decode_rows_per_step"]
            + steps["mixed_steps"] * steps["mixed_rows_per_step"])
    assert rows == pytest.approx(row["output_tokens"])  # the warm-up's steps are not in it
    assert steps["mixed_steps"] * steps["mixed_prompt_tokens_per_step"] == pytest.approx(
        row["input_tokens"])
    assert steps["decode_steps"] >= 9 - 1  # the longest request decodes after its prefill
    assert 0 < steps["busy_seconds"] <= row["seconds"]
    assert "engine steps: " in capsys.readouterr().out


def test_latency_counts_the_timed_iterations_only(tiny_args):
    row = latency_main(tiny_args + ["--batch-size", "2", "--input-len", "16", "--output-len", "5",
                                    "--num-iters", "2"])[0]
    steps = row["steps"]
    # two timed iterations (the warm-up is left out): each one prefill step, then 4 decode steps
    assert steps["mixed_steps"] == 2
    assert steps["mixed_prompt_tokens_per_step"] == 2 * 16
    assert steps["decode_steps"] == 2 * 4
    assert steps["decode_rows_per_step"] == 2


def test_decode_step_timer_times_decode_only_steps_and_frees_everything(tiny_args):
    """``time_decode_steps`` (the same-run vLLM comparison's timer): the timed steps are
    decode-only steps of the whole batch, and its requests leave nothing behind."""
    import argparse

    from phase3_scheduling.benchmark import add_model_args, build_llm, time_decode_steps
    from phase3_scheduling.sampling_params import SamplingParams
    from phase3_scheduling.step_timeline import summarize_window

    parser = argparse.ArgumentParser()
    add_model_args(parser)
    llm, _ = build_llm(parser.parse_args(tiny_args + ["--max-num-batched-tokens", "32"]))
    engine = llm.engine
    free = engine.kv_manager.pool.num_free_blocks
    before = engine.core.step_clock.counters.copy()
    row = time_decode_steps(engine, SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=64),
                            batch=3, prompt_len=20, vocab=TINY["vocab_size"], warm=2, timed=5)
    assert row["prefill_steps"] >= 2  # 60 prompt tokens at 32 a step
    assert row["step_ms"] > 0 and row["timed_steps"] == 5
    assert not engine.has_unfinished_requests()
    assert engine.kv_manager.pool.num_free_blocks == free
    steps = summarize_window(before, engine.core.step_clock.counters)
    assert steps["decode_steps"] >= 2 + 5 and steps["decode_rows_per_step"] <= 3
