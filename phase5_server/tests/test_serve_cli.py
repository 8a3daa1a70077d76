"""``lightvllm serve`` with a model that cannot load: one readable paragraph naming the file and
the problem, no traceback, exit status 1 (real subprocesses, as a user or a supervisor runs it)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from phase5_server.testing import free_port


def _broken_copy(source: Path, target: Path, break_it) -> Path:
    target.mkdir()
    for f in source.iterdir():
        if f.suffix in (".json", ".jinja"):
            shutil.copy(f, target / f.name)
    (target / "model.safetensors").symlink_to(source / "model.safetensors")
    break_it(target)
    return target


def _truncate(d: Path) -> None:
    data = (d / "model.safetensors").resolve().read_bytes()[:1_000_000]
    (d / "model.safetensors").unlink()
    (d / "model.safetensors").write_bytes(data)


def _bad_json(d: Path) -> None:
    (d / "config.json").write_text('{"vocab_size": 49152, "hidden_size":\n')


def _no_field(d: Path) -> None:
    config = json.loads((d / "config.json").read_text())
    del config["hidden_size"]
    (d / "config.json").write_text(json.dumps(config))


CASES = {
    "missing": (None, ["neither a built-in model"]),
    "truncated": (_truncate, ["model.safetensors", "not a readable safetensors file"]),
    "bad_json": (_bad_json, ["config.json", "not valid JSON", "line 2"]),
    "no_field": (_no_field, ["config.json", "lacks the field 'hidden_size'"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_serve_exits_1_with_one_readable_error(case, smollm2_dir, tmp_path):
    break_it, expected = CASES[case]
    model = tmp_path / "missing" if break_it is None else \
        _broken_copy(Path(smollm2_dir), tmp_path / case, break_it)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-m", "lightvllm.cli", "serve", str(model), "--port",
                           str(free_port()), "--device", "cpu"], capture_output=True, text=True,
                          timeout=300, env=env)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "Traceback" not in output and "serving" not in output.lower().replace("served", "")
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("lightvllm serve: could not load"), output
    for text in expected:
        assert text in errors[0], errors[0]
    assert str(model) in errors[0]


@pytest.mark.parametrize("flag, expected", [([], True), (["--no-engine-process"], False)])
def test_engine_process_flag_reaches_the_server_config(monkeypatch, flag, expected):
    from phase5_server import api_server
    from phase5_server.cli import serve

    seen = {}
    monkeypatch.setattr(api_server, "run_server", lambda config: seen.setdefault("config", config))
    serve.main(["--device", "cpu", *flag])
    assert seen["config"].engine_process is expected
    start = seen["config"].engine_start  # begun before the server ran, ended when main returns
    assert (start is not None) is expected
    assert start is None or start.proc.poll() is not None


@pytest.mark.parametrize("flag, loop", [([], "auto"), (["--event-loop", "asyncio"], "asyncio")])
def test_event_loop_and_gc_freeze_reach_the_server(monkeypatch, flag, loop):
    from phase5_server import api_server
    from phase5_server.cli import serve

    seen = {}
    monkeypatch.setattr(api_server, "run_server", lambda config: seen.setdefault("config", config))
    serve.main(["--device", "cpu", "--no-engine-process", *flag])
    config = seen["config"]
    assert config.event_loop == loop and config.gc_freeze is True
    assert api_server.make_server(config).config.loop == loop  # what uvicorn will run


TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0,
            tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0]
        try:
            if httpx.get(url + "/health", timeout=2, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)  # not listening yet
            continue
        time.sleep(0.1)
    raise TimeoutError(f"{url} was not healthy after {timeout} s")


def test_serve_starts_the_engine_early_and_reports_its_start_up_phases(tmp_path):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "lightvllm.cli", "serve", "--port", str(port),
               "--load-format", "dummy", "--hf-config", str(config), "--device", "cpu",
               "--dtype", "float32", "--max-model-len", "128", "--kv-cache-gib", "0.05",
               "--served-model-name", "tiny"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        _wait_healthy(url, proc)
        phases = httpx.get(url + "/startup", timeout=5, trust_env=False).json()["phases"]
        assert phases["api_launched_early"] > 0.0  # the engine started before the API's imports
        assert "api_spawn" in phases and "load_model" in phases and "total" in phases
        body = {"model": "tiny", "prompt": [1, 2, 3], "max_tokens": 4, "temperature": 0}
        reply = httpx.post(url + "/v1/completions", json=body, timeout=60, trust_env=False)
        assert reply.status_code == 200, reply.text
    finally:
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, output
