"""B2 step profile: where one decode step of the Llama-3.1-8B shape spends its time, per kernel
family, next to the floor that the device's copy bandwidth sets. Batch 1 by default (B2);
``--batch 256 --prompt-len 1024`` profiles a step of B3's decode phase instead, where the K/V
read by attention weighs as much as the weights.

Builds the B2 engine (dummy bf16 weights, ``hf_config="llama-3.1-8b"``), runs a 128-token prompt
into decode, then

1. on CUDA, with CUDA graphs (B2's engine): times decode steps (``engine.step()`` wall clock,
   synchronised) and the decode graph's replay alone (CUDA events);
2. with ``enforce_eager=True`` (every kernel visible to ``torch.profiler``): profiles ``--steps``
   decode steps and gives every kernel to a family: the GEMM of each projection (qkv, o,
   gate_up, down, lm_head), attention, store_kvcache, rms_norm, rope, silu_and_mul, embedding,
   sampling, other. Families come from ``record_function`` ranges that forward hooks put around
   the model's modules (and around the sampler), so the GEMMs of different projections, which
   run the same cuBLAS kernels, are told apart.

Per family: µs per step, the bytes it must move per step (weights from the parameters' shapes,
K/V from the context length, activations), the achieved GB/s, and the floor: those bytes at the
copy bandwidth measured in the same run (a device-to-device copy of 1 GiB, read + write).
The two engines are built one after the other (the first is freed before the second), each with
a KV pool of 16k tokens unless ``--num-gpu-blocks-override`` says otherwise: batch-1 decode does
not need more, and a small pool keeps the second engine's memory profile independent of what the
first one may leave cached.

    python phase3_scheduling/benchmarks/b2_step_profile.py --out b2_profile.json
    python phase3_scheduling/benchmarks/b2_step_profile.py --attention-backend flash_attn --block-size 128
    python phase3_scheduling/benchmarks/b2_step_profile.py --batch 256 --prompt-len 1024   # B3-like
    python phase3_scheduling/benchmarks/b2_step_profile.py --tiny     # 2-layer CPU smoke (CI)
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import random
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
for _p in ("shared", "phase1_kernels", "phase2_attention", "phase3_scheduling"):
    if str(ROOT / _p / "src") not in sys.path:
        sys.path.insert(0, str(ROOT / _p / "src"))

from phase3_scheduling import LLM, SamplingParams  # noqa: E402
from phase3_scheduling.cli_args import add_engine_args, engine_args  # noqa: E402
from phase3_scheduling.config import DEFAULT_MAX_NUM_SEQS  # noqa: E402
from shared.bench import (copy_bandwidth_gbs, cuda_seconds_per_call, hardware,  # noqa: E402
                          markdown_table)

FAMILIES = ["qkv", "o", "gate_up", "down", "lm_head", "attention", "store_kvcache", "rms_norm",
            "rope", "silu_and_mul", "embedding", "sampling", "other"]
# last component of a module's name -> its family
MODULE_FAMILY = {"qkv_proj": "qkv", "o_proj": "o", "gate_up_proj": "gate_up", "down_proj": "down",
                 "lm_head": "lm_head", "embed_tokens": "embedding", "input_layernorm": "rms_norm",
                 "post_attention_layernorm": "rms_norm", "norm": "rms_norm", "rotary_emb": "rope",
                 "act_fn": "silu_and_mul", "attn": "attention"}
RANGE = "b2fam::"  # prefix of the record_function ranges the hooks open
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
            rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=1,
            eos_token_id=2)


# ---- the engine and its decode -------------------------------------------------------------------
def build(args, enforce_eager: bool) -> LLM:
    eargs = engine_args(args)
    if args.tiny:
        eargs = dataclasses.replace(eargs, hf_config=dict(TINY), kv_cache_gib=0.05)
    return LLM.from_engine_args(dataclasses.replace(eargs, enforce_eager=enforce_eager))


def worker_of(llm: LLM):
    worker = getattr(llm.engine.executor, "worker", None)
    if worker is None:
        raise RuntimeError("the step profile needs the in-process executor (uni): its model is "
                           "hooked in this process")
    return worker


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def start_decode(llm: LLM, batch: int, prompt_len: int, max_tokens: int, seed: int) -> list[str]:
    """Add ``batch`` prompts of random token ids and step until every prefill has produced a
    token (the first ones decode meanwhile: ``max_tokens`` must leave room for that)."""
    vocab = llm.engine.model_config.vocab_size
    rng = random.Random(seed)
    params = SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=max_tokens)
    rids = [llm.engine.add_request(None, [rng.randrange(10, vocab - 10) for _ in range(prompt_len)],
                                   params) for _ in range(batch)]
    while not all_decoding(llm, rids):
        llm.engine.step()
    return rids


def all_decoding(llm: LLM, rids: list[str]) -> bool:
    """Every request has its first output token (its prefill is done)."""
    requests = llm.engine.scheduler.requests
    return all(rid in requests and requests[rid].output_token_ids for rid in rids)


def step_times(llm: LLM, device: torch.device, n: int) -> list[float]:
    """Seconds of ``n`` engine steps, each synchronised on both sides."""
    times = []
    for _ in range(n):
        sync(device)
        t0 = time.perf_counter()
        llm.engine.step()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def graph_replay_us(llm: LLM, batch: int, iters: int = 50) -> float | None:
    """µs of one replay of the decode graph for ``batch`` rows (CUDA events), or None without
    graphs."""
    runner = getattr(worker_of(llm), "runner", None)
    graphs = getattr(runner, "graphs", None)
    if graphs is None or not getattr(graphs, "sizes", None):
        return None
    size = graphs.size_for(batch)
    if size is None:
        return None
    graphs.replay(size)  # the last decode step again: same inputs, same K/V slot rewritten
    return 1e6 * cuda_seconds_per_call(lambda: graphs.replay(size), iters)


def free(llm: LLM, device: torch.device) -> None:
    llm.engine.shutdown()
    llm.engine = None
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---- families ------------------------------------------------------------------------------------
def install_ranges(llm: LLM) -> list:
    """Forward hooks that open a ``record_function`` range around every module of a family, and
    a wrapper that does the same around the runner's sampler. Returns the hook handles."""
    worker = worker_of(llm)
    handles = []
    for name, module in worker.model.named_modules():
        family = MODULE_FAMILY.get(name.rsplit(".", 1)[-1])
        if family is None:
            continue

        def enter(mod, inputs, family=family):
            mod._b2_ranges = getattr(mod, "_b2_ranges", [])
            rf = torch.autograd.profiler.record_function(RANGE + family)
            rf.__enter__()
            mod._b2_ranges.append(rf)

        def leave(mod, inputs, output):
            mod._b2_ranges.pop().__exit__(None, None, None)

        handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    sampler = getattr(getattr(worker, "runner", None), "sampler", None)
    if sampler is not None and hasattr(sampler, "sample_on_device"):
        inner = sampler.sample_on_device

        def sampled(*a, **k):
            with torch.autograd.profiler.record_function(RANGE + "sampling"):
                return inner(*a, **k)

        sampler.sample_on_device = sampled  # an instance attribute: the class is untouched
    return handles


GEMM_NAMES = ("nvjet", "gemm", "cutlass", "_skinny_kernel", "sm90_xmma", "small_batch_linear")
KERNEL_FAMILY = (("splitKreduce", None), ("rope_store", "store_kvcache"),  # fused rope + store
                 ("rms_norm", "rms_norm"), ("rotary", "rope"),
                 ("silu", "silu_and_mul"), ("store_kv", "store_kvcache"),
                 ("decode", "attention"), ("prefill", "attention"), ("flash", "attention"),
                 ("fmha", "attention"), ("attn", "attention"))


def attribute_kernels_by_order(prof, num_layers: int) -> dict[str, float]:
    """µs per family of the GPU kernels, in launch order: a decode step runs exactly
    ``4 * layers + 1`` GEMMs (qkv, o, gate_up, down per layer, then lm_head), so the n-th GEMM's
    projection is known from n; a split-K reduce belongs to the GEMM before it; the others are
    named by their kernel."""
    from torch.autograd import DeviceType

    # the family ranges also appear on the device side (gpu_user_annotation): not kernels
    kernels = sorted((e for e in prof.events()
                      if e.device_type == DeviceType.CUDA and not e.name.startswith(RANGE)),
                     key=lambda e: e.time_range.start)
    per_step = 4 * num_layers + 1
    totals: dict[str, float] = defaultdict(float)
    gemms, last_gemm = 0, "other"
    for kernel in kernels:
        name, us = kernel.name, kernel.time_range.elapsed_us()
        if any(g in name for g in GEMM_NAMES) and "splitKreduce" not in name:
            index = gemms % per_step
            last_gemm = ("lm_head" if index == per_step - 1
                         else ("qkv", "o", "gate_up", "down")[index % 4])
            gemms += 1
            totals[last_gemm] += us
            continue
        family = next((f for key, f in KERNEL_FAMILY if key in name), "other")
        totals[last_gemm if family is None else family] += us
    return totals


def family_of(event, leaf_name: str) -> str:
    """The innermost family range around ``event``; store_kvcache by its kernel or op name."""
    names = [leaf_name]
    node = event
    while node is not None:
        names.append(node.name)
        node = node.cpu_parent
    if any("store_kv" in n or "rope_store" in n for n in names):  # rope_store: fused with rope
        return "store_kvcache"
    for n in names[1:]:
        if n.startswith(RANGE):
            return n[len(RANGE):]
    return "other"


def attribute(prof, on_cuda: bool) -> tuple[dict[str, float], float]:
    """µs per family over the profiled region (GPU kernel time on CUDA, CPU self time on the
    CPU) and the µs that no CPU event claims (kernels the profiler did not link)."""
    from torch.autograd import DeviceType

    totals: dict[str, float] = defaultdict(float)
    events = prof.events()
    for event in events:
        if event.device_type != DeviceType.CPU:
            continue
        if on_cuda:
            for kernel in event.kernels:
                totals[family_of(event, kernel.name)] += kernel.duration
        else:
            totals[family_of(event, "")] += event.self_cpu_time_total
    unlinked = 0.0
    if on_cuda:
        device_total = sum(e.time_range.elapsed_us() for e in events
                           if e.device_type == DeviceType.CUDA)
        unlinked = max(0.0, device_total - sum(totals.values()))
    return totals, unlinked


def family_bytes(model, context: float, batch: int = 1) -> dict[str, float]:
    """Bytes each family must move in one decode step of ``batch`` sequences: its weights (from
    the parameters themselves, read once for the batch), the K/V of ``context`` tokens per
    sequence, and the activations in and out of every row."""
    cfg = model.config
    e = next(model.parameters()).element_size()
    L, H, inter, V = cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    hd = getattr(cfg, "head_dim", None) or H // cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    weights: dict[str, float] = defaultdict(float)
    seen: set[int] = set()
    for name, module in model.named_modules():
        family = MODULE_FAMILY.get(name.rsplit(".", 1)[-1])
        if family in (None, "embedding"):
            continue
        for p in module.parameters(recurse=False):
            if id(p) not in seen or family == "lm_head":  # a tied lm_head reads the whole table
                seen.add(id(p))
                weights[family] += p.numel() * p.element_size()
    B = batch
    return {
        "qkv": weights["qkv"] + B * (H + q + 2 * kv) * e,
        "o": weights["o"] + B * (q + H) * e,
        "gate_up": weights["gate_up"] + B * (H + 2 * inter) * e,
        "down": weights["down"] + B * (inter + H) * e,
        "lm_head": weights["lm_head"] + B * (H * e + V * 4),
        "attention": B * L * (2 * context * kv + 2 * q) * e,
        "store_kvcache": B * L * 4 * kv * e,
        "rms_norm": weights["rms_norm"] + B * (2 * L + 1) * 4 * H * e,
        "rope": B * L * (2 * (q + kv) * e + hd * 4 + 8),
        "silu_and_mul": B * L * 3 * inter * e,
        "embedding": B * (2 * H * e + 8),
        "sampling": B * V * 4,
        "other": 0.0,
    }


def table_rows(us: dict[str, float], nbytes: dict[str, float], copy_gbs: float) -> list[dict]:
    rows = []
    for family in FAMILIES + ["total"]:
        t = sum(us.values()) if family == "total" else us.get(family, 0.0)
        b = sum(nbytes.values()) if family == "total" else nbytes[family]
        floor = b / copy_gbs / 1e3  # µs
        rows.append(dict(family=family, us_per_step=t, mb_per_step=b / 1e6,
                         gbs=b / t / 1e3 if t > 0 else 0.0, floor_us=floor,
                         floor_share=floor / t if t > 0 else 0.0))
    return rows


# ---- main ----------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_engine_args(parser)
    parser.set_defaults(load_format="dummy", hf_config="llama-3.1-8b", max_num_seqs=8)
    parser.add_argument("--tiny", action="store_true",
                        help="a 2-layer small shape on the CPU (smoke test; figures mean nothing)")
    parser.add_argument("--batch", type=int, default=1,
                        help="sequences decoding together (B2: 1; a B3-like step: 256)")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8, help="decode steps profiled (eager)")
    parser.add_argument("--warm-steps", type=int, default=8)
    parser.add_argument("--timed-steps", type=int, default=64, help="decode steps timed with graphs")
    parser.add_argument("--copy-mib", type=int, default=None,
                        help="device copy for the bandwidth (default 1024 on CUDA, 64 on the CPU)")
    parser.add_argument("--trace", default=None, help="write the eager profile's Chrome trace here")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.tiny:
        args.hf_config, args.device = None, args.device or "cpu"
        args.steps, args.warm_steps, args.timed_steps = min(args.steps, 4), 2, 4
    args.max_num_seqs = max(args.max_num_seqs or DEFAULT_MAX_NUM_SEQS, args.batch)
    if args.num_gpu_blocks_override is None:  # every sequence's prompt and decode, at least 16k
        tokens = max(16384, args.batch * (args.prompt_len + decode_budget(args)))
        args.num_gpu_blocks_override = args.batch * 2 + -(-tokens // args.block_size) + 1
    return args


def decode_budget(args: argparse.Namespace) -> int:
    """Tokens each request may generate: the first prompts decode while the later ones are
    still in prefill (one step per ``max_num_batched_tokens`` of prompt, 2048 at least)."""
    prefill_steps = -(-args.batch * args.prompt_len // 2048) + 2
    return 1 + args.warm_steps + max(args.timed_steps, args.steps) + 16 + prefill_steps


def measure_graphs(args: argparse.Namespace, device: torch.device, budget: int, result: dict) -> None:
    """B2's engine with CUDA graphs: start-up, the median step, one graph replay."""
    t0 = time.perf_counter()
    llm = build(args, enforce_eager=False)
    result["startup_s"] = time.perf_counter() - t0
    result["graph_sizes"] = llm.engine.info["graph_sizes"]
    rids = start_decode(llm, args.batch, args.prompt_len, budget, seed=0)
    step_times(llm, device, args.warm_steps)
    times = step_times(llm, device, args.timed_steps)
    result["graph_step_ms"] = 1e3 * statistics.median(times)
    try:
        result["graph_replay_us"] = graph_replay_us(llm, args.batch)
    except Exception as exc:  # the runner's graph interface is internal: report, go on
        print(f"graph replay not timed: {exc!r}")
        result["graph_replay_us"] = None
    abort(llm, rids)
    free(llm, device)


def mean_context(llm: LLM, rids: list[str]) -> float:
    """Tokens each sequence attends to now (prompt and output so far), averaged."""
    requests = llm.engine.scheduler.requests
    return statistics.mean(len(requests[r].prompt_token_ids) + len(requests[r].output_token_ids)
                           for r in rids)


def abort(llm: LLM, rids: list[str]) -> None:
    for rid in rids:
        llm.engine.abort_request(rid)


def profile_eager(args: argparse.Namespace, device: torch.device, budget: int, copy_gbs: float,
                  result: dict):
    """Eager decode steps under torch.profiler, kernel time per family next to its bytes.
    Returns the profiler (for its own table)."""
    on_cuda = device.type == "cuda"
    llm = build(args, enforce_eager=True)
    model = worker_of(llm).model
    rids = start_decode(llm, args.batch, args.prompt_len, budget, seed=0)
    step_times(llm, device, args.warm_steps)
    eager = step_times(llm, device, max(args.steps, 3))
    result["eager_step_ms"] = 1e3 * statistics.median(eager)
    result["context"] = mean_context(llm, rids) + args.steps / 2
    handles = install_ranges(llm)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if on_cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    sync(device)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(args.steps):
            llm.engine.step()
        sync(device)
    for handle in handles:
        handle.remove()
    if args.trace:
        prof.export_chrome_trace(args.trace)
    if on_cuda:  # kernels by launch order (the profiler does not link every kernel to its op)
        totals, unlinked = attribute_kernels_by_order(prof, model.config.num_hidden_layers), 0.0
    else:
        totals, unlinked = attribute(prof, on_cuda)
    us = {f: v / args.steps for f, v in totals.items()}
    if unlinked:
        us["other"] = us.get("other", 0.0) + unlinked / args.steps
    result["unlinked_us_per_step"] = unlinked / args.steps
    result["rows"] = table_rows(us, family_bytes(model, result["context"], args.batch), copy_gbs)
    abort(llm, rids)
    free(llm, device)
    return prof


def report(args: argparse.Namespace, result: dict, prof, on_cuda: bool, copy_mib: int) -> None:
    rows = result["rows"]
    what = "GPU kernel time" if on_cuda else "CPU self time"
    print(f"\n{result['hardware']}; device copy (same run, {copy_mib} MiB, read + write): "
          f"{result['copy_gbs']:,.0f} GB/s")
    print(f"batch {args.batch}, prompt {args.prompt_len}, context ~{result['context']:.0f}; per step, {what} "
          f"of {args.steps} eager decode steps (torch.profiler); floor = bytes at the copy bandwidth")
    print(markdown_table(["family", "µs/step", "MB/step", "GB/s", "floor µs", "floor/time"],
                         [[r["family"], r["us_per_step"], r["mb_per_step"], r["gbs"],
                           r["floor_us"], r["floor_share"]] for r in rows]))
    line = f"eager step {result['eager_step_ms']:.2f} ms (wall)"
    if on_cuda:
        replay = result["graph_replay_us"]
        line += (f"; with CUDA graphs: step {result['graph_step_ms']:.2f} ms (wall), graph replay "
                 + ("n/a" if replay is None else f"{replay / 1e3:.2f} ms")
                 + f"; floor of the whole step {rows[-1]['floor_us'] / 1e3:.2f} ms")
        unlinked = result["unlinked_us_per_step"]
        if unlinked:
            line += f"; {unlinked:.0f} µs/step of kernels not linked to an op (in other)"
    print(line)
    print(prof.key_averages().table(sort_by="device_time_total" if on_cuda else "self_cpu_time_total",
                                    row_limit=15))


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.device = device.type
    on_cuda = device.type == "cuda"
    copy_mib = args.copy_mib or (1024 if on_cuda else 64)
    result: dict = dict(hardware=hardware(), setting={k: v for k, v in vars(args).items()})
    budget = decode_budget(args)
    result["copy_gbs"] = copy_bandwidth_gbs(device, copy_mib << 20)
    if on_cuda:  # B2's engine: decode steps through CUDA graphs
        measure_graphs(args, device, budget, result)
    prof = profile_eager(args, device, budget, result["copy_gbs"], result)
    report(args, result, prof, on_cuda, copy_mib)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
