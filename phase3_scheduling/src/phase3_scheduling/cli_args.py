"""Engine options on the command line, defined once for ``lightvllm bench``, ``serve`` and
``chat``: ``add_engine_args(parser)`` adds vLLM-named flags, ``engine_args(namespace)`` turns
them into ``EngineArgs``."""

from __future__ import annotations

import argparse
import json

from .config import EngineArgs

PRESETS = {"llama-3.1-8b": "LLAMA_3_1_8B"}


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--load-format", default="auto", choices=["auto", "safetensors", "dummy"])
    parser.add_argument("--hf-config", default=None,
                        help=f"model shape for dummy weights: a preset ({', '.join(PRESETS)}) or a config.json path")
    parser.add_argument("--tokenizer", default=None, help="directory with tokenizer.json (default: the model's)")
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-num-batched-tokens", type=int, default=None)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--kv-cache-gib", type=float, default=1.0, help="KV cache size on CPU")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--num-gpu-blocks-override", type=int, default=None)
    parser.add_argument("--no-prefix-caching", action="store_true")
    parser.add_argument("--no-chunked-prefill", action="store_true")
    parser.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs")
    parser.add_argument("--attention-backend", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--pipeline-parallel-size", type=int, default=1)
    parser.add_argument("--distributed-executor-backend", default=None,
                        help="uni, mp, ray (default: uni for one worker, mp for several)")


def hf_config(spec: str | None) -> dict | None:
    if spec is None:
        return None
    if spec in PRESETS:
        import phase1_kernels

        return dict(getattr(phase1_kernels, PRESETS[spec]))
    with open(spec) as handle:
        return json.load(handle)


def engine_args(args: argparse.Namespace) -> EngineArgs:
    return EngineArgs(
        model=getattr(args, "model", None), dtype=args.dtype, device=args.device,
        load_format=args.load_format, hf_config=hf_config(args.hf_config), tokenizer=args.tokenizer,
        seed=args.seed, max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        enable_chunked_prefill=not args.no_chunked_prefill, block_size=args.block_size,
        gpu_memory_utilization=args.gpu_memory_utilization, kv_cache_gib=args.kv_cache_gib,
        num_gpu_blocks_override=args.num_gpu_blocks_override,
        enable_prefix_caching=not args.no_prefix_caching, enforce_eager=args.enforce_eager,
        attention_backend=args.attention_backend,
        tensor_parallel_size=args.tensor_parallel_size,
        pipeline_parallel_size=args.pipeline_parallel_size,
        distributed_executor_backend=args.distributed_executor_backend,
        extra={"hf_config_name": args.hf_config} if args.hf_config else {})
