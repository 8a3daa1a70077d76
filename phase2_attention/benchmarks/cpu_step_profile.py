"""Where one B5 step's time goes on the CPU: SmolLM2-135M (fp32), a 64-sequence decode step at
context 192 (the middle of B5) and a 16 x 128 prefill step (B5's chunk of 2048 tokens), over a
paged KV cache, timed op by op with ``torch.profiler`` and linear by linear against a bare
``torch.mm`` of a square matrix (the machine's GEMM peak, measured in the same run).

    python phase2_attention/benchmarks/cpu_step_profile.py [--backend sdpa] [--linear native]
        [--steps 5] [--threads 2] [--no-profile] [--ab]

Timings are the best of ``--steps`` repetitions (the 2-core machine is shared: the minimum is
the least disturbed figure); the load average is printed next to them. With ``--threads 1``
they are CPU seconds of the process (``time.process_time``), which other processes' load
disturbs least. ``--ab`` times the step with every (attention backend, linear mode) pair,
interleaved twice, on one model: the before/after table.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch.profiler import ProfilerActivity, profile

from phase1_kernels import LightvLLM
from phase2_attention import PagedAttentionMetadata, allocate_kv_cache

BLOCK = 16


def clock() -> float:
    return time.process_time() if torch.get_num_threads() == 1 else time.perf_counter()


def best_of(fn, steps: int) -> float:
    fn()
    times = []
    for _ in range(steps):
        start = clock()
        fn()
        times.append(clock() - start)
    return min(times)


def decode_batch(batch: int, context: int, device: str = "cpu"):
    """``batch`` sequences of ``context`` cached tokens each, one new token each; sequence i owns
    blocks 1 + i*n ... (block 0 is the null block)."""
    per_seq = -(-(context + 1) // BLOCK)
    tables = [[1 + i * per_seq + j for j in range(per_seq)] for i in range(batch)]
    meta = PagedAttentionMetadata.build_paged([1] * batch, [context + 1] * batch, tables, BLOCK, device)
    ids = torch.randint(100, 40000, (batch,))
    positions = torch.full((batch,), context)
    return ids, positions, meta, 1 + batch * per_seq


def prefill_batch(seqs: int, length: int, device: str = "cpu"):
    per_seq = -(-length // BLOCK)
    tables = [[1 + i * per_seq + j for j in range(per_seq)] for i in range(seqs)]
    meta = PagedAttentionMetadata.build_paged([length] * seqs, [length] * seqs, tables, BLOCK, device)
    ids = torch.randint(100, 40000, (seqs * length,))
    positions = torch.arange(length).repeat(seqs)
    return ids, positions, meta, 1 + seqs * per_seq


def step_fn(model, ids, positions, meta, sample_rows):
    def run():
        hidden = model(ids, positions, meta)
        model.compute_logits(hidden[sample_rows]).argmax(dim=-1)
    return run


def op_table(fn, rows: int = 18) -> str:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def linear_table(model, tokens: int, steps: int, peak: float) -> list[str]:
    """GFLOP/s of each distinct linear of the model at ``tokens`` rows."""
    layer = model.model.layers[0]
    linears = {"qkv_proj": layer.self_attn.qkv_proj, "o_proj": layer.self_attn.o_proj,
               "gate_up_proj": layer.mlp.gate_up_proj, "down_proj": layer.mlp.down_proj,
               "lm_head": model.lm_head}
    lines = ["| linear | M x K x N | ms | GFLOP/s | % of mm peak |", "|---|---|---|---|---|"]
    for name, lin in linears.items():
        n, k = lin.weight.shape
        x = torch.randn(tokens, k)
        t = best_of(lambda: lin(x), steps)
        gflops = 2 * tokens * k * n / t / 1e9
        lines.append(f"| {name} | {tokens}x{k}x{n} | {1e3 * t:.2f} | {gflops:.1f} | {100 * gflops / peak:.0f}% |")
    return lines


def mm_peak(steps: int, size: int = 1024) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    return 2 * size**3 / best_of(lambda: torch.mm(a, b), steps) / 1e9


STEPS = (
    ("decode 64 x ctx 192", decode_batch(64, 192), torch.arange(64)),
    ("prefill 16 x 128", prefill_batch(16, 128), torch.arange(16) * 128 + 127),
)
CONFIGS = (("sdpa", "native"), ("cpu_paged", "native"), ("sdpa", "onednn"), ("cpu_paged", "onednn"))


@torch.inference_mode()
def ab_table(model, steps: int) -> None:
    """Step time for every (backend, linear mode), interleaved twice; best of all repetitions."""
    from phase1_kernels.layers.attention import get_backend
    from phase1_kernels.layers.cpu_linear import process_weights_after_loading

    unit = "CPU ms" if torch.get_num_threads() == 1 else "ms"
    best: dict[tuple[str, str, str], float] = {}
    for _ in range(2):
        for backend, linear in CONFIGS:
            process_weights_after_loading(model, linear)
            for layer in model.attention_layers:
                layer.backend = get_backend(backend)
            for label, (ids, positions, meta, blocks), sample in STEPS:
                allocate_kv_cache(model, blocks, BLOCK)
                t = best_of(step_fn(model, ids, positions, meta, sample), steps)
                key = (label, backend, linear)
                best[key] = min(best.get(key, t), t)
                print(f"  {label} {backend}/{linear}: {1e3 * t:.1f} {unit} (load {os.getloadavg()[0]:.1f})",
                      flush=True)
    print(f"\n| step | attention | linear | {unit} per step | vs sdpa/native |\n|---|---|---|---|---|")
    for label, _, _ in STEPS:
        base = best[(label, "sdpa", "native")]
        for backend, linear in CONFIGS:
            t = best[(label, backend, linear)]
            print(f"| {label} | {backend} | {linear} | {1e3 * t:.1f} | {base / t:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", default=None, help="attention backend (default: the CPU default)")
    parser.add_argument("--linear", default=None, help="LIGHTVLLM_CPU_LINEAR mode (native, mkldnn, ...)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--ab", action="store_true", help="compare backends x linear modes")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.linear:
        os.environ["LIGHTVLLM_CPU_LINEAR"] = args.linear
    from phase2_attention import best_paged_backend

    backend = args.backend or best_paged_backend("cpu", BLOCK)
    llm = LightvLLM.from_pretrained(device="cpu", attn_backend=backend)
    model = llm.model
    _prepare(model)
    print(f"load average {os.getloadavg()[0]:.2f}, threads {torch.get_num_threads()}, "
          f"backend {backend}, linear {os.environ.get('LIGHTVLLM_CPU_LINEAR', 'default')}")
    peak = mm_peak(args.steps)
    print(f"torch.mm 1024^3 peak: {peak:.1f} GFLOP/s")
    if args.ab:
        return ab_table(model, args.steps)
    with torch.inference_mode():
        for label, (ids, positions, meta, blocks), sample in STEPS:
            allocate_kv_cache(model, blocks, BLOCK)
            fn = step_fn(model, ids, positions, meta, sample)
            t = best_of(fn, args.steps)
            print(f"\n## {label}: {1e3 * t:.1f} ms per step (best of {args.steps}), "
                  f"load {os.getloadavg()[0]:.2f}")
            print("\n".join(linear_table(model, ids.numel(), args.steps, peak)))
            if not args.no_profile:
                print(op_table(fn))


def _prepare(model) -> None:
    """Apply the CPU weight post-processing pass when it exists (later commits)."""
    try:
        from phase1_kernels.layers.cpu_linear import process_weights_after_loading
    except ImportError:
        return
    process_weights_after_loading(model)


if __name__ == "__main__":
    main()
