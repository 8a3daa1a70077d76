// Schemas of the lightvllm ops (vLLM style: results go into out-parameters marked `Tensor!`).
//
// Only the schemas live here. The kernels register themselves per device:
//   cpu/*.cpp   -> TORCH_LIBRARY_IMPL(lightvllm, CPU, m)
//   cuda/*.cu   -> TORCH_LIBRARY_IMPL(lightvllm, CUDA, m)
// and the shape-only (fake/meta) implementations that torch.compile and opcheck need are
// registered from Python (phase1_kernels/ops/compiled.py, torch.library.register_fake).
#include <torch/library.h>

#include <vector>

namespace lightvllm {
std::vector<int64_t> bind_threads(std::vector<int64_t> cpus);  // cpu/threads_cpu.cpp
}

TORCH_LIBRARY(lightvllm, m) {
  // out = input / sqrt(mean(input^2) + epsilon) * weight, over the last dim.
  m.def("rms_norm(Tensor! out, Tensor input, Tensor weight, float epsilon) -> ()");
  // residual += input; input = rms_norm(residual) (from the fp32 sum). Both in place.
  m.def(
      "fused_add_rms_norm(Tensor! input, Tensor! residual, Tensor weight, float epsilon) -> ()");
  // Rotary position embedding applied in place to query and key.
  m.def(
      "rotary_embedding(Tensor positions, Tensor! query, Tensor! key, int head_size, "
      "Tensor cos_sin_cache, bool is_neox) -> ()");
  // out = silu(input[..., :d]) * input[..., d:].
  m.def("silu_and_mul(Tensor! out, Tensor input) -> ()");
  // Paged attention over kv_cache [2, num_blocks, block_size, Hk, D]: sequence b's query tokens
  // query_start_loc[b]..[b+1] are the last of its seq_lens[b] tokens (causal, GQA). Decode and
  // chunked prefill alike. CPU only (the GPU paths are Triton / flash-attn).
  m.def(
      "paged_attention(Tensor! out, Tensor query, Tensor kv_cache, Tensor block_tables, "
      "Tensor seq_lens, Tensor query_start_loc, float scale) -> ()");
  // kv_cache[0|1] at slot_mapping[t] (block_id * block_size + offset) = key|value[t]; -1 skips.
  m.def("store_kv_cache(Tensor key, Tensor value, Tensor! kv_cache, Tensor slot_mapping) -> ()");
  // The weight [N, K] of a linear layer in panels of 16 output columns, [ceil(N/16), K, 16]
  // (zero-padded): packed once after loading, for packed_linear. CPU, float32.
  m.def("pack_linear_weight(Tensor weight) -> Tensor");
  // out [M, N] = input [M, K] @ weight^T from pack_linear_weight's panels. CPU, float32.
  m.def("packed_linear(Tensor! out, Tensor input, Tensor packed) -> ()");
  // out [M, N] = input [M <= 8, K] @ weight [N, K]^T, one warp per cols_per_warp (1, 2, 4) output
  // columns streaming the weight: decode-size GEMMs. CUDA only, float16/bfloat16.
  m.def("small_batch_linear(Tensor! out, Tensor input, Tensor weight, int cols_per_warp) -> ()");
  // The same for gate_up with its activation: weight [2d, K] (gate rows, then up rows), out [M, d]
  // = silu(input @ gate^T) * (input @ up^T), each half rounded to the dtype first (the bits of
  // small_batch_linear then silu_and_mul). cols_per_warp: 2 (one output per warp) or 4 (two).
  m.def("small_batch_linear_silu(Tensor! out, Tensor input, Tensor weight, int cols_per_warp) -> ()");
  // out [M, N] = input [M <= 16, K] @ weight [N, K]^T on the tensor cores (mma.sync, the weight as
  // the A operand), a block of `warps` (4 or 8) warps splitting K per `tiles` (1 or 2) x 16 output
  // columns. K a multiple of 32. CUDA only, float16/bfloat16.
  m.def("mma_linear(Tensor! out, Tensor input, Tensor weight, int warps, int tiles) -> ()");
  // The same for gate_up with SiLU·mul as the epilogue (weight [2d, K], out [M, d]), each half
  // rounded to the dtype first: the bits of mma_linear then silu_and_mul.
  m.def("mma_linear_silu(Tensor! out, Tensor input, Tensor weight, int warps, int tiles) -> ()");
  // Ask L2 for the first max_bytes of a tensor (a hint: no value changes). CUDA only.
  m.def("prefetch_l2(Tensor tensor, int max_bytes) -> ()");
  // Pin intra-op thread i to cpus[i] (no tensors: one kernel for every backend). Returns them.
  m.def("bind_threads(int[] cpus) -> int[]", &lightvllm::bind_threads);
  // The first exercise: c = a + b.
  m.def("vector_add(Tensor a, Tensor b) -> Tensor");
}
