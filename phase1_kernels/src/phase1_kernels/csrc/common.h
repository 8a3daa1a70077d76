// Input checks shared by the CPU and CUDA kernels.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <type_traits>

// Dispatch over the three dtypes the kernels support (float32, float16, bfloat16); `scalar_t`
// names the type inside the body. Narrower than AT_DISPATCH_FLOATING_TYPES_AND2 (no double):
// fewer template instances, faster builds.
#define LIGHTVLLM_DISPATCH_FLOATING_TYPES(TYPE, NAME, ...)              \
  AT_DISPATCH_SWITCH(TYPE, NAME,                                        \
                     AT_DISPATCH_CASE(at::ScalarType::Float, __VA_ARGS__) \
                     AT_DISPATCH_CASE(at::ScalarType::Half, __VA_ARGS__)  \
                     AT_DISPATCH_CASE(at::ScalarType::BFloat16, __VA_ARGS__))

namespace lightvllm {

namespace detail {
// The message of a failed check, written with snprintf into this thread's fixed buffer, so that
// TORCH_CHECK gets a plain `const char*` and no C++ stream is involved. Why: on the GPU machine
// (torch 2.11.0+cu130, g++ 13.3) every failed check whose message was formatted with c10::str
// (a std::ostringstream built in this library) killed the process with SIGSEGV, in the CPU and the
// CUDA ops alike; the one check with a literal message (c10::str passes a lone literal through,
// no stream) raised as it should. Keeping the std::string but moving it out of our frames (the
// first attempt) did not help there: the stream is what the crashing cases had in common
// (docs/phase1.md, tests/test_op_errors.py).
struct MessageBuffer {
  char text[1024];
  size_t used;
};

template <typename... Values>
void put(MessageBuffer& b, const char* format, Values... values) {
  if (b.used + 1 >= sizeof(b.text)) return;
  const int n = std::snprintf(b.text + b.used, sizeof(b.text) - b.used, format, values...);
  if (n > 0) b.used = std::min(sizeof(b.text) - 1, b.used + static_cast<size_t>(n));
}

inline void append(MessageBuffer& b, const char* s) { put(b, "%s", s); }
inline void append(MessageBuffer& b, const std::string& s) { put(b, "%s", s.c_str()); }
inline void append(MessageBuffer& b, bool v) { put(b, "%s", v ? "true" : "false"); }
inline void append(MessageBuffer& b, double v) { put(b, "%g", v); }
template <typename T, std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, bool>, int> = 0>
void append(MessageBuffer& b, T v) {
  put(b, "%lld", static_cast<long long>(v));
}
inline void append(MessageBuffer& b, at::ScalarType t) { put(b, "%s", c10::toString(t)); }
inline void append(MessageBuffer& b, c10::IntArrayRef sizes) {  // as c10 prints them: [4, 64]
  put(b, "[");
  for (size_t i = 0; i < sizes.size(); ++i) put(b, i ? ", %lld" : "%lld", static_cast<long long>(sizes[i]));
  put(b, "]");
}
inline void append(MessageBuffer& b, const c10::Device& d) {  // cpu, cuda:0
  put(b, "%s", d.is_cuda() ? "cuda" : d.is_cpu() ? "cpu" : "device");
  if (d.has_index()) put(b, ":%d", static_cast<int>(d.index()));
}

template <typename... Args>
const char* check_message(const Args&... args) {
  thread_local MessageBuffer buffer;
  buffer.used = 0;
  buffer.text[0] = '\0';
  (append(buffer, args), ...);
  return buffer.text;
}
}  // namespace detail

// TORCH_CHECK for our ops: same semantics, message formatted by detail::check_message.
#define LIGHTVLLM_CHECK(cond, ...) TORCH_CHECK(cond, ::lightvllm::detail::check_message(__VA_ARGS__))

inline bool is_float_type(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

// A [..., H] tensor as rows of H contiguous elements, `row_stride` elements apart.
struct Rows {
  int64_t num_rows;
  int64_t hidden;
  int64_t row_stride;
};

// Views `t` as rows without copying: the last dim must be contiguous and the leading dims must
// collapse into one (true for contiguous tensors and for slices such as x[:, :H]).
inline Rows as_rows(const at::Tensor& t, const char* name) {
  LIGHTVLLM_CHECK(t.dim() >= 1, name, " must have at least one dim");
  LIGHTVLLM_CHECK(t.stride(-1) == 1 || t.size(-1) == 1, name,
              " must be contiguous in its last dim, got strides ", t.strides());
  const int64_t hidden = t.size(-1);
  int64_t num_rows = 1;
  for (int64_t d = 0; d + 1 < t.dim(); ++d) num_rows *= t.size(d);
  int64_t row_stride = hidden;
  if (t.dim() >= 2) {
    row_stride = t.stride(-2);
    // Leading dims must collapse: stride[d] == stride[d+1] * size[d+1] (ignoring size-1 dims).
    for (int64_t d = t.dim() - 3; d >= 0; --d) {
      LIGHTVLLM_CHECK(t.size(d) == 1 || t.stride(d) == t.stride(d + 1) * t.size(d + 1), name,
                  " has leading dims that cannot be viewed as rows (strides ", t.strides(), ")");
    }
    if (num_rows <= 1) row_stride = hidden;
  }
  return {num_rows, hidden, row_stride};
}

inline void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* an,
                              const char* bn) {
  LIGHTVLLM_CHECK(a.device() == b.device(), an, " is on ", a.device(), " but ", bn, " is on ",
              b.device());
}

inline void check_norm_args(const at::Tensor& input, const at::Tensor& weight) {
  LIGHTVLLM_CHECK(is_float_type(input.scalar_type()), "input must be float32, float16 or bfloat16, got ",
              input.scalar_type());
  LIGHTVLLM_CHECK(weight.dim() == 1 && weight.size(0) == input.size(-1), "weight must be [",
              input.size(-1), "], got ", weight.sizes());
  LIGHTVLLM_CHECK(weight.scalar_type() == input.scalar_type(), "weight dtype ", weight.scalar_type(),
              " differs from input dtype ", input.scalar_type());
  LIGHTVLLM_CHECK(weight.is_contiguous(), "weight must be contiguous");
  check_same_device(input, weight, "input", "weight");
}

inline void check_rms_norm(const at::Tensor& out, const at::Tensor& input,
                           const at::Tensor& weight) {
  check_norm_args(input, weight);
  LIGHTVLLM_CHECK(out.sizes() == input.sizes(), "out shape ", out.sizes(), " differs from input shape ",
              input.sizes());
  LIGHTVLLM_CHECK(out.scalar_type() == input.scalar_type(), "out dtype differs from input dtype");
  LIGHTVLLM_CHECK(out.is_contiguous(), "out must be contiguous");
  check_same_device(out, input, "out", "input");
}

inline void check_fused_add_rms_norm(const at::Tensor& input, const at::Tensor& residual,
                                     const at::Tensor& weight) {
  check_norm_args(input, weight);
  LIGHTVLLM_CHECK(residual.sizes() == input.sizes(), "residual shape ", residual.sizes(),
              " differs from input shape ", input.sizes());
  LIGHTVLLM_CHECK(residual.scalar_type() == input.scalar_type(),
              "residual dtype differs from input dtype");
  LIGHTVLLM_CHECK(residual.is_contiguous(), "residual must be contiguous");
  check_same_device(input, residual, "input", "residual");
}

inline void check_silu_and_mul(const at::Tensor& out, const at::Tensor& input) {
  LIGHTVLLM_CHECK(is_float_type(input.scalar_type()), "input must be float32, float16 or bfloat16, got ",
              input.scalar_type());
  LIGHTVLLM_CHECK(input.size(-1) % 2 == 0, "input's last dim must be even, got ", input.size(-1));
  LIGHTVLLM_CHECK(input.is_contiguous(), "input must be contiguous");
  LIGHTVLLM_CHECK(out.is_contiguous(), "out must be contiguous");
  LIGHTVLLM_CHECK(out.dim() == input.dim(), "out must have the input's rank");
  for (int64_t d = 0; d + 1 < input.dim(); ++d)
    LIGHTVLLM_CHECK(out.size(d) == input.size(d), "out shape ", out.sizes(), " does not match input ",
                input.sizes());
  LIGHTVLLM_CHECK(out.size(-1) * 2 == input.size(-1), "out's last dim must be half the input's");
  LIGHTVLLM_CHECK(out.scalar_type() == input.scalar_type(), "out dtype differs from input dtype");
  check_same_device(out, input, "out", "input");
}

// Query or key as [T, heads, head_size] with any token stride; returns (heads, token_stride).
inline std::pair<int64_t, int64_t> rope_layout(const at::Tensor& t, int64_t num_tokens,
                                               int64_t head_size, const char* name) {
  LIGHTVLLM_CHECK(t.dim() == 2 || t.dim() == 3, name, " must be [T, H*head_size] or [T, H, head_size]");
  LIGHTVLLM_CHECK(t.size(0) == num_tokens, name, " has ", t.size(0), " tokens but positions has ",
              num_tokens);
  int64_t heads;
  if (t.dim() == 2) {
    LIGHTVLLM_CHECK(t.size(1) % head_size == 0, name, " width ", t.size(1),
                " is not a multiple of head_size ", head_size);
    LIGHTVLLM_CHECK(t.stride(1) == 1, name, " must be contiguous within a token");
    heads = t.size(1) / head_size;
  } else {
    LIGHTVLLM_CHECK(t.size(2) == head_size, name, " last dim ", t.size(2), " != head_size ", head_size);
    LIGHTVLLM_CHECK(t.stride(2) == 1 && (t.size(1) == 1 || t.stride(1) == head_size), name,
                " must be contiguous within a token");
    heads = t.size(1);
  }
  return {heads, num_tokens > 1 ? t.stride(0) : heads * head_size};
}

inline void check_rope(const at::Tensor& positions, const at::Tensor& query, const at::Tensor& key,
                       int64_t head_size, const at::Tensor& cache) {
  LIGHTVLLM_CHECK(positions.scalar_type() == at::kLong || positions.scalar_type() == at::kInt,
              "positions must be int64 or int32");
  LIGHTVLLM_CHECK(is_float_type(query.scalar_type()), "query must be float32, float16 or bfloat16");
  LIGHTVLLM_CHECK(key.scalar_type() == query.scalar_type(), "key dtype differs from query dtype");
  LIGHTVLLM_CHECK(is_float_type(cache.scalar_type()), "cos_sin_cache must be a float tensor");
  LIGHTVLLM_CHECK(cache.dim() == 2 && cache.is_contiguous(), "cos_sin_cache must be a contiguous 2-D tensor");
  LIGHTVLLM_CHECK(cache.size(1) % 2 == 0 && cache.size(1) <= head_size && cache.size(1) > 0,
              "cos_sin_cache width (rot_dim) ", cache.size(1), " must be even and <= head_size ",
              head_size);
  LIGHTVLLM_CHECK(head_size > 0, "head_size must be positive");
  check_same_device(positions, query, "positions", "query");
  check_same_device(query, key, "query", "key");
  check_same_device(query, cache, "query", "cos_sin_cache");
}

// What the weight-streaming GEMMs (small_batch_linear, mma_linear) share: fp16/bf16 of one
// dtype, input [M <= max_rows, K], weight [N, K] contiguous, out [M, N] (glu: the _silu variants,
// weight [2d, K] = gate rows then up rows, out [M, d]), one device.
inline void check_stream_linear(const char* name, const at::Tensor& out, const at::Tensor& input,
                                const at::Tensor& weight, int64_t max_rows, bool glu) {
  LIGHTVLLM_CHECK(input.scalar_type() == at::kHalf || input.scalar_type() == at::kBFloat16,
              name, " takes float16 or bfloat16, got ", input.scalar_type());
  LIGHTVLLM_CHECK(weight.scalar_type() == input.scalar_type() && out.scalar_type() == input.scalar_type(),
              "input, weight and out must share one dtype");
  LIGHTVLLM_CHECK(input.dim() == 2 && weight.dim() == 2 && out.dim() == 2,
              "input [M, K], weight [N, K] and out [M, N] must be 2-D");
  LIGHTVLLM_CHECK(input.size(0) <= max_rows, name, " takes at most ", max_rows, " rows, got ", input.size(0));
  LIGHTVLLM_CHECK(weight.size(1) == input.size(1), "weight is [", weight.size(0), ", ", weight.size(1),
              "] but input has ", input.size(1), " columns");
  LIGHTVLLM_CHECK(!glu || weight.size(0) % 2 == 0, name, "_silu needs an even number "
              "of weight rows (gate then up), got ", weight.size(0));
  const int64_t n_out = glu ? weight.size(0) / 2 : weight.size(0);
  LIGHTVLLM_CHECK(out.size(0) == input.size(0) && out.size(1) == n_out, "out must be [",
              input.size(0), ", ", n_out, "], got ", out.sizes());
  LIGHTVLLM_CHECK(input.stride(1) == 1 && out.stride(1) == 1 && weight.is_contiguous(),
              "input and out need contiguous rows and weight must be contiguous");
  LIGHTVLLM_CHECK(weight.size(0) < (int64_t(1) << 31) && weight.size(1) < (int64_t(1) << 31),
              "weight dims must fit in 32 bits");
  check_same_device(out, input, "out", "input");
  check_same_device(input, weight, "input", "weight");
}

inline void check_small_batch_linear(const at::Tensor& out, const at::Tensor& input,
                                     const at::Tensor& weight, int64_t cols_per_warp, bool glu) {
  check_stream_linear("small_batch_linear", out, input, weight, 8, glu);
  LIGHTVLLM_CHECK(cols_per_warp == 1 || cols_per_warp == 2 || cols_per_warp == 4,
              "cols_per_warp must be 1, 2 or 4, got ", cols_per_warp);
}

inline void check_mma_linear(const at::Tensor& out, const at::Tensor& input, const at::Tensor& weight,
                             int64_t warps, int64_t tiles, bool glu) {
  check_stream_linear("mma_linear", out, input, weight, 16, glu);
  LIGHTVLLM_CHECK(weight.size(1) % 32 == 0, "mma_linear needs K to be a multiple of 32, got ",
              weight.size(1));
  LIGHTVLLM_CHECK(warps == 4 || warps == 8, "warps must be 4 or 8, got ", warps);
  LIGHTVLLM_CHECK(tiles == 1 || tiles == 2, "tiles must be 1 or 2, got ", tiles);
}

inline void check_vector_add(const at::Tensor& a, const at::Tensor& b) {
  LIGHTVLLM_CHECK(a.sizes() == b.sizes(), "a and b shapes differ: ", a.sizes(), " vs ", b.sizes());
  LIGHTVLLM_CHECK(a.scalar_type() == b.scalar_type(), "a and b dtypes differ");
  LIGHTVLLM_CHECK(is_float_type(a.scalar_type()), "vector_add supports float32, float16, bfloat16");
  check_same_device(a, b, "a", "b");
}

}  // namespace lightvllm
