"""Phase-3 demo: watch the continuous-batching scheduler, one engine step per line group.

    python phase3_scheduling/demos/scheduler_trace.py                 # chunked prefill, mixed steps
    python phase3_scheduling/demos/scheduler_trace.py --tiny-cache    # plus preemption by recompute

Four SmolLM2 requests of different lengths go into an ``LLMEngine`` whose token budget per step
(``max_num_batched_tokens``) is small, so long prompts are cut into chunks, decodes ride along
with prefill chunks in the same step, and a fifth request arriving mid-run joins the batch at
once. For every step the trace prints which requests ran, how many tokens each, whether that
was a prefill chunk or a decode, how many KV blocks each holds, and which requests finished.
"""

import argparse
import time

from phase3_scheduling import EngineArgs, LLMEngine, SamplingParams, UniProcExecutor

PROMPTS = {
    "short": "The capital of France is",
    "medium": "Write one sentence about the sea and the wind.",
    "long": "Once upon a time, in a small village by the sea, there lived an old fisherman who "
            "went out every morning before dawn and came back every evening with a story",
    "list": "List three primary colors:",
}
LATE = ("late", "1, 2, 3, 4,")  # added while the others are decoding
MAX_TOKENS = {"short": 6, "medium": 10, "long": 8, "list": 12, "late": 6}


class TracingExecutor(UniProcExecutor):
    """The in-process executor, remembering what each step asked it to run."""

    last = None

    def execute_model(self, scheduler_output):
        TracingExecutor.last = scheduler_output
        return super().execute_model(scheduler_output)


def describe(item, kv) -> str:
    n, start = item.num_tokens, item.start_position
    prompt_len = len(item.prompt_token_ids)
    if item.block_offset == 0 and start > 0:  # just admitted, part of it found in the cache
        kind = (f"admitted with tokens 0..{start} from the prefix cache, runs {start}..{start + n}"
                f" (prompt {prompt_len} + {start + n - prompt_len} outputs)")
    elif n == 1 and start >= prompt_len:
        kind = f"decode (feeds output token {start - prompt_len + 1}, samples the next)"
    elif start + n > prompt_len:
        kind = f"recompute {start}..{start + n} (prompt {prompt_len} + outputs kept)"
    else:
        chunk = "whole prompt" if start == 0 and n == prompt_len else "chunk"
        kind = f"prefill {chunk} {start}..{start + n} of {prompt_len}"
    if item.request_id in kv.req_blocks:
        blocks = f"holds {len(kv.block_ids(item.request_id))} blocks"
    else:
        blocks = "finished, its blocks are freed"
    return f"{item.request_id:<7} {n:>3} tok  {kind}; {blocks}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=int, default=16, help="max_num_batched_tokens per step")
    parser.add_argument("--max-num-seqs", type=int, default=4)
    parser.add_argument("--tiny-cache", action="store_true",
                        help="only 10 KV blocks of 8 tokens: running requests get preempted")
    parser.add_argument("--late-step", type=int, default=6, help="step after which 'late' arrives")
    args = parser.parse_args()

    start = time.perf_counter()
    engine_args = EngineArgs(max_num_batched_tokens=args.budget, max_num_seqs=args.max_num_seqs,
                             block_size=8, kv_cache_gib=0.05,
                             num_gpu_blocks_override=10 if args.tiny_cache else None)
    engine = LLMEngine(engine_args, executor_class=TracingExecutor)
    kv = engine.kv_manager
    print(f"engine up in {time.perf_counter() - start:.1f}s: budget {args.budget} tokens/step, "
          f"max_num_seqs {args.max_num_seqs}, {kv.pool.num_blocks - 1} KV blocks of {kv.block_size} "
          f"tokens, backend {engine.info['backend']}\n")

    tok = engine.tokenizer
    for rid, text in PROMPTS.items():
        engine.add_request(rid, text, SamplingParams(temperature=0, max_tokens=MAX_TOKENS[rid], ignore_eos=True))
        print(f"add {rid:<7} prompt {len(tok.encode(text)):>2} tokens, max_tokens {MAX_TOKENS[rid]}: {text[:50]!r}")
    print()

    step, results = 0, {}
    while engine.has_unfinished_requests():
        if step == args.late_step:
            rid, text = LATE
            engine.add_request(rid, text, SamplingParams(temperature=0, max_tokens=MAX_TOKENS[rid], ignore_eos=True))
            print(f"-- add {rid} ({len(tok.encode(text))} tokens) while the others are running\n")
        step += 1
        t0 = time.perf_counter()
        outputs = engine.step()
        ms = 1000 * (time.perf_counter() - t0)
        sched = TracingExecutor.last
        kinds = {"decode" if i.num_tokens == 1 and i.start_position >= len(i.prompt_token_ids)
                 else "prefill" for i in sched.scheduled}
        label = "mixed prefill+decode" if len(kinds) == 2 else f"{kinds.pop()} only"
        print(f"step {step:>2}: {sched.num_tokens:>2}/{args.budget} tokens, {len(sched.scheduled)} seqs, "
              f"{label}, {ms:.0f} ms, KV usage {100 * kv.usage:.0f}%")
        for rid in sched.preempted_ids:
            print(f"   !! preempted {rid}: blocks freed, back to the front of the queue")
        for item in sched.scheduled:
            print("   " + describe(item, kv))
        waiting = [r.request_id for r in engine.scheduler.waiting]
        if waiting:
            print(f"   waiting: {waiting}")
        for out in outputs:
            if out.finished:
                results[out.request_id] = out
                print(f"   finished {out.request_id}: {out.outputs[0].text!r} "
                      f"({out.outputs[0].finish_reason}, preempted {out.metrics.num_preemptions}x)")
    stats = engine.get_stats()
    print(f"\n{step} steps, {stats.generation_tokens} tokens generated, {stats.num_preemptions} "
          f"preemptions; free blocks at the end {kv.num_free_blocks}/{kv.pool.num_blocks - 1}")


if __name__ == "__main__":
    main()
