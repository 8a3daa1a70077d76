"""``run_b4.py --engine vllm`` (the same-run vLLM baseline of B4) starts ``vllm serve`` on the
preset's model shape with vLLM's own defaults: random bf16 weights, no tokenizer (our client sends
token ids), the directory's config.json read back by transformers as the preset's Llama."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

from phase1_kernels import LLAMA_3_1_8B

RUN_B4 = Path(__file__).resolve().parents[1] / "benchmarks" / "run_b4.py"


@pytest.fixture(scope="module")
def run_b4():
    spec = importlib.util.spec_from_file_location("run_b4", RUN_B4)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_vllm_serves_the_presets_shape_with_its_defaults(run_b4):
    args = argparse.Namespace(preset="h200", serve_args="--max-num-seqs 256", port=8799)
    name, serve_args, cmd = run_b4.vllm_server(run_b4.PRESETS["h200"], args)
    assert name == "vllm serve"
    assert cmd[1:4] == ["-m", "vllm.entrypoints.cli.main", "serve"]
    model_dir = cmd[4]
    assert cmd[5:] == serve_args[1:] + ["--port", "8799"]
    assert serve_args[1:8] == ["--load-format", "dummy", "--skip-tokenizer-init", "--dtype",
                               "bfloat16", "--seed", "0"]
    assert serve_args[-2:] == ["--max-num-seqs", "256"]  # --serve-args only: vLLM's own defaults
    assert "--max-model-len" not in serve_args  # else none of ours
    config = json.loads((Path(model_dir) / "config.json").read_text())
    assert {k: config[k] for k in LLAMA_3_1_8B} == LLAMA_3_1_8B


def test_a_preset_without_a_model_shape_is_refused(run_b4):
    args = argparse.Namespace(preset="cpu", serve_args="", port=8799)
    with pytest.raises(SystemExit, match="model shape"):
        run_b4.vllm_server(run_b4.PRESETS["cpu"], args)
