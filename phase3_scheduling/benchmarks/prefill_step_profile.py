"""One prefill step of the Llama-3.1-8B shape, profiled: GEMM time against the step's wall time
(issue 9: "profile one 8k-token step first"). B3's prompts reach the engine as 8,192-token
steps that run eagerly (above the largest piecewise-graph size); this says where such a step's
time goes and how far its GEMMs are from what cuBLAS reaches on the same device.

Builds the engine eagerly (dummy bf16 weights, ``max_num_batched_tokens = --tokens``, no prefix
caching), then, for each measured step, adds ``--prompts`` random prompts that fill exactly one
step (``--tokens / --prompts`` tokens each, ``max_tokens=1``) and runs ``engine.step()``:

1. wall time of the step (synchronised on both sides), median of ``--timed-steps``;
2. one more such step under ``torch.profiler``: GPU kernel time per family (the same families
   and attribution as ``b2_step_profile.py``: the n-th GEMM of a step is qkv, o, gate_up, down
   by its place, the last the lm_head), the FLOPs each family must do (GEMMs ``2·tokens·in·out``;
   lm_head only for the prompts' last rows; causal attention ``2·l²·heads·head_dim`` per layer
   and prompt of ``l`` tokens) and its TFLOP/s;
3. the ceiling, in the same run: one cuBLAS bf16 GEMM of the step's largest shape
   (``[tokens, hidden] x [hidden, 2·intermediate]``, gate_up) timed alone with CUDA events.

    python phase3_scheduling/benchmarks/prefill_step_profile.py --out prefill.json  # 8,192 = 16 x 512
    python phase3_scheduling/benchmarks/prefill_step_profile.py --tokens 8192 --prompts 8
    python phase3_scheduling/benchmarks/prefill_step_profile.py --tiny   # 2-layer CPU smoke (CI)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import b2_step_profile as step_profile  # noqa: E402  (engine build, family ranges, kernel attribution)
from phase3_scheduling import LLM, SamplingParams  # noqa: E402
from phase3_scheduling.cli_args import add_engine_args, engine_args  # noqa: E402
from phase3_scheduling.config import DEFAULT_MAX_NUM_SEQS  # noqa: E402
from shared.bench import cuda_seconds_per_call, hardware, markdown_table  # noqa: E402

GEMM_FAMILIES = ("qkv", "o", "gate_up", "down", "lm_head")


# ---- the engine and its prefill steps ------------------------------------------------------------
def build(args) -> LLM:
    eargs = engine_args(args)
    if args.tiny:
        eargs = dataclasses.replace(eargs, hf_config=dict(step_profile.TINY), kv_cache_gib=0.05)
    return LLM.from_engine_args(dataclasses.replace(eargs, enforce_eager=True))


def add_prompts(llm: LLM, args, rng: random.Random) -> list[str]:
    """``--prompts`` random prompts that together fill one step, each finished by its first
    token (so the step that prefills them also ends them and frees their blocks)."""
    vocab = llm.engine.model_config.vocab_size
    params = SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=1)
    length = args.tokens // args.prompts
    return [llm.engine.add_request(None, [rng.randrange(10, vocab - 10) for _ in range(length)],
                                   params) for _ in range(args.prompts)]


def prefill_step(llm: LLM, args, rng: random.Random, device: torch.device) -> float:
    """Seconds of one step that prefills a fresh set of prompts (synchronised on both sides);
    raises if the step did not take them all (the budget or max_num_seqs is too small)."""
    rids = add_prompts(llm, args, rng)
    step_profile.sync(device)
    t0 = time.perf_counter()
    llm.engine.step()
    step_profile.sync(device)
    elapsed = time.perf_counter() - t0
    left = [rid for rid in rids if rid in llm.engine.scheduler.requests]
    if left:
        raise RuntimeError(f"{len(left)} of {len(rids)} prompts were not prefilled in one step: "
                           f"raise --max-num-batched-tokens / --max-num-seqs")
    return elapsed


# ---- FLOPs and the ceiling -----------------------------------------------------------------------
def family_flops(model, tokens: int, prompts: int) -> dict[str, float]:
    """FLOPs each family must do in one step that prefills ``prompts`` prompts of
    ``tokens / prompts`` tokens: the GEMMs from their weights' shapes (the lm_head only for the
    rows that are sampled), causal attention per prompt and layer."""
    cfg = model.config
    L, H, V = cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size
    hd = getattr(cfg, "head_dim", None) or H // cfg.num_attention_heads
    q = cfg.num_attention_heads * hd
    params: dict[str, float] = {f: 0.0 for f in GEMM_FAMILIES}
    for name, module in model.named_modules():
        family = step_profile.MODULE_FAMILY.get(name.rsplit(".", 1)[-1])
        if family in GEMM_FAMILIES and family != "lm_head":
            params[family] += sum(p.numel() for p in module.parameters(recurse=False) if p.dim() == 2)
    flops = {f: 2.0 * tokens * params[f] for f in GEMM_FAMILIES if f != "lm_head"}
    flops["lm_head"] = 2.0 * prompts * H * V
    length = tokens / prompts
    flops["attention"] = prompts * L * 2.0 * length * length * q  # QK^T and PV, causal half
    return flops


def gemm_ceiling_tflops(device: torch.device, dtype: torch.dtype, m: int, k: int, n: int) -> float:
    """TFLOP/s of one ``[m, k] x [k, n]`` GEMM (``torch.mm``: cuBLAS on CUDA) timed alone."""
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    if device.type == "cuda":
        seconds = cuda_seconds_per_call(lambda: torch.mm(a, b), 20)
    else:
        torch.mm(a, b)
        t0 = time.perf_counter()
        torch.mm(a, b)
        seconds = time.perf_counter() - t0
    return 2.0 * m * k * n / seconds / 1e12


# ---- profile and report --------------------------------------------------------------------------
def profile_step(llm: LLM, args, rng: random.Random, device: torch.device) -> dict[str, float]:
    """µs per family of one profiled prefill step (GPU kernel time on CUDA, CPU self time on
    the CPU)."""
    model = step_profile.worker_of(llm).model
    handles = step_profile.install_ranges(llm)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    rids = add_prompts(llm, args, rng)
    step_profile.sync(device)
    with torch.profiler.profile(activities=activities) as prof:
        llm.engine.step()
        step_profile.sync(device)
    for handle in handles:
        handle.remove()
    assert not any(rid in llm.engine.scheduler.requests for rid in rids)
    if args.trace:
        prof.export_chrome_trace(args.trace)
    if device.type == "cuda":
        return step_profile.attribute_kernels_by_order(prof, model.config.num_hidden_layers)
    return step_profile.attribute(prof, on_cuda=False)[0]


def table_rows(us: dict[str, float], flops: dict[str, float], ceiling: float) -> list[dict]:
    total_us = sum(us.values())
    rows = []
    for family in step_profile.FAMILIES + ["gemms", "total"]:
        if family == "gemms":
            t = sum(us.get(f, 0.0) for f in GEMM_FAMILIES)
            f = sum(flops[g] for g in GEMM_FAMILIES)
        elif family == "total":
            t, f = total_us, sum(flops.values())
        else:
            t, f = us.get(family, 0.0), flops.get(family, 0.0)
        tflops = f / t / 1e6 if t > 0 else 0.0
        rows.append(dict(family=family, us_per_step=t, share=t / total_us if total_us else 0.0,
                         tflop=f / 1e12, tflops=tflops,
                         of_ceiling=tflops / ceiling if ceiling and f else 0.0))
    return rows


def report(args, result: dict) -> None:
    on_cuda = args.device == "cuda"
    print(f"\n{result['hardware']}; {args.prompts} prompts x {args.tokens // args.prompts} tokens "
          f"= {args.tokens} tokens in one step; ceiling (same run): one bf16 GEMM "
          f"{result['ceiling_shape']} alone = {result['ceiling_tflops']:,.0f} TFLOP/s")
    what = "GPU kernel time" if on_cuda else "CPU self time"
    print(f"per family, {what} of one profiled step (torch.profiler):")
    print(markdown_table(["family", "µs/step", "share", "TFLOP", "TFLOP/s", "of ceiling"],
                         [[r["family"], r["us_per_step"], r["share"], r["tflop"], r["tflops"],
                           r["of_ceiling"]] for r in result["rows"]]))
    kernels_ms = result["rows"][-1]["us_per_step"] / 1e3
    print(f"step wall time {result['step_ms']:.2f} ms (median of {args.timed_steps}); kernels "
          f"{kernels_ms:.2f} ms = {kernels_ms / result['step_ms']:.0%} of it")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_engine_args(parser)
    # synchronous steps: with async scheduling (the GPU default) step() returns before the step's
    # tokens are processed, and the prompts would end only in the next step
    parser.set_defaults(load_format="dummy", hf_config="llama-3.1-8b", enable_prefix_caching=False,
                        async_scheduling=False)
    parser.add_argument("--tiny", action="store_true",
                        help="a 2-layer small shape on the CPU (smoke test; figures mean nothing)")
    parser.add_argument("--tokens", type=int, default=8192, help="prompt tokens in the step")
    parser.add_argument("--prompts", type=int, default=16, help="prompts sharing the step")
    parser.add_argument("--warm-steps", type=int, default=2)
    parser.add_argument("--timed-steps", type=int, default=5)
    parser.add_argument("--trace", default=None, help="write the profiled step's Chrome trace here")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.tiny:
        args.hf_config, args.device = None, args.device or "cpu"
        args.tokens, args.prompts = min(args.tokens, 256), min(args.prompts, 4)
        args.warm_steps, args.timed_steps = 1, 2
    if args.tokens % args.prompts:
        parser.error("--tokens must be a multiple of --prompts")
    args.max_num_batched_tokens = max(args.max_num_batched_tokens or 0, args.tokens)
    args.max_num_seqs = max(args.max_num_seqs or DEFAULT_MAX_NUM_SEQS, args.prompts)
    args.max_model_len = max(args.max_model_len or 0, args.tokens // args.prompts + 16)
    if args.num_gpu_blocks_override is None:  # one step's prompts, twice over
        args.num_gpu_blocks_override = 2 * (-(-args.tokens // args.block_size) + args.prompts)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.device = device.type
    rng = random.Random(0)
    llm = build(args)
    model = step_profile.worker_of(llm).model
    cfg, dtype = model.config, next(model.parameters()).dtype
    shape = (args.tokens, cfg.hidden_size, 2 * cfg.intermediate_size)
    result: dict = dict(hardware=hardware(), setting=dict(vars(args)), ceiling_shape=list(shape),
                        ceiling_tflops=gemm_ceiling_tflops(device, dtype, *shape))
    for _ in range(args.warm_steps):
        prefill_step(llm, args, rng, device)
    times = [prefill_step(llm, args, rng, device) for _ in range(args.timed_steps)]
    result["step_ms"] = 1e3 * statistics.median(times)
    us = profile_step(llm, args, rng, device)
    flops = family_flops(model, args.tokens, args.prompts)
    result["rows"] = table_rows(us, flops, result["ceiling_tflops"])
    step_profile.free(llm, device)
    report(args, result)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
