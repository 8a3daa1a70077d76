"""B2 and B3 on vLLM: the same-run baseline of ``lightvllm bench latency`` and ``bench throughput``.

    python phase3_scheduling/benchmarks/vllm_offline.py --out vllm_b2_b3.json

vLLM runs with its own defaults for the ``LLM`` class (on a GPU of 70 GiB or more: 16,384 tokens
and 1,024 sequences a step, torch.compile and CUDA graphs) on the model shape of our
``--hf-config llama-3.1-8b`` with random bf16 weights (``load_format="dummy"``; no tokenizer:
prompts are token ids). The requests are exactly ours: ``make_workload`` of
``phase3_scheduling.benchmark`` with the same seeds, greedy, ``ignore_eos``:

- B3: 256 requests, input and output lengths uniform in [100, 1024], seed 0, all at once; output
  tokens per second of the ``generate`` call (as ``lightvllm bench throughput --workload B3``).
- B2: one request of 128 tokens, 256 out; one warm-up iteration, then ``--num-iters`` iterations
  of new prompts (seed = iteration), the median (as ``lightvllm bench latency --workload B2``).

- decode steps (``--decode-shapes``, default 1:512,4:512,16:512,256:1024): the engine's step time
  while BATCH sequences of PROMPT_LEN-token prompts decode together, timed by the same function
  as ours (``decode_steps.py``); ``--profile-batch N`` also writes vLLM's torch-profiler kernel
  table (``profiler_out_0.txt``, by self CUDA time) for the timed steps of batch N.

One ``LLM`` serves all (its start-up is reported once). vLLM must be importable (on the GPU
machine: ``scripts/gpu_session.sh`` installs the carried wheels into their own folder).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from phase1_kernels import LLAMA_3_1_8B
from phase3_scheduling.benchmark import Workload, make_workload, parse_shapes, time_decode_steps

from shared.bench import hardware, markdown_table, write_hf_model_dir


def run_generate(llm, work: Workload, use_tqdm: bool) -> float:
    """Seconds of one ``generate`` call over the workload; checks every token came out."""
    import torch
    from vllm import SamplingParams

    params = [SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=n) for n in work.output_lens]
    prompts = [{"prompt_token_ids": ids} for ids in work.prompts]
    torch.cuda.synchronize()
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=use_tqdm)
    elapsed = time.perf_counter() - start
    produced = sum(len(o.outputs[0].token_ids) for o in outs)
    if produced != work.output_tokens:
        raise RuntimeError(f"vLLM produced {produced} tokens, expected {work.output_tokens}")
    return elapsed


def b3(llm, vocab: int, engine: str) -> dict:
    work = make_workload(256, (100, 1024), (100, 1024), vocab, 0)
    run_generate(llm, make_workload(2, (16, 16), (4, 4), vocab, 1), False)  # as ours: a warm-up
    seconds = run_generate(llm, work, True)
    return dict(workload="B3", engine=engine, requests=len(work.prompts),
                input_tokens=work.input_tokens, output_tokens=work.output_tokens, seconds=seconds,
                output_tok_s=work.output_tokens / seconds,
                total_tok_s=(work.input_tokens + work.output_tokens) / seconds)


def b2(llm, vocab: int, engine: str, num_iters: int) -> dict:
    times = []
    for i in range(num_iters + 1):  # the first is a warm-up
        seconds = run_generate(llm, make_workload(1, (128, 128), (256, 256), vocab, i), False)
        if i:
            times.append(seconds)
    median = sorted(times)[len(times) // 2]
    return dict(workload="B2", engine=engine, batch=1, input_len=128, output_len=256,
                seconds=median, output_tok_s=256 / median, ms_per_token=1000 * median / 256,
                iteration_seconds=times)


def decode_steps(llm, vocab: int, engine: str, shapes: str, profile_batch: int | None,
                 timed: int) -> list[dict]:
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=1024)
    rows = []
    for batch, prompt_len in parse_shapes(shapes):
        runs = [(None, None)]  # the timed run, then (once) the profiled one: the profiler stays out of it
        if batch == profile_batch:
            runs.append((llm.start_profile, llm.stop_profile))
        for hooks in runs:
            row = time_decode_steps(llm.llm_engine, params, batch, prompt_len, vocab,
                                    wrap=lambda ids: {"prompt_token_ids": ids}, around_timed=hooks,
                                    timed=timed)
            row.update(engine=engine + (" (profiled)" if hooks[0] else ""))
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--workloads", nargs="+", choices=["b2", "b3"], default=["b3", "b2"])
    parser.add_argument("--num-iters", type=int, default=3)
    parser.add_argument("--decode-shapes", default="1:512,4:512,16:512,256:1024",
                        help="BATCH:PROMPT_LEN,... ('' for none)")
    parser.add_argument("--profile-batch", type=int, default=None,
                        help="profile the timed steps of this batch (kernel table in --profile-dir)")
    parser.add_argument("--profile-dir", default="vllm_profile")
    parser.add_argument("--timed-steps", type=int, default=64,
                        help="decode steps timed per shape (vLLM's engine-core process runs ahead "
                             "of step() by up to a step or two; 16 until 2026-12-07)")
    args = parser.parse_args(argv)
    import vllm
    from vllm import LLM

    model_dir = write_hf_model_dir(dict(LLAMA_3_1_8B), tempfile.mkdtemp(prefix="llama8b-"))
    start = time.perf_counter()
    profiler = {}
    if args.profile_batch:  # only what the table needs: no stacks, no shapes
        profiler = dict(profiler_config={"profiler": "torch", "torch_profiler_dir": args.profile_dir,
                                         "torch_profiler_with_stack": False})
    llm = LLM(model=model_dir, load_format="dummy", skip_tokenizer_init=True, dtype="bfloat16", seed=0,
              **profiler)
    startup = time.perf_counter() - start
    engine = f"vLLM {vllm.__version__}"
    vocab = LLAMA_3_1_8B["vocab_size"]
    sched = llm.llm_engine.vllm_config.scheduler_config
    settings = dict(max_num_seqs=sched.max_num_seqs, max_num_batched_tokens=sched.max_num_batched_tokens)
    print(f"{engine} ready after {startup:.1f} s; {settings}", flush=True)
    rows = []
    for name in args.workloads:
        row = b3(llm, vocab, engine) if name == "b3" else b2(llm, vocab, engine, args.num_iters)
        row.update(startup_s=startup, hardware=hardware(), date=time.strftime("%Y-%m-%d"), **settings)
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.decode_shapes:
        steps = decode_steps(llm, vocab, engine, args.decode_shapes, args.profile_batch, args.timed_steps)
        for row in steps:
            row.update(workload="decode steps", startup_s=startup, hardware=hardware(), **settings)
        rows += steps
    with open(args.out, "w") as handle:
        json.dump(rows, handle, indent=2)
    print(markdown_table(["workload", "engine", "seconds", "output tok/s", "start-up s"],
                         [[r["workload"], r["engine"], r["seconds"], r["output_tok_s"], startup]
                          for r in rows if "seconds" in r]))
    print(markdown_table(["engine", "batch", "prompt", "step ms", "prefill steps"],
                         [[r["engine"], r["batch"], r["prompt_len"], r["step_ms"], r["prefill_steps"]]
                          for r in rows if "step_ms" in r]))
    return rows


if __name__ == "__main__":
    main()
