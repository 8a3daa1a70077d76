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
