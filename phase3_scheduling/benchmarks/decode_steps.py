"""Decode-step time of our engine at B2's, B4's and B3's batch sizes, timed as vLLM's is.

    python phase3_scheduling/benchmarks/decode_steps.py --load-format dummy \\
        --hf-config llama-3.1-8b --dtype bfloat16 --max-num-seqs 256 \\
        --max-num-batched-tokens 16384 --shapes 1:512,4:512,16:512,256:1024 --out steps.json

For each ``BATCH:PROMPT_LEN``, ``time_decode_steps`` (phase3_scheduling.benchmark) adds BATCH
requests of PROMPT_LEN random tokens, steps until each has its first token, then times 64 engine
steps in which they all decode and nothing else runs: the step time of the engine loop as a whole
(scheduling, input preparation, the CUDA graph, sampling, outputs), not of the graph alone
(``b2_step_profile.py`` takes that apart). ``vllm_offline.py --decode-shapes`` times vLLM's
engine with the same function, so the two lines of a same-run table differ only by the engine.
"""

from __future__ import annotations

import argparse
import json

from phase3_scheduling.benchmark import add_model_args, build_llm, parse_shapes, time_decode_steps
from phase3_scheduling.sampling_params import SamplingParams

from shared.bench import hardware, markdown_table


def table(rows: list[dict]) -> str:
    return markdown_table(["engine", "batch", "prompt", "step ms", "prefill steps"],
                          [[r["engine"], r["batch"], r["prompt_len"], r["step_ms"], r["prefill_steps"]]
                           for r in rows])


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument("--shapes", default="1:512,4:512,16:512,256:1024")
    parser.add_argument("--timed-steps", type=int, default=64,
                        help="steps timed per shape (vLLM's core runs ahead of step() by up to a "
                             "step or two, so more steps make its figure firmer; 16 until 2026-12-07)")
    args = parser.parse_args(argv)
    llm, startup = build_llm(args)
    vocab = llm.engine.model_config.vocab_size
    params = SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=1024)
    rows = []
    for batch, prompt_len in parse_shapes(args.shapes):
        row = time_decode_steps(llm.engine, params, batch, prompt_len, vocab, timed=args.timed_steps)
        row.update(engine="LightvLLM", hardware=hardware())
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(table(rows))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(rows, handle, indent=2)
    return rows


if __name__ == "__main__":
    main()
