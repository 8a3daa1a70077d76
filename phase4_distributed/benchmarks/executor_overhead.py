"""What an executor costs per step and at start-up, on the CPU with a tiny random model.

    python phase4_distributed/benchmarks/executor_overhead.py [--steps 200] [--batch 4]
                                                             [--backends uni,mp,ray,grpc] [--tp 1]

For each executor: start-up seconds (``LLM(...)``: workers started, model loaded, KV cache
allocated), the median round trip of an empty step and of a ``ping`` RPC, the median
``engine.step()`` of a pure decode batch, and how long after the last rank's process is
SIGKILLed mid-generation the engine raises ``WorkerDiedError`` (``uni`` has no worker process).
Against ``uni`` (no encoding, a direct call) the difference is the executor's overhead:
encoding, the socket or Ray's task path, decoding.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import tempfile
import time

from tqdm.auto import tqdm

from phase3_scheduling import LLM, SamplingParams
from phase3_scheduling.executor import WorkerDiedError
from phase3_scheduling.protocol import SchedulerOutput
from shared.fixtures import write_random_llama


def median_ms(fn, steps: int) -> float:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def decode_step_ms(llm: LLM, batch: int, steps: int) -> float:
    """Median engine step once ``batch`` requests are all decoding."""
    engine = llm.engine
    params = SamplingParams(temperature=0, max_tokens=steps + 64, ignore_eos=True)
    ids = [engine.add_request(None, [1 + i, 2, 3, 4], params, stream=False) for i in range(batch)]
    for _ in range(4):  # prefill, then decodes only
        engine.step()
    result = median_ms(engine.step, steps)
    engine.abort_request(ids)
    engine.step()
    return result


def detection_s(llm: LLM, pid: int) -> float:
    """Seconds from SIGKILL of worker ``pid`` mid-generation to ``WorkerDiedError``."""
    engine = llm.engine
    params = SamplingParams(temperature=0, max_tokens=10_000, ignore_eos=True)
    for i in range(4):
        engine.add_request(None, [5 + i, 6, 7], params, stream=False)
    engine.step()
    os.kill(pid, signal.SIGKILL)
    start = time.perf_counter()
    try:
        while engine.has_unfinished_requests():
            engine.step()
    except WorkerDiedError:
        return time.perf_counter() - start
    raise RuntimeError("the engine finished without noticing the dead worker")


def measure(model_dir: str, backend: str, tp: int, steps: int, batch: int) -> dict:
    if backend != "grpc":
        return measure_llm(model_dir, backend, tp, steps, batch, {}, None)
    from phase4_distributed.grpc.local import local_workers

    with local_workers(tp) as (addresses, procs):  # started before LLM(): not in start-up
        return measure_llm(model_dir, backend, tp, steps, batch,
                           {"worker_addresses": addresses}, procs[-1].pid)


def measure_llm(model_dir: str, backend: str, tp: int, steps: int, batch: int,
                extra: dict, worker_pid: int | None) -> dict:
    start = time.perf_counter()
    llm = LLM(model_dir, distributed_executor_backend=backend, tensor_parallel_size=tp,
              kv_cache_gib=0.02, extra=extra)
    startup = time.perf_counter() - start
    executor = llm.engine.executor
    try:
        empty = median_ms(lambda: executor.execute_model(SchedulerOutput()), steps)
        ping = median_ms(lambda: executor.collective_rpc("ping"), steps)
        decode = decode_step_ms(llm, batch, steps)
        pid = worker_pid or (executor.pids[-1] if hasattr(executor, "pids") else None)
        detect = detection_s(llm, pid) if pid else float("nan")
    finally:
        llm.engine.shutdown()
    return dict(backend=f"{backend} (tp={tp})", startup=startup, empty=empty, ping=ping,
                decode=decode, detect=detect)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--backends", default="uni,mp,ray")
    parser.add_argument("--tp", type=int, default=1,
                        help="tensor_parallel_size for mp, ray and grpc")
    args = parser.parse_args()
    model_dir = str(write_random_llama(tempfile.mkdtemp(prefix="executor-bench-")))
    backends = args.backends.split(",")
    if "ray" in backends:
        import ray

        start = time.perf_counter()
        ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False,
                 num_cpus=max(2, args.tp))
        print(f"ray.init: {time.perf_counter() - start:.1f} s (not in the ray row's start-up)")
    rows = [measure(model_dir, b, 1 if b == "uni" else args.tp, args.steps, args.batch)
            for b in tqdm(backends, desc="executors", unit="executor")]
    print(f"\n{args.steps} steps each, decode batch {args.batch}, tiny LLaMA (2 layers, hidden 64)")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    print("| executor | start-up s | empty step ms | ping RPC ms | decode step ms "
          "| dead worker detected in s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['startup']:.1f} | {r['empty']:.3f} | {r['ping']:.3f} | "
              f"{r['decode']:.3f} | {r['detect']:.2f} |")


if __name__ == "__main__":
    main()
