"""Offline benchmarks behind ``lightvllm bench throughput`` and ``lightvllm bench latency``.

Workloads (DESIGN.md section 4): B2 latency (batch 1, 128 in, 256 out), B3 throughput (256
requests, lengths uniform in [100, 1024], seed 0, ignore_eos), B5 CPU throughput (64 x 128/128).
Prompts are random token ids, so any model shape works with ``--load-format dummy``. ``--hf``
also runs HuggingFace ``generate`` on the same requests in the same process, for the ratio.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import random
import time
from dataclasses import dataclass

import torch

from shared.bench import hardware, markdown_table

from .cli_args import add_engine_args, engine_args, hf_config
from .step_timeline import describe_window, summarize_window

logger = logging.getLogger(__name__)

@dataclass
class Workload:
    prompts: list[list[int]]
    output_lens: list[int]

    @property
    def input_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)

    @property
    def output_tokens(self) -> int:
        return sum(self.output_lens)


def make_workload(num: int, input_len: tuple[int, int], output_len: tuple[int, int],
                  vocab: int, seed: int) -> Workload:
    rng = random.Random(seed)
    prompts, outs = [], []
    for _ in range(num):
        n_in = rng.randint(*input_len)
        prompts.append([rng.randrange(100, vocab - 100) for _ in range(n_in)])
        outs.append(rng.randint(*output_len))
    return Workload(prompts, outs)


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="built-in name or HF directory (default: embedded SmolLM2)")
    add_engine_args(parser)
    parser.add_argument("--hf", action="store_true", help="also run HF transformers generate")
    parser.add_argument("--hf-batch-size", type=int, default=None)
    parser.add_argument("--out", default=None, help="write the results as JSON here")


def build_llm(args):
    from .llm import LLM

    # LIGHTVLLM_LOG_LEVEL=INFO shows the start-up's choices (e.g. the small-batch GEMM per shape)
    logging.basicConfig(level=os.environ.get("LIGHTVLLM_LOG_LEVEL", "WARNING").upper(),
                        format="%(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    llm = LLM.from_engine_args(engine_args(args))
    return llm, time.perf_counter() - start


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_engine(llm, work: Workload, use_tqdm: bool = True) -> float:
    from .sampling_params import SamplingParams

    params = [SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=n) for n in work.output_lens]
    device = llm.engine.info["device"]
    _sync(device)
    start = time.perf_counter()
    outs = llm.generate(work.prompts, params, use_tqdm=use_tqdm)
    _sync(device)
    elapsed = time.perf_counter() - start
    produced = sum(len(o.outputs[0].token_ids) for o in outs)
    if produced != work.output_tokens:
        raise RuntimeError(f"engine produced {produced} tokens, expected {work.output_tokens}")
    return elapsed


def hf_model(args, llm_info: dict):
    """HF's LlamaForCausalLM for the same shape: the same checkpoint, or random weights."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    dtype = {"torch.float32": torch.float32, "torch.bfloat16": torch.bfloat16,
             "torch.float16": torch.float16}[llm_info["dtype"]]
    device = llm_info["device"]
    if args.load_format == "dummy" and args.hf_config:
        cfg = hf_config(args.hf_config)
        assert cfg is not None  # args.hf_config is set
        rope = {"rope_type": (cfg.get("rope_scaling") or {}).get("rope_type", "default"),
                "rope_theta": cfg.get("rope_theta", 10000.0), **(cfg.get("rope_scaling") or {})}
        keep = {k: v for k, v in cfg.items() if k not in ("rope_scaling", "rope_theta")}
        config = LlamaConfig(**keep, rope_parameters=rope)
        with torch.device(device):
            # transformers declares .to with @wraps(nn.Module.to): typeshed loses the bound self
            model = LlamaForCausalLM(config).to(dtype)  # type: ignore[arg-type]
    else:
        model = AutoModelForCausalLM.from_pretrained(llm_info["model_dir"], dtype=dtype).to(device)
    return model.eval()


@torch.inference_mode()
def run_hf(model, work: Workload, batch_size: int, device: str) -> float:
    """HF generate in batches (left-padded), forced to each batch's output length."""
    _sync(device)
    start = time.perf_counter()
    for i in range(0, len(work.prompts), batch_size):
        chunk = work.prompts[i:i + batch_size]
        new = max(work.output_lens[i:i + batch_size])
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[0] * (width - len(p)) + p for p in chunk], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
        model.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                       do_sample=False, eos_token_id=None, pad_token_id=0)
    _sync(device)
    return time.perf_counter() - start


def _swap_for_hf(llm, args):
    """Free the engine's GPU memory (weights, KV cache, graphs), then load HF's model for the
    same-run baseline."""
    info = llm.engine.info
    llm.engine.shutdown()
    llm.engine = None
    gc.collect()
    if info["device"].startswith("cuda"):
        torch.cuda.empty_cache()
    return hf_model(args, info)


def throughput_main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="lightvllm bench throughput", description=__doc__)
    add_model_args(parser)
    parser.add_argument("--num-prompts", type=int, default=256)
    parser.add_argument("--input-len", type=int, nargs="+", default=[100, 1024], help="N or MIN MAX")
    parser.add_argument("--output-len", type=int, nargs="+", default=[100, 1024], help="N or MIN MAX")
    parser.add_argument("--workload", default="custom")
    args = parser.parse_args(argv)
    in_range = (args.input_len[0], args.input_len[-1])
    out_range = (args.output_len[0], args.output_len[-1])
    llm, startup = build_llm(args)
    info = llm.engine.info
    work = make_workload(args.num_prompts, in_range, out_range, llm.engine.model_config.vocab_size, args.seed)
    run_engine(llm, make_workload(2, (16, 16), (4, 4), llm.engine.model_config.vocab_size, 1), False)
    before = llm.engine.core.step_clock.counters.copy()
    elapsed = run_engine(llm, work)
    steps = summarize_window(before, llm.engine.core.step_clock.counters)
    print(step_profile(llm))
    print(describe_window(steps))
    rows = [dict(workload=args.workload, engine="LightvLLM", requests=len(work.prompts),
                 input_tokens=work.input_tokens, output_tokens=work.output_tokens, seconds=elapsed,
                 output_tok_s=work.output_tokens / elapsed,
                 total_tok_s=(work.input_tokens + work.output_tokens) / elapsed,
                 startup_s=startup, backend=info["backend"], kv_blocks=info["num_blocks"],
                 preemptions=llm.engine.scheduler.num_preemptions, steps=steps)]
    if info["device"].startswith("cuda"):
        rows[0]["gpu_mem_gib"] = torch.cuda.max_memory_reserved() / 2**30
    if args.hf:
        model = _swap_for_hf(llm, args)
        del llm
        batch = args.hf_batch_size or len(work.prompts)
        hf_elapsed = run_hf(model, work, batch, info["device"])
        rows.append(dict(workload=args.workload, engine=f"HF generate (batch {batch})",
                         requests=len(work.prompts), input_tokens=work.input_tokens,
                         output_tokens=work.output_tokens, seconds=hf_elapsed,
                         output_tok_s=work.output_tokens / hf_elapsed,
                         total_tok_s=(work.input_tokens + work.output_tokens) / hf_elapsed))
        rows[0]["vs_hf"] = hf_elapsed / elapsed
    _print(rows, ["workload", "engine", "requests", "input_tokens", "output_tokens", "seconds",
                  "output_tok_s", "total_tok_s", "startup_s", "vs_hf"], args.out)
    return rows


def latency_main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="lightvllm bench latency", description=__doc__)
    add_model_args(parser)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=256)
    parser.add_argument("--num-iters", type=int, default=3)
    parser.add_argument("--hf-output-len", type=int, default=None, help="shorter HF run (it is slow)")
    parser.add_argument("--workload", default="custom")
    args = parser.parse_args(argv)
    llm, startup = build_llm(args)
    info = llm.engine.info
    vocab = llm.engine.model_config.vocab_size
    times = []
    for i in range(args.num_iters + 1):  # the first is a warm-up
        work = make_workload(args.batch_size, (args.input_len,) * 2, (args.output_len,) * 2, vocab, i)
        llm.engine.kv_manager.pool.cached.clear()
        if i == 1:
            before = llm.engine.core.step_clock.counters.copy()
        t = run_engine(llm, work, use_tqdm=False)
        if i:
            times.append(t)
    steps = summarize_window(before, llm.engine.core.step_clock.counters) if times else {}
    print(step_profile(llm))
    if steps:
        print(describe_window(steps))
    times.sort()
    median = times[len(times) // 2]
    tokens = args.batch_size * args.output_len
    rows = [dict(workload=args.workload, engine="LightvLLM", batch=args.batch_size,
                 input_len=args.input_len, output_len=args.output_len, seconds=median,
                 output_tok_s=tokens / median, ms_per_token=1000 * median / args.output_len,
                 startup_s=startup, cuda_graphs=bool(info["graph_sizes"]),
                 iteration_seconds=times, steps=steps)]
    if args.hf:
        model = _swap_for_hf(llm, args)
        del llm
        out_len = args.hf_output_len or args.output_len
        work = make_workload(args.batch_size, (args.input_len,) * 2, (out_len,) * 2, vocab, 0)
        run_hf(model, make_workload(args.batch_size, (args.input_len,) * 2, (4,) * 2, vocab, 9),
               args.batch_size, info["device"])
        t = run_hf(model, work, args.batch_size, info["device"])
        rows.append(dict(workload=args.workload, engine="HF generate", batch=args.batch_size,
                         input_len=args.input_len, output_len=out_len, seconds=t,
                         output_tok_s=args.batch_size * out_len / t, ms_per_token=1000 * t / out_len))
        rows[0]["vs_hf"] = rows[0]["output_tok_s"] / rows[1]["output_tok_s"]
    _print(rows, ["workload", "engine", "batch", "input_len", "output_len", "seconds",
                  "output_tok_s", "ms_per_token", "startup_s", "vs_hf"], args.out)
    return rows


def parse_shapes(spec: str) -> list[tuple[int, int]]:
    """``"1:512,16:512"`` -> ``[(1, 512), (16, 512)]`` (decode-step shapes: batch, prompt length)."""
    shapes = []
    for part in spec.split(","):
        batch, _, prompt_len = part.partition(":")
        shapes.append((int(batch), int(prompt_len)))
    return shapes


def time_decode_steps(engine, params, batch: int, prompt_len: int, vocab: int,
                      wrap=lambda ids: ids, warm: int = 4, timed: int = 64,
                      around_timed=(None, None)) -> dict:
    """Mean wall time of one engine step while ``batch`` sequences of ``prompt_len``-token prompts
    decode together, no prompt in the step: the requests are added, the engine steps until each
    has its first token, ``warm`` steps more, then ``timed`` steps are timed and the requests
    aborted. ``engine`` is ours (``LLMEngine``) or vLLM's (the same ``add_request``, ``step``,
    ``abort_request``, ``has_unfinished_requests``; ``wrap`` makes vLLM's prompt from the ids), so
    both engines' decode steps are timed the same way. ``params`` must outlast the prefill.
    ``around_timed``: two callables (or None) run just before and just after the timed steps
    (vLLM's ``start_profile``/``stop_profile``)."""
    work = make_workload(batch, (prompt_len, prompt_len), (1, 1), vocab, 7)
    tag = f"decode-{batch}x{prompt_len}-{time.monotonic_ns()}"  # unique: a shape may run twice
    ids = [f"{tag}-{i}" for i in range(batch)]
    for rid, prompt in zip(ids, work.prompts):
        engine.add_request(rid, wrap(prompt), params)
    started: set[str] = set()
    prefill_steps = 0
    while len(started) < batch:
        prefill_steps += 1
        started.update(o.request_id for o in engine.step() if o.outputs and o.outputs[0].token_ids)
    for _ in range(warm):
        engine.step()
    before, after = around_timed
    if before:
        before()
    start = time.perf_counter()
    for _ in range(timed):
        engine.step()
    elapsed = time.perf_counter() - start
    if after:
        after()
    engine.abort_request(ids)
    while engine.has_unfinished_requests():
        engine.step()
    return dict(batch=batch, prompt_len=prompt_len, step_ms=1e3 * elapsed / timed,
                prefill_steps=prefill_steps, timed_steps=timed)


def step_profile(llm) -> str:
    """Where a step's time went: scheduler, input preparation, model + sampler, bookkeeping."""
    eng, core = llm.engine.timings, llm.engine.core.timings
    run = llm.engine.executor.collective_rpc("get_timings")[0]
    steps = max(core["steps"], 1)
    parts = [f"{core['steps']:.0f} steps, per step (ms): schedule {1e3 * core['schedule'] / steps:.2f}, "
             f"execute {1e3 * core['execute'] / steps:.2f}, update {1e3 * core['update'] / steps:.2f}, "
             f"outputs {1e3 * eng['output_processing'] / steps:.2f}"]
    for kind in ("decode", "mixed", "eager"):
        n = run.get(kind + "_steps", 0)
        if n:
            parts.append(f"{kind} steps {n:.0f}: prepare {1e3 * run[kind + '_prepare'] / n:.2f} ms, "
                         f"run+sample launched in {1e3 * run[kind + '_run'] / n:.2f} ms, "
                         f"tokens waited for {1e3 * run.get(kind + '_wait', 0) / n:.2f} ms")
    return "step profile: " + "; ".join(parts)


def _print(rows: list[dict], columns: list[str], out: str | None) -> None:
    print(f"\n{hardware()}")
    print(markdown_table(columns, [[r.get(c, "") for c in columns] for r in rows]))
    if out:
        with open(out, "w") as handle:
            json.dump(rows, handle, indent=2, default=str)
