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


FAKE_VLLM_MAIN = '''
"""A stand-in for ``python -m vllm.entrypoints.cli.main serve DIR ... --port P``: records its
arguments, then serves the bench client's stub on port P (stopped by run_b4's SIGINT)."""
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_VLLM_ARGS"], "w") as handle:
    json.dump(args, handle)
stub = os.environ["FAKE_VLLM_STUB"]
sys.argv = [stub, "stub", "--loop", "asyncio", "--port", args[args.index("--port") + 1]]
sys.path.insert(0, os.path.dirname(stub))
import runpy
runpy.run_path(stub, run_name="__main__")
'''


def test_run_b4_drives_vllm_serve_end_to_end(run_b4, tmp_path, monkeypatch):
    """The whole ``--engine vllm`` path on the CPU: the server command, the wait for /health, the
    client's rates, the stop by PID; a stand-in for vLLM serves the client's stub."""
    package = tmp_path / "fake" / "vllm" / "entrypoints" / "cli"
    package.mkdir(parents=True)
    for level in (package.parents[1], package.parents[0], package):
        (level / "__init__.py").write_text("")
    (package / "main.py").write_text(FAKE_VLLM_MAIN)
    recorded = tmp_path / "args.json"
    monkeypatch.setenv("FAKE_VLLM_ARGS", str(recorded))
    monkeypatch.setenv("FAKE_VLLM_STUB", str(RUN_B4.parent / "client_capacity.py"))
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path / 'fake'}:{__import__('os').environ.get('PYTHONPATH', '')}")
    from phase4_distributed.executors.processes import free_port

    out = tmp_path / "b4.json"
    run_b4.main(["--engine", "vllm", "--preset", "h200-16rps", "--port", str(free_port()),
                 "--out", str(out), "--extra-bench", "--num-prompts", "6", "--output-len", "5",
                 "--request-rate", "inf"])
    rows = json.loads(out.read_text())
    assert len(rows) == 1 and rows[0]["engine"] == "vllm"
    assert (rows[0]["completed"], rows[0]["failed"], rows[0]["output_tokens"]) == (6, 0, 30)
    assert rows[0]["server_cmd"].startswith("vllm serve ")
    served = json.loads(recorded.read_text())
    assert served[0] == "serve" and "--skip-tokenizer-init" in served
