"""Step times of tensor- and pipeline-parallel engines on the CPU, SmolLM2-sized (issue 10).

    python phase4_distributed/benchmarks/parallel_step_time.py [--decode-batch 16]
        [--decode-rounds 48] [--prefill 4x256] [--layouts uni,mp-tp1,mp-tp2,mp-pp2]

The model has SmolLM2-135M's shapes (hidden 576, MLP 1536, 30 layers, head_dim 64, vocab
49152) with 8 query / 2 KV heads instead of 9 / 3, so that TP=2 divides them; random weights,
fp32.
For each layout: start-up seconds, one prefill round (``--prefill`` requests of that many tokens
at once), and ``--decode-rounds`` decode rounds of ``--decode-batch`` requests (one token each
per round): ms per round and output tok/s. Everything runs on this machine's cores: with two
cores, TP=2 and PP=2 give each rank one thread where TP=1 has two, so the comparison shows what
the parallel layout costs (all-reduces, stage hand-offs, the executor's message per step) more
than what it gains.
"""

from __future__ import annotations

import argparse
import os
import time

from tqdm.auto import tqdm

from phase1_kernels.cpu_threads import THREADS_ENV
from phase3_scheduling import LLM, SamplingParams

SMOLLM2_SHAPE = dict(
    vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
    num_attention_heads=8, num_key_value_heads=2, head_dim=64, max_position_embeddings=2048,
    rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True, bos_token_id=1,
    eos_token_id=2, model_type="llama", architectures=["LlamaForCausalLM"])

LAYOUTS = {  # name -> (executor, tp, pp)
    "uni": ("uni", 1, 1),
    "uni-1thread": ("uni", 1, 1),  # what one rank's core does alone
    "mp-tp1": ("mp", 1, 1),
    "mp-tp2": ("mp", 2, 1),
    "mp-pp2": ("mp", 1, 2),
    "ray-tp2": ("ray", 2, 1),
    "ray-pp2": ("ray", 1, 2),
}


def build(layout: str, max_tokens: int) -> tuple[LLM, float]:
    backend, tp, pp = LAYOUTS[layout]
    if layout.endswith("-1thread"):
        os.environ[THREADS_ENV] = "1"
    else:
        os.environ.pop(THREADS_ENV, None)
    start = time.perf_counter()
    llm = LLM(None, load_format="dummy", hf_config=dict(SMOLLM2_SHAPE), dtype="float32",
              device="cpu", max_model_len=1024, kv_cache_gib=0.25,
              max_num_batched_tokens=max_tokens, distributed_executor_backend=backend,
              tensor_parallel_size=tp, pipeline_parallel_size=pp)
    return llm, time.perf_counter() - start


def run_until_done(llm: LLM) -> int:
    """Step until every request is done; returns the number of steps taken."""
    engine, steps = llm.engine, 0
    while engine.has_unfinished_requests():
        engine.step()
        steps += 1
    return steps


def prefill_seconds(llm: LLM, count: int, length: int) -> float:
    params = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    for i in range(count):
        llm.engine.add_request(None, [(7 * i + j) % 49000 + 3 for j in range(length)], params,
                               stream=False)
    start = time.perf_counter()
    run_until_done(llm)
    return time.perf_counter() - start


def decode_round_ms(llm: LLM, batch: int, rounds: int) -> float:
    """ms per decode round: ``batch`` requests of 8 prompt tokens, ``rounds`` tokens each, the
    prefill round excluded (it is timed alone first)."""
    engine = llm.engine
    warm = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    for i in range(batch):  # the same prompts, cached: the timed run's prefill is tiny
        engine.add_request(None, [3 + i] * 8, warm, stream=False)
    run_until_done(llm)
    params = SamplingParams(temperature=0, max_tokens=rounds + 1, ignore_eos=True)
    for i in range(batch):
        engine.add_request(None, [3 + i] * 8, params, stream=False)
    start = time.perf_counter()
    run_until_done(llm)
    return 1e3 * (time.perf_counter() - start) / (rounds + 1)


def start_ray_once() -> None:
    """Ray is started just before the first Ray layout (its start-up processes would slow the
    layouts measured before it) and stopped after the last one."""
    import ray

    if not ray.is_initialized():
        ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False,
                 num_cpus=2)
        time.sleep(5)  # let its daemons settle


def stop_ray() -> None:
    import sys

    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        sys.modules["ray"].shutdown()


def measure(layout: str, args: argparse.Namespace) -> dict:
    if LAYOUTS[layout][0] == "ray":
        start_ray_once()
    count, length = args.prefill
    llm, startup = build(layout, max(count * length, args.decode_batch))
    try:
        prefill_seconds(llm, 1, 16)  # first-call costs (thread pools, allocations)
        prefill = prefill_seconds(llm, count, length)
        before = llm.engine.executor.collective_rpc("get_timings")
        decode = decode_round_ms(llm, args.decode_batch, args.decode_rounds)
        after = llm.engine.executor.collective_rpc("get_timings")
        peak = llm.engine.core.peak_in_flight
    finally:
        llm.engine.shutdown()
    return dict(layout=layout, startup=startup, prefill=prefill, decode=decode, peak=peak,
                tok_s=1e3 * args.decode_batch / decode, rank_ms=rank_step_ms(before, after))


def rank_step_ms(before: list[dict], after: list[dict]) -> list[float]:
    """Per rank: mean ms of a step's model run (forward, stage hand-offs, all-reduces, sampling)
    while decoding."""
    out = []
    for b, a in zip(before, after):
        steps = a.get("eager_steps", 0) - b.get("eager_steps", 0)
        run = a.get("eager_run", 0) - b.get("eager_run", 0)
        out.append(1e3 * run / steps if steps else float("nan"))
    return out


def comm_rank_main(rank: int, world_size: int, master_addr: str, master_port: int, out: str,
                   rows: int, hidden: int, iters: int, layout: str) -> None:
    """One rank of the communication micro-benchmark (run by ``launch_local_ranks``): the
    median of one TP all-reduce of ``[rows, hidden]`` fp32, or of one PP hand-off (hidden +
    residual, ``[rows, hidden]`` each, metadata included), on this rank's share of the cores."""
    import json
    import statistics

    import torch

    from phase1_kernels.cpu_threads import parse_cpu_list
    from phase4_distributed.executors.processes import cpu_share
    from phase4_distributed.parallel_state import (destroy_distributed, get_pp_group,
                                                   get_tp_group, init_distributed)

    os.sched_setaffinity(0, parse_cpu_list(cpu_share(rank, world_size)))
    torch.set_num_threads(1)
    tp, pp = (2, 1) if layout == "tp" else (1, 2)
    init_distributed(world_size, rank, master_addr, master_port, "gloo", tp, pp)
    x = torch.randn(rows, hidden)
    times = []
    for _ in range(iters + 10):
        start = time.perf_counter()
        if layout == "tp":
            get_tp_group().all_reduce(x.clone())
        elif get_pp_group().is_first_rank:
            get_pp_group().send_tensor_dict({"hidden_states": x, "residual": x})
        else:
            get_pp_group().recv_tensor_dict()
        times.append(time.perf_counter() - start)
    destroy_distributed()
    if rank == 0:
        with open(out, "w") as handle:
            json.dump(1e3 * statistics.median(times[10:]), handle)


def comm_ms(layout: str, rows: int, hidden: int = 576, iters: int = 300) -> float:
    import json
    import tempfile

    from phase4_distributed.local_launch import launch_local_ranks

    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        launch_local_ranks(f"{__name__}:comm_rank_main" if __name__ != "__main__"
                           else "parallel_step_time:comm_rank_main", 2,
                           dict(out=out.name, rows=rows, hidden=hidden, iters=iters,
                                layout=layout),
                           extra_pythonpath=[os.path.dirname(os.path.abspath(__file__))])
        return json.loads(open(out.name).read())


def parse_prefill(text: str) -> tuple[int, int]:
    count, _, length = text.partition("x")
    return int(count), int(length)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decode-batch", type=int, default=16)
    parser.add_argument("--decode-rounds", type=int, default=48)
    parser.add_argument("--prefill", type=parse_prefill, default=(4, 256), help="COUNTxLENGTH")
    parser.add_argument("--layouts", default="uni,mp-tp1,mp-tp2,mp-pp2")
    args = parser.parse_args()
    batch, layers = args.decode_batch, SMOLLM2_SHAPE["num_hidden_layers"]
    all_reduce = comm_ms("tp", batch)  # first: nothing else (Ray's daemons) is running yet
    hand_off = comm_ms("pp", batch // 2)
    layouts = args.layouts.split(",")
    rows = []
    for name in tqdm(layouts, desc="layouts", unit="layout"):
        rows.append(measure(name, args))
    stop_ray()  # Ray's own processes would take CPU from the measurements below
    base = rows[0]
    count, length = args.prefill
    print(f"\nSmolLM2-sized random LLaMA (30 layers, hidden 576, 8/2 heads), fp32; prefill "
          f"{count} x {length} tokens; decode {args.decode_batch} requests x "
          f"{args.decode_rounds} rounds; baseline {base['layout']} in the same run")
    print("| layout | start-up s | prefill s | decode round ms | decode tok/s | steps in flight "
          "| run ms per step, by rank | decode vs baseline |")
    print("|---|---:|---:|---:|---:|---:|---|---:|")
    for r in rows:
        ranks = " / ".join(f"{ms:.1f}" for ms in r["rank_ms"])
        print(f"| {r['layout']} | {r['startup']:.1f} | {r['prefill']:.2f} | {r['decode']:.1f} | "
              f"{r['tok_s']:.0f} | {r['peak']} | {ranks} | {r['decode'] / base['decode']:.2f}x |")
    print(f"\ngloo on this host, one core per rank: all-reduce of [{batch}, 576] fp32 "
          f"{all_reduce:.3f} ms (x {2 * layers + 1} per TP=2 step = {(2 * layers + 1) * all_reduce:.1f} "
          f"ms); PP hand-off of 2 x [{batch // 2}, 576] {hand_off:.3f} ms per micro-batch")


if __name__ == "__main__":
    main()
