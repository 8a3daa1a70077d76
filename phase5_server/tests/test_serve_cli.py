"""``lightvllm serve`` with a model that cannot load: one readable paragraph naming the file and
the problem, no traceback, exit status 1 (real subprocesses, as a user or a supervisor runs it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

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
