"""Attention kernels on the Llama-3.1-8B per-layer shape (32 q heads, 8 kv heads, head 128,
bf16, block size 16): Triton paged decode/prefill against SDPA, a naive matmul+softmax and,
when importable, FlashAttention 4's paged varlen kernel (the flash_attn backend's call) at block
16 (its cp.async page gather) and 128 (its TMA path), or flash-attn 2's ``flash_attn_with_kvcache``.

    python phase2_attention/benchmarks/bench_attention.py [--quick] [--tune] [--out r.json]
        [--decode-shapes 64x4096,8x32768] [--prefill-shapes 1x4096,1x16384]

Decode reports latency (median of ``triton.testing.do_bench``, which flushes L2 between
runs), the K/V bytes a step must read (B * ctx * Hk * D * 2 tensors * 2 bytes), the achieved
GB/s and its share of the card's measured copy bandwidth (H100 3.01 TB/s, H200 4.3 TB/s;
``--peak-bw`` for others), and the peak memory the call allocates
beyond its inputs (output included). Prefill reports TFLOP/s of the causal product
(2 * 2 * B * Hq * L * L * D / 2) and the ratio to SDPA's flash kernel.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import torch
import torch.nn.functional as F
import triton
import triton.testing

from phase2_attention.ops import triton_paged as tp

HQ, HK, D, BLOCK = 32, 8, 128, 16
DTYPE = torch.bfloat16
MEASURED_BW = {"H100": 3.01e12, "H200": 4.3e12}  # device-to-device copy, read + write
PEAK_BW = 3.01e12  # set in main from the device
MAX_CACHE_BYTES = 60e9

FA4_BLOCKS = (16, 128)


def flash_backend():
    """The flash_attn backend when it can run here (FA4 or FA2), else None."""
    from phase2_attention.backends import FlashAttnBackend, flash_attn_available

    return FlashAttnBackend() if flash_attn_available() else None


FLASH = flash_backend()
FLASH_ATTN = FLASH is not None


def bench(fn, rep: int = 40) -> float:
    """Median time in microseconds."""
    return triton.testing.do_bench(fn, warmup=10, rep=rep, return_mode="median") * 1e3


def bench_graph(fn, rep: int = 40) -> float:
    """GPU time without Python launch overhead: ``fn`` captured once in a CUDA graph, its
    replays timed like ``bench`` (L2 still flushed before each). This is how the engine runs
    decode, and the only honest figure when the kernel is shorter than its launch."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    us = bench(graph.replay, rep)
    del graph
    return us


def extra_memory(fn) -> int:
    """Peak bytes allocated during ``fn`` beyond what was allocated before it."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return peak


def paged_cache(batch: int, ctx: int, gen: torch.Generator, block: int = BLOCK):
    """A random bf16 paged cache holding ``batch`` sequences of ``ctx`` tokens in shuffled
    blocks (block 0 reserved), plus the block table and seq_lens."""
    nblk = math.ceil(ctx / block)
    num_blocks = batch * nblk + 1
    cache = torch.randn(2, num_blocks, block, HK, D, device="cuda", dtype=DTYPE, generator=gen)
    ids = torch.randperm(num_blocks - 1, device="cuda", generator=gen).int() + 1
    tables = ids.view(batch, nblk)
    seq_lens = torch.full((batch,), ctx, dtype=torch.int32, device="cuda")
    return cache, tables, seq_lens


def sdpa_inputs(q, k, v, flash: bool, **kw):
    """SDPA's call for GQA: ``enable_gqa`` when the backend takes it, else K/V repeated to the
    query heads here, outside the timed region (the copy then shows as input, not as extra)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = [SDPBackend.FLASH_ATTENTION] if flash else [
        SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    try:
        with sdpa_kernel(backends):
            F.scaled_dot_product_attention(q[:1, :, :16], k[:1, :, :16], v[:1, :, :16],
                                           enable_gqa=True, **kw)
        gqa = True
    except (TypeError, RuntimeError):
        g = q.shape[1] // k.shape[1]
        k, v, gqa = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1), False

    def fn():
        with sdpa_kernel(backends):
            if gqa:
                return F.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kw)
            return F.scaled_dot_product_attention(q, k, v, **kw)

    return fn, "enable_gqa" if gqa else "K/V repeated"


def naive_attention(q, k, v, causal: bool):
    g = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(g, 1)
    v = v.repeat_interleave(g, 1)
    s = (q.float() @ k.float().transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    if causal:
        L = q.shape[2]
        s = s.masked_fill(torch.ones(L, L, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return (s.softmax(-1) @ v.float()).to(q.dtype)


# --------------------------------------------------------------------------------------------
def run_decode(batches, contexts, gen, rows):
    scale = D ** -0.5
    for batch in batches:
        for ctx in contexts:
            kv_bytes = batch * ctx * HK * D * 2 * 2
            if 2 * kv_bytes > MAX_CACHE_BYTES:  # paged + contiguous copies
                continue
            cache, tables, seq_lens = paged_cache(batch, ctx, gen)
            q = torch.randn(batch, HQ, D, device="cuda", dtype=DTYPE, generator=gen)
            out = torch.empty_like(q)
            splits = tp.choose_num_splits(batch, HK, tables.shape[1] * BLOCK,
                                          torch.cuda.get_device_properties(0).multi_processor_count)

            def triton_fn():
                return tp.paged_decode_attention(q, cache, tables, seq_lens, scale, out=out)

            entries = [("triton paged", triton_fn, f"splits={splits}")]
            kc = torch.randn(batch, HK, ctx, D, device="cuda", dtype=DTYPE, generator=gen)
            vc = torch.randn(batch, HK, ctx, D, device="cuda", dtype=DTYPE, generator=gen)
            q4 = q.unsqueeze(2)
            sdpa_fn, how = sdpa_inputs(q4, kc, vc, flash=False)
            entries.append(("sdpa", sdpa_fn, f"contiguous [B,H,L,D], {how}"))
            if batch * ctx <= 64 * 1024:
                entries.append(("naive", lambda: naive_attention(q4, kc, vc, False), "matmul+softmax"))
            entries += flash_decode_entries(q, batch, ctx, gen, scale)
            for name, fn, note in entries:
                us = bench(fn)
                try:
                    graph_us = bench_graph(fn)
                except RuntimeError as exc:
                    print(f"decode {name}: graph capture failed: {exc}", flush=True)
                    graph_us = us
                mem = extra_memory(fn)
                gbs = kv_bytes / (graph_us * 1e-6) / 1e9
                rows.append(dict(kind="decode", impl=name, batch=batch, ctx=ctx, us=us,
                                 graph_us=graph_us, kv_mb=kv_bytes / 1e6, gbs=gbs,
                                 pct_peak=100 * gbs * 1e9 / PEAK_BW, extra_mb=mem / 1e6, note=note))
                print(f"decode B={batch:4d} ctx={ctx:6d} {name:18s} {us:10.1f} us eager "
                      f"{graph_us:10.1f} us graph {gbs:7.0f} GB/s {100 * gbs * 1e9 / PEAK_BW:5.1f}% "
                      f"extra {mem / 1e6:8.1f} MB", flush=True)
            del cache, tables, kc, vc, q, out
            torch.cuda.empty_cache()


def run_prefill(batches, lengths, gen, rows):
    scale = D ** -0.5
    for batch in batches:
        sdpa_us_at = {}
        for L in lengths:
            flops = 2 * 2 * batch * HQ * L * L * D / 2
            cache, tables, seq_lens = paged_cache(batch, L, gen)
            T = batch * L
            q = torch.randn(T, HQ, D, device="cuda", dtype=DTYPE, generator=gen)
            k = torch.randn(T, HK, D, device="cuda", dtype=DTYPE, generator=gen)
            v = torch.randn(T, HK, D, device="cuda", dtype=DTYPE, generator=gen)
            pos = torch.arange(L, device="cuda")
            slots = (tables[:, pos // BLOCK].long() * BLOCK + pos % BLOCK).reshape(-1)
            qsl = torch.arange(0, T + 1, L, dtype=torch.int32, device="cuda")
            out = torch.empty_like(q)

            def attn():
                return tp.paged_prefill_attention(q, cache, tables, qsl, seq_lens, L, scale, out=out)

            def store_attn():
                tp.store_kvcache(k, v, cache, slots)
                return attn()

            qb = q.view(batch, L, HQ, D).transpose(1, 2)
            kb = k.view(batch, L, HK, D).transpose(1, 2)
            vb = v.view(batch, L, HK, D).transpose(1, 2)

            sdpa_flash, how = sdpa_inputs(qb, kb, vb, flash=True, is_causal=True)
            entries = [("triton paged", attn, "attention only"),
                       ("triton store+attn", store_attn, "store_kvcache then attention"),
                       ("sdpa flash", sdpa_flash, f"causal, [B,H,L,D] views, {how}")]
            if L <= 4096:
                entries.append(("naive", lambda: naive_attention(qb, kb, vb, True), "O(L^2) scores"))
            entries += flash_prefill_entries(q, batch, L, gen, scale)
            for name, fn, note in entries:
                try:
                    us = bench(fn, rep=60)
                    mem = extra_memory(fn)
                except RuntimeError as exc:  # e.g. the flash backend refuses a layout
                    print(f"prefill B={batch} L={L} {name}: failed: {exc}", flush=True)
                    continue
                tflops = flops / (us * 1e-6) / 1e12
                if name == "sdpa flash":
                    sdpa_us_at[L] = us
                rows.append(dict(kind="prefill", impl=name, batch=batch, seq=L, us=us,
                                 tflops=tflops, extra_mb=mem / 1e6, note=note))
                print(f"prefill B={batch} L={L:6d} {name:18s} {us:10.1f} us {tflops:7.1f} TFLOP/s "
                      f"extra {mem / 1e6:8.1f} MB", flush=True)
            for r in rows:
                if r["kind"] == "prefill" and r["batch"] == batch and r["seq"] == L \
                        and L in sdpa_us_at:
                    r["vs_sdpa"] = r["us"] / sdpa_us_at[L]
            del cache, tables, q, k, v, out, qb, kb, vb
            torch.cuda.empty_cache()


def flash_decode_entries(q, batch, ctx, gen, scale):
    """FA4's decode (the backend's one varlen call, q_len 1) at each page size, each over its
    own cache; flash-attn 2's ``flash_attn_with_kvcache`` at block 256 when that is installed."""
    if FLASH is None:
        return []
    cu = torch.arange(batch + 1, dtype=torch.int32, device="cuda")
    entries = []
    for block in (FA4_BLOCKS if FLASH.api.version == 4 else (256,)):
        cache, tables, seq_lens = paged_cache(batch, ctx, gen, block)
        if FLASH.api.version == 4:
            fn = (lambda c=cache, t=tables, s=seq_lens:
                  FLASH.paged_attention(q, c, cu, s, t, 1, scale))
            path = "TMA pages" if block == 128 else "cp.async page gather"
            entries.append((f"flash-attn4 bs{block}", fn, f"{path}, no split-KV on sm90"))
        else:
            fn = (lambda c=cache, t=tables, s=seq_lens: FLASH.api.with_kvcache(
                q.unsqueeze(1), c[0], c[1], cache_seqlens=s, block_table=t, softmax_scale=scale))
            entries.append((f"flash-attn2 bs{block}", fn, "flash_attn_with_kvcache"))
    return entries


def flash_prefill_entries(q, batch, L, gen, scale):
    """FA4's causal varlen prefill over the paged cache (attention only, like Triton's row)."""
    if FLASH is None or FLASH.api.version != 4:
        return []
    qsl = torch.arange(0, batch * L + 1, L, dtype=torch.int32, device="cuda")
    entries = []
    for block in FA4_BLOCKS:
        cache, tables, seq_lens = paged_cache(batch, L, gen, block)
        fn = (lambda c=cache, t=tables, s=seq_lens:
              FLASH.paged_attention(q, c, qsl, s, t, L, scale))
        entries.append((f"flash-attn4 bs{block}", fn, "attention only, paged"))
    return entries


def parse_shapes(text: str | None) -> list[tuple[int, int]] | None:
    """``"64x4096,8x32768"`` -> [(64, 4096), (8, 32768)] (batch x length)."""
    if not text:
        return None
    return [tuple(int(x) for x in part.split("x")) for part in text.split(",")]


# --------------------------------------------------------------------------------------------
def tune_small_batch(gen, rows, table_tokens: int = 2048, ctx: int = 512):
    """Decode at the batches of online serving (1, 4, 16 sequences of ``ctx`` tokens) with the
    engine's block-table width (``table_tokens`` = its max_model_len, which caps the splits):
    the split count and tile settings, each in a CUDA graph as the engine replays it."""
    scale = D ** -0.5
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for batch in (1, 4, 16):
        cache, tables, seq_lens = paged_cache(batch, ctx, gen)
        wide = torch.zeros(batch, table_tokens // BLOCK, dtype=tables.dtype, device="cuda")
        wide[:, :tables.shape[1]] = tables
        q = torch.randn(batch, HQ, D, device="cuda", dtype=DTYPE, generator=gen)
        out = torch.empty_like(q)
        kv_bytes = batch * ctx * HK * D * 4
        auto = tp.choose_num_splits(batch, HK, table_tokens, sms)
        for splits in sorted({auto, 1, 2, 4, 8, 16}):
            for bn, warps in ((64, 4), (32, 4), (32, 2), (16, 2)):
                cfg = dict(BLOCK_N=bn, num_warps=warps, num_stages=3)
                try:
                    us = bench_graph(lambda: tp.paged_decode_attention(
                        q, cache, wide, seq_lens, scale, out=out, num_splits=splits, config=cfg))
                except Exception as exc:  # noqa: BLE001 - out of resources etc.
                    print(f"tune small decode B={batch} {cfg} splits={splits}: {type(exc).__name__}")
                    continue
                gbs = kv_bytes / (us * 1e-6) / 1e9
                rows.append(dict(kind="tune_small_decode", batch=batch, ctx=ctx, cfg=cfg,
                                 splits=splits, auto=splits == auto, graph_us=us, gbs=gbs))
                print(f"tune small decode B={batch:2d} ctx={ctx} splits={splits:2d}"
                      f"{' (auto)' if splits == auto else '       '} {cfg}: {us:6.1f} us graph "
                      f"{gbs:5.0f} GB/s ({100 * gbs * 1e9 / PEAK_BW:.1f}%)", flush=True)
        del cache, tables, wide, q, out
        torch.cuda.empty_cache()


def tune(gen, rows):
    """Tile settings of both kernels at the issue's target shapes."""
    scale = D ** -0.5
    batch, ctx = 64, 4096
    cache, tables, seq_lens = paged_cache(batch, ctx, gen)
    q = torch.randn(batch, HQ, D, device="cuda", dtype=DTYPE, generator=gen)
    kv_bytes = batch * ctx * HK * D * 4
    for bn in (32, 64, 128):
        for warps in (4, 8):
            for stages in (2, 3, 4):
                for splits in (None, 1, 2, 4, 8):
                    if splits not in (None,) and (bn, warps, stages) != (64, 4, 3):
                        continue
                    cfg = dict(BLOCK_N=bn, num_warps=warps, num_stages=stages)
                    try:
                        us = bench(lambda: tp.paged_decode_attention(
                            q, cache, tables, seq_lens, scale, num_splits=splits, config=cfg))
                    except Exception as exc:  # noqa: BLE001 - out of resources etc.
                        print(f"tune decode {cfg} splits={splits}: {type(exc).__name__}")
                        continue
                    gbs = kv_bytes / (us * 1e-6) / 1e9
                    rows.append(dict(kind="tune_decode", cfg=cfg, splits=splits, us=us, gbs=gbs))
                    print(f"tune decode {cfg} splits={splits}: {us:.1f} us {gbs:.0f} GB/s "
                          f"({100 * gbs * 1e9 / PEAK_BW:.1f}%)", flush=True)
    del cache, tables, q
    L = 4096
    cache, tables, seq_lens = paged_cache(1, L, gen)
    q = torch.randn(L, HQ, D, device="cuda", dtype=DTYPE, generator=gen)
    qsl = torch.tensor([0, L], dtype=torch.int32, device="cuda")
    flops = 2 * HQ * L * L * D
    for bm, bn, warps, stages in [(128, 64, 8, 3), (128, 64, 4, 3), (128, 128, 8, 3),
                                  (128, 32, 4, 3), (128, 64, 8, 2), (128, 64, 8, 4),
                                  (64, 64, 4, 3), (64, 128, 4, 3), (128, 128, 8, 2),
                                  (64, 32, 4, 4)]:
        cfg = dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages)
        try:
            us = bench(lambda: tp.paged_prefill_attention(q, cache, tables, qsl, seq_lens, L, scale,
                                                          config=cfg))
        except Exception as exc:  # noqa: BLE001
            print(f"tune prefill {cfg}: {type(exc).__name__}")
            continue
        rows.append(dict(kind="tune_prefill", cfg=cfg, us=us, tflops=flops / (us * 1e-6) / 1e12))
        print(f"tune prefill {cfg}: {us:.1f} us {flops / (us * 1e-6) / 1e12:.1f} TFLOP/s", flush=True)
    del cache, tables, q
    torch.cuda.empty_cache()


def print_small_batch_table(rows, device: str):
    """The --tune-small sweep: per batch, each split count and tile, fastest first."""
    print(f"\n### Decode at small batches (graph µs per layer call) on {device}\n")
    print("| batch | ctx | splits | BLOCK_N | warps | graph µs | GB/s | vs the default |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    sweep = [r for r in rows if r["kind"] == "tune_small_decode"]
    for batch in sorted({r["batch"] for r in sweep}):
        mine = sorted((r for r in sweep if r["batch"] == batch), key=lambda r: r["graph_us"])
        default = next((r for r in mine if r["auto"] and r["cfg"]["BLOCK_N"] == 64
                        and r["cfg"]["num_warps"] == 4), None)
        for r in mine:
            ratio = f"{r['graph_us'] / default['graph_us']:.2f}x" if default else "-"
            print(f"| {batch} | {r['ctx']} | {r['splits']}{' (auto)' if r['auto'] else ''} | "
                  f"{r['cfg']['BLOCK_N']} | {r['cfg']['num_warps']} | {r['graph_us']:.1f} | "
                  f"{r['gbs']:.0f} | {ratio} |")


def print_tables(rows, device: str):
    print(f"\n### Decode (Llama-3.1-8B layer: Hq={HQ}, Hk={HK}, D={D}, bf16, block {BLOCK}) on {device}\n")
    print("GB/s from the CUDA-graph time (GPU time, no Python launch cost).\n")
    print(f"| batch | ctx | impl | eager µs | graph µs | K/V read (MB) | GB/s | % of {PEAK_BW / 1e12:.2f} TB/s | extra mem (MB) | note |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        if r["kind"] == "decode":
            print(f"| {r['batch']} | {r['ctx']} | {r['impl']} | {r['us']:.1f} | {r['graph_us']:.1f} | "
                  f"{r['kv_mb']:.1f} | {r['gbs']:.0f} | {r['pct_peak']:.1f} | {r['extra_mb']:.1f} | "
                  f"{r['note']} |")
    if not FLASH_ATTN:
        from phase2_attention.backends import flash_attn_unavailable_reason

        print(f"\nflash_attn backend: {flash_attn_unavailable_reason()}")
    print(f"\n### Prefill (causal, same shape) on {device}\n")
    print("| batch | seq | impl | latency (µs) | TFLOP/s | time / SDPA flash | extra mem (MB) | note |")
    print("|---:|---:|---|---:|---:|---:|---:|---|")
    for r in rows:
        if r["kind"] == "prefill":
            ratio = f"{r['vs_sdpa']:.2f}x" if "vs_sdpa" in r else "-"
            print(f"| {r['batch']} | {r['seq']} | {r['impl']} | {r['us']:.1f} | {r['tflops']:.1f} | "
                  f"{ratio} | {r['extra_mb']:.1f} | {r['note']} |")


def flash_versions() -> dict[str, str]:
    """The installed versions of FA4's stack, recorded with the figures."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("flash-attn-4", "flash-attn", "nvidia-cutlass-dsl-libs-base",
                 "nvidia-cutlass-dsl-libs-core", "nvidia-cutlass-dsl-libs-cu13", "quack-kernels",
                 "apache-tvm-ffi"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", help="write all rows as JSON here")
    ap.add_argument("--quick", action="store_true", help="a few sizes only")
    ap.add_argument("--tune", action="store_true", help="also sweep tile settings at the targets")
    ap.add_argument("--tune-small", action="store_true",
                    help="only the decode sweep at 1, 4, 16 sequences of 512 tokens (online serving)")
    ap.add_argument("--skip-decode", action="store_true")
    ap.add_argument("--skip-prefill", action="store_true")
    ap.add_argument("--peak-bw", type=float, help="bytes/s to report decode against")
    ap.add_argument("--decode-shapes", help="only these decode shapes, e.g. 64x4096,8x32768")
    ap.add_argument("--prefill-shapes", help="only these prefill shapes, e.g. 1x4096,1x16384")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_attention needs a CUDA GPU")
        return 1
    device = torch.cuda.get_device_name(0)
    global PEAK_BW
    PEAK_BW = args.peak_bw or next((bw for k, bw in MEASURED_BW.items() if k in device), PEAK_BW)
    print(f"device: {device}, torch {torch.__version__}, triton {triton.__version__}, "
          f"flash_attn: {flash_versions() or 'none'}")
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows: list[dict] = []
    if args.tune_small:
        tune_small_batch(gen, rows)
        print_small_batch_table(rows, device)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(dict(device=device, torch=torch.__version__, triton=triton.__version__,
                               rows=rows), f, indent=1)
        return 0
    if args.tune:
        tune(gen, rows)
    decode_shapes, prefill_shapes = parse_shapes(args.decode_shapes), parse_shapes(args.prefill_shapes)
    if not args.skip_decode and decode_shapes:
        for batch, ctx in decode_shapes:
            run_decode([batch], [ctx], gen, rows)
    elif not args.skip_decode:
        run_decode([1, 64] if args.quick else [1, 8, 32, 64, 128],
                   [512, 4096] if args.quick else [512, 2048, 4096, 8192, 16384, 32768], gen, rows)
    if not args.skip_prefill and prefill_shapes:
        for batch, L in prefill_shapes:
            run_prefill([batch], [L], gen, rows)
    elif not args.skip_prefill:
        run_prefill([1] if args.quick else [1, 4],
                    [512, 4096] if args.quick else [512, 1024, 2048, 4096, 8192, 16384, 32768],
                    gen, rows)
    print_tables(rows, device)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(device=device, torch=torch.__version__, triton=triton.__version__,
                           flash_attn=FLASH.api.version if FLASH else None,
                           flash_attn_versions=flash_versions(), rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
