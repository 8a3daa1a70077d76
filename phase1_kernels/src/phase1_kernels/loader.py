"""Build a LLaMA model from a HuggingFace directory (safetensors) or with random weights.

Memory: the model is allocated once, uninitialised, directly on the target device and dtype;
checkpoint tensors are then streamed one at a time from memory-mapped safetensors files
(single or sharded through ``model.safetensors.index.json``), converted and copied into place.
No second full copy of the weights ever exists.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Iterator

import torch
from tqdm.auto import tqdm

from .config import ModelConfig
from .layers.attention import AttentionBackend
from .layers.cpu_linear import process_weights_after_loading
from .layers.linear import LinearFactory
from .lazy_tensor import LazyTensor
from .models.llama import LlamaForCausalLM

logger = logging.getLogger(__name__)
LOAD_FORMATS = ("auto", "safetensors", "dummy")


class WeightsError(RuntimeError):
    """The checkpoint's tensors do not match the model."""


def safetensors_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted({model_dir / f for f in weight_map.values()})
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise WeightsError(f"{index.name} names shard files that do not exist: {missing}")
        return files
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        others = [p.name for pattern in ("*.bin", "*.pt") for p in model_dir.glob(pattern)]
        hint = f" (found {others}: convert them to safetensors)" if others else ""
        raise WeightsError(f"no .safetensors files in {model_dir}{hint}")
    return files


def iterate_safetensors(model_dir: Path, progress: bool = True, lazy: bool = False
                        ) -> Iterator[tuple[str, torch.Tensor | LazyTensor]]:
    """Yield ``(name, tensor)`` for every tensor in the directory's safetensors files.

    ``lazy=True`` yields ``LazyTensor``s instead, valid until the next item: the consumer reads
    what it needs of each (a tensor-parallel shard reads only its slice). A file that is not
    readable safetensors (truncated, another format) raises ``WeightsError`` naming it."""
    from safetensors import SafetensorError, safe_open

    files = safetensors_files(model_dir)
    quiet = not progress or len(files) < 2
    for path in tqdm(files, desc="loading safetensors", unit="file", disable=quiet):
        logger.debug("reading %s", path)
        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                for name in list(handle.keys()):
                    yield name, (LazyTensor(handle.get_slice(name), name) if lazy
                                 else handle.get_tensor(name))
        except (OSError, RuntimeError, ValueError, SafetensorError) as error:  # truncated, not one
            if isinstance(error, WeightsError):
                raise
            raise WeightsError(f"{path} is not a readable safetensors file "
                               f"({type(error).__name__}: {error})") from None


@contextlib.contextmanager
def _building_on(device: torch.device, dtype: torch.dtype):
    """Default device and dtype while the model's parameters are created (restored after)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def _dummy_fill(model: torch.nn.Module, seed: int) -> None:
    """Random weights like vLLM's ``load_format="dummy"``: speed does not depend on values.
    Drawn on the parameters' own device (seconds for 8B on a GPU), reproducible per seed."""
    generators: dict[torch.device, torch.Generator] = {}
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.data.fill_(1.0)
            continue
        device = param.device
        if device not in generators:
            generators[device] = torch.Generator(device=device).manual_seed(seed)
        param.data.normal_(0.0, 0.02, generator=generators[device])


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None``/``"auto"``: fp32 on CPU (no fast bf16 there), bf16 on GPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    names = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
             "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in names:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(names)}")
    return names[dtype]


def build_model(
    config: ModelConfig,
    model_dir: Path | None = None,
    load_format: str = "auto",
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    attn_backend: str | AttentionBackend | None = None,
    linear_factory: LinearFactory | None = None,
    kernel_impl: str | None = None,
    seed: int = 0,
    layer_range: tuple[int, int] | None = None,
) -> LlamaForCausalLM:
    """Allocate the model on ``device``/``dtype`` and fill it from ``model_dir`` or randomly.

    ``linear_factory`` and ``layer_range`` are phase 4's injection points (a tensor-parallel
    shard, a pipeline stage's layers). Checkpoint tensors are read lazily: each parameter's
    ``weight_loader`` reads what it holds, so a shard never reads a full weight."""
    if load_format not in LOAD_FORMATS:
        raise ValueError(f"load_format {load_format!r} is not one of {LOAD_FORMATS}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = resolve_dtype(dtype, device)
    with _building_on(device, dtype):
        model = LlamaForCausalLM(config, attn_backend, linear_factory, kernel_impl, layer_range)
    model.eval()
    if load_format == "dummy":
        _dummy_fill(model, seed)
        process_weights_after_loading(model)
        return model
    if model_dir is None:
        raise ValueError("a model directory is needed unless load_format='dummy'")
    try:
        with torch.inference_mode():
            loaded = model.load_weights(iterate_safetensors(Path(model_dir), lazy=True))
    except (KeyError, ValueError) as error:
        raise WeightsError(f"{model_dir}: {error.args[0]}") from None
    logger.info("loaded %d checkpoint tensors from %s", len(loaded), model_dir)
    missing = model.expected_checkpoint_parts() - loaded
    if missing:
        raise WeightsError(
            f"{len(missing)} tensors missing from the checkpoint in {model_dir}, "
            f"e.g. {sorted(missing)[:5]}"
        )
    process_weights_after_loading(model)  # CPU: prepack the GEMM weights (layers/cpu_linear.py)
    return model
