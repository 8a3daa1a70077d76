"""Engine options on the command line, generated from ``EngineArgs``' fields so that every default
lives in one place (the dataclass): ``add_engine_args(parser)`` adds one vLLM-named flag per field
(``max_num_seqs`` -> ``--max-num-seqs``), ``engine_args(namespace)`` turns them back into
``EngineArgs``. Used by ``lightvllm bench``, ``serve`` and ``chat``."""

from __future__ import annotations

import logging
import argparse
import dataclasses
import json
from typing import Any

from .config import EngineArgs

logger = logging.getLogger(__name__)

PRESETS = {"llama-3.1-8b": "LLAMA_3_1_8B"}

HELP = {
    "dtype": "auto, float32, bfloat16, float16 (auto: float32 on CPU, bfloat16 on GPU)",
    "device": "cpu or cuda (default: cuda when present)",
    "load_format": "auto or safetensors: the checkpoint's weights; dummy: random weights",
    "hf_config": f"model shape for dummy weights: a preset ({', '.join(PRESETS)}) or a "
                 f"config.json path",
    "seed": "seed of the random weights and of unseeded sampling",
    "max_model_len": "context length (default: the model's, capped at 4096)",
    "max_num_seqs": "most sequences in one step (default: 256; 1024 on a GPU of 70 GiB or more)",
    "max_num_batched_tokens": "token budget of one step (default with chunked prefill: 2048 on "
                              "the CPU, 8192 on a GPU)",
    "enable_chunked_prefill": "split long prompts across steps",
    "block_size": "tokens per KV-cache block",
    "gpu_memory_utilization": "share of GPU memory the engine may use (weights + KV cache)",
    "kv_cache_gib": "KV cache size on CPU, GiB",
    "num_gpu_blocks_override": "number of KV blocks, ignoring the memory profile",
    "enable_prefix_caching": "reuse KV blocks of shared prompt prefixes",
    "enforce_eager": "no CUDA graphs",
    "cuda_graph_sizes": "decode batch sizes to capture as CUDA graphs, comma-separated (default: "
                        "1,2,4,8 then every 16 up to max_num_seqs; fewer sizes start faster, "
                        "larger gaps pad decode batches more)",
    "mixed_cuda_graph_max_tokens": "prefill+decode steps up to this many tokens replay piecewise "
                                   "CUDA graphs around eager attention (0: run them eagerly)",
    "attention_backend": "attention backend (default: the best paged backend for the device)",
    "kernel_impl": "force one kernel implementation (native, cpp, cuda, triton)",
    "tokenizer": "directory with tokenizer.json (default: the model's)",
    "tensor_parallel_size": "GPUs (workers) each layer is split across",
    "pipeline_parallel_size": "stages the layers are split into",
    "distributed_executor_backend": "uni, mp, ray or grpc (default: uni for one worker, else mp)",
    "async_scheduling": "schedule the next step while the device runs this one "
                        "(default: on for one worker on a GPU)",
    "max_prefill_tokens_while_decoding": "prompt tokens per step while requests decode, unless "
                                         "requests queue up (0: no cap)",
    "schedule_lead_ms": "with async scheduling in the server's engine process: queue the next "
                        "step this many ms before the running one ends, and let requests that "
                        "arrive until then join it (0: schedule at once; default: 2 with async "
                        "scheduling, else 0)",
}
SKIPPED = {"model", "extra"}  # model is each command's positional argument; extra is internal
SHORT_NEGATIONS = {"enable_prefix_caching": "--no-prefix-caching",
                   "enable_chunked_prefill": "--no-chunked-prefill"}
TYPES = {"str": str, "int": int, "float": float}


def _engine_fields() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(EngineArgs) if f.name not in SKIPPED]


def _value_type(field: dataclasses.Field) -> Any:
    """``int | None`` -> int; dicts come as a preset name or a path (a string)."""
    names = [part.strip() for part in str(field.type).split("|") if part.strip() != "None"]
    return TYPES.get(names[0], str)


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("engine", "EngineArgs (defaults shown)")
    for field in _engine_fields():
        flag = "--" + field.name.replace("_", "-")
        help_text = HELP[field.name]
        if field.type in ("bool", "bool | None"):
            short = SHORT_NEGATIONS.get(field.name)
            group.add_argument(flag, dest=field.name, default=field.default,
                               action=argparse.BooleanOptionalAction, help=help_text)
            if short:  # the older spelling stays
                group.add_argument(short, dest=field.name, action="store_false",
                                   help=f"same as --no-{flag[2:]}")
            continue
        default = None if field.name in ("hf_config", "cuda_graph_sizes") else field.default
        shown = "" if default is None else f" (default: {default})"
        group.add_argument(flag, dest=field.name, type=_value_type(field), default=default,
                           help=help_text + shown)
    group.add_argument("--worker-addresses", default=None,
                       help="grpc backend: host:port of each worker, rank 0 first, comma-separated"
                            " (EngineArgs.extra['worker_addresses'])")


def hf_config(spec: str | None) -> dict | None:
    if spec is None:
        return None
    if spec in PRESETS:
        import phase1_kernels

        return dict(getattr(phase1_kernels, PRESETS[spec]))
    with open(spec) as handle:
        return json.load(handle)


def int_list(spec: str | None, flag: str) -> list[int] | None:
    """``"1,2,4"`` -> ``[1, 2, 4]``; None stays None."""
    if spec is None:
        return None
    try:
        return [int(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{flag} takes comma-separated integers, got {spec!r}") from None


def engine_args(args: argparse.Namespace) -> EngineArgs:
    values = {f.name: getattr(args, f.name) for f in _engine_fields()}
    values["hf_config"] = hf_config(args.hf_config)
    values["cuda_graph_sizes"] = int_list(args.cuda_graph_sizes, "--cuda-graph-sizes")
    extra = {"hf_config_name": args.hf_config} if args.hf_config else {}
    if getattr(args, "worker_addresses", None):
        extra["worker_addresses"] = args.worker_addresses
    return EngineArgs(model=getattr(args, "model", None), extra=extra, **values)
