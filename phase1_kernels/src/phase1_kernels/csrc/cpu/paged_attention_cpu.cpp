// Paged attention on the CPU: decode and varlen (chunked) prefill in one kernel that reads K/V
// through the block table, with no gather into a contiguous copy.
//
// The batch is flattened like the GPU kernels': sequence b owns query tokens
// query_start_loc[b] .. query_start_loc[b+1], which are the last q_len of its seq_lens[b] tokens
// (the first seq_lens[b] - q_len are context already in the cache); causal within the sequence.
// GQA: query head i reads kv head i / (Hq / Hk).
//
// Work item = (sequence, kv head, tile of up to kTileTokens query tokens): the item's
// tile * group query rows share every K/V block it loads (GQA reuse), so decode reads each
// block once per kv head. Per block the rows run an online softmax (flash-attention style:
// running max m, running sum l, rescaled accumulator acc), all in fp32 whatever the cache dtype.
// Items are spread over the intra-op threads with at::parallel_for.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "../common.h"
#include "vec_math.h"

namespace lightvllm {
namespace {

constexpr int64_t kTileTokens = 16;  // query tokens per work item (prefill)
constexpr int kLanes = 16;           // partial sums per dot product: lets the compiler use SIMD

template <typename T>
inline float dot(const float* q, const T* k, int64_t n) {
  float acc[kLanes] = {0.f};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += q[i + l] * static_cast<float>(k[i + l]);
  float total = 0.f;
  for (int l = 0; l < kLanes; ++l) total += acc[l];
  for (; i < n; ++i) total += q[i] * static_cast<float>(k[i]);
  return total;
}

// s[j] = q . k_j for the n keys k_j = k + j * stride (fp32 rows of `dim`). With AVX2 four keys
// are done at once and their four 8-lane sums reduced together (one horizontal-add tree instead
// of four); elsewhere, and for dims that are not a multiple of 8, the plain loops.
inline void key_scores(const float* q, const float* k, int64_t stride, int64_t dim, int64_t n,
                       float* s) {
  int64_t j = 0;
#ifdef LIGHTVLLM_AVX2
  if (dim % 8 == 0) {
    for (; j + 4 <= n; j += 4) {
      const float* k0 = k + j * stride;
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      for (int64_t d = 0; d < dim; d += 8) {
        const __m256 qv = _mm256_loadu_ps(q + d);
        a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + d), a0);
        a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + stride + d), a1);
        a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + 2 * stride + d), a2);
        a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + 3 * stride + d), a3);
      }
      const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
      _mm_storeu_ps(s + j, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
    }
  }
#endif
  for (; j < n; ++j) s[j] = dot(q, k + j * stride, dim);
}

// s[j] = exp(s[j] - shift) for j < n (every s[j] <= shift).
inline void exp_shifted(float* s, int64_t n, float shift) {
  int64_t j = 0;
#ifdef LIGHTVLLM_AVX2
  const __m256 sh = _mm256_set1_ps(shift);
  for (; j + 8 <= n; j += 8)
    _mm256_storeu_ps(s + j, exp_approx(_mm256_sub_ps(_mm256_loadu_ps(s + j), sh)));
#endif
  for (; j < n; ++j) s[j] = exp_approx(s[j] - shift);
}

// K or V rows of one block as fp32: the cache itself for fp32, else converted into `buf`.
template <typename T>
inline const float* block_as_float(const T* src, int64_t n, int64_t stride, int64_t dim,
                                   float* buf, int64_t& out_stride) {
  if constexpr (std::is_same_v<T, float>) {
    out_stride = stride;
    return src;
  } else {
    for (int64_t j = 0; j < n; ++j)
      for (int64_t d = 0; d < dim; ++d) buf[j * dim + d] = static_cast<float>(src[j * stride + d]);
    out_stride = dim;
    return buf;
  }
}

struct Layout {
  int64_t num_blocks, block_size, kv_heads, head_size, q_heads, group;
  int64_t q_token_stride, out_token_stride, table_width;
  int64_t token_stride() const { return kv_heads * head_size; }  // between tokens in a block
  int64_t block_stride() const { return block_size * kv_heads * head_size; }
};

struct Item {
  int64_t seq, kv_head, first, last;  // query tokens [first, last) of the sequence
};
constexpr int64_t kAllHeads = -1;  // Item::kv_head of a decode item that covers every kv head

// Per-thread scratch of one work item: scaled queries, accumulators, softmax state.
struct Scratch {
  std::vector<float> q, acc, m, l, s, k, v;
  void resize(int64_t rows, int64_t dim, int64_t block) {
    q.resize(rows * dim);
    acc.resize(rows * dim);
    m.resize(rows);
    l.resize(rows);
    s.resize(block);
    k.resize(block * dim);
    v.resize(block * dim);
  }
};

// One query row against one block's first `n` keys (fp32 rows `stride` apart): scores,
// online-softmax update of (m, l, acc).
inline void attend_block(const float* q, float* acc, float& m, float& l, float* s, const float* k,
                         const float* v, int64_t stride, int64_t n, int64_t dim) {
  key_scores(q, k, stride, dim, n, s);
  float block_max = s[0];
  for (int64_t j = 1; j < n; ++j) block_max = std::max(block_max, s[j]);
  const float m_new = std::max(m, block_max);
  const float correction = exp_approx(m - m_new);  // m = -inf at first: exp -> ~0
  exp_shifted(s, n, m_new);
  float sum = 0.f;
  for (int64_t j = 0; j < n; ++j) sum += s[j];
  l = l * correction + sum;
  m = m_new;
  for (int64_t d = 0; d < dim; ++d) acc[d] *= correction;
  for (int64_t j = 0; j < n; ++j) {
    const float* vj = v + j * stride;
    const float p = s[j];
    for (int64_t d = 0; d < dim; ++d) acc[d] += p * vj[d];
  }
}

template <typename T>
void attend_item(const Item& it, T* out, const T* query, const T* cache, const int32_t* tables,
                 const int32_t* seq_lens, const int32_t* starts, float scale, const Layout& L,
                 Scratch& w) {
  const int64_t dim = L.head_size, group = L.group;
  const int64_t rows = (it.last - it.first) * group;
  w.resize(rows, dim, L.block_size);
  const int64_t q0 = starts[it.seq], q_len = starts[it.seq + 1] - q0;
  const int64_t context = seq_lens[it.seq] - q_len;
  for (int64_t r = 0; r < rows; ++r) {  // row r: token first + r / group, q head kv_head*group + r % group
    const T* src = query + (q0 + it.first + r / group) * L.q_token_stride +
                   (it.kv_head * group + r % group) * dim;
    for (int64_t d = 0; d < dim; ++d) w.q[r * dim + d] = static_cast<float>(src[d]) * scale;
    std::fill_n(w.acc.data() + r * dim, dim, 0.f);
    w.m[r] = -std::numeric_limits<float>::infinity();
    w.l[r] = 0.f;
  }
  const int64_t visible_end = context + it.last;  // keys the tile's last token sees
  const int32_t* table = tables + it.seq * L.table_width;
  const T* v_cache = cache + L.num_blocks * L.block_stride();
  for (int64_t blk = 0; blk * L.block_size < visible_end; ++blk) {
    const int64_t offset = static_cast<int64_t>(table[blk]) * L.block_stride() + it.kv_head * dim;
    const int64_t first_key = blk * L.block_size;
    const int64_t block_keys = std::min(L.block_size, visible_end - first_key);
    int64_t stride;
    const float* k = block_as_float(cache + offset, block_keys, L.token_stride(), dim, w.k.data(), stride);
    const float* v = block_as_float(v_cache + offset, block_keys, L.token_stride(), dim, w.v.data(), stride);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t sees = context + it.first + r / group + 1;  // causal: keys [0, sees)
      const int64_t n = std::min(block_keys, sees - first_key);
      if (n <= 0) continue;
      attend_block(w.q.data() + r * dim, w.acc.data() + r * dim, w.m[r], w.l[r], w.s.data(), k, v,
                   stride, n, dim);
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    T* dst = out + (q0 + it.first + r / group) * L.out_token_stride +
             (it.kv_head * group + r % group) * dim;
    const float inv = 1.f / w.l[r];
    for (int64_t d = 0; d < dim; ++d) dst[d] = static_cast<T>(w.acc[r * dim + d] * inv);
  }
}

#ifdef LIGHTVLLM_AVX2
// Hint the caches to fetch one block's `rows` rows of `dim` fp32 (`stride` apart): the next
// block's address comes from the block table, which no hardware prefetcher can guess.
inline void prefetch_rows(const float* p, int64_t rows, int64_t stride, int64_t dim) {
  for (int64_t j = 0; j < rows; ++j)
    for (int64_t d = 0; d < dim; d += 16)
      _mm_prefetch(reinterpret_cast<const char*>(p + j * stride + d), _MM_HINT_T0);
}

inline float max_of(const float* s, int64_t n) {
  int64_t j = 0;
  float best = -std::numeric_limits<float>::infinity();
  if (n >= 8) {
    __m256 m = _mm256_loadu_ps(s);
    for (j = 8; j + 8 <= n; j += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(s + j));
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, m);
    for (float x : lanes) best = std::max(best, x);
  }
  for (; j < n; ++j) best = std::max(best, s[j]);
  return best;
}

constexpr int64_t kAhead = 2;  // blocks prefetched ahead of the one in use

// One work item in two passes instead of an online softmax per block: every score first (a K
// block is read from memory once and reused from L1 by all the item's rows), one softmax per
// row, then the V rows weighted into per-row accumulators held in registers per block (8 AVX
// registers for head_size 64). The item's rows are tokens x heads x group: a tile of query
// tokens of one kv head, or one token over every kv head (it.kv_head == kAllHeads: each K/V
// block is then read as one contiguous run of memory). Causal: a row sees keys [0, its
// position]. Blocks are prefetched kAhead ahead, V during the first pass. fp32, head = 8 * NV.
template <int NV>
void attend_two_pass(const Item& it, float* out, const float* query, const float* cache,
                     const int32_t* tables, const int32_t* seq_lens, const int32_t* starts,
                     float scale, const Layout& L, Scratch& w) {
  constexpr int64_t dim = NV * 8;
  const int64_t group = L.group, tokens = it.last - it.first;
  const int64_t h0 = it.kv_head == kAllHeads ? 0 : it.kv_head;
  const int64_t heads = it.kv_head == kAllHeads ? L.kv_heads : 1;
  const int64_t per_token = heads * group, rows = tokens * per_token;
  const int64_t q_len = starts[it.seq + 1] - starts[it.seq];
  const int64_t first_keys = seq_lens[it.seq] - q_len + it.first + 1;  // the first token's
  const int64_t max_keys = first_keys + tokens - 1;
  const int64_t nblocks = (max_keys + L.block_size - 1) / L.block_size;
  const int64_t ts = L.token_stride(), bs = L.block_stride(), base = h0 * dim;
  const int32_t* table = tables + it.seq * L.table_width;
  const float* v_cache = cache + L.num_blocks * bs;
  auto keys_of = [&](int64_t r) { return first_keys + r / per_token; };
  auto kv_of = [&](int64_t r) { return ((r % per_token) / group) * dim; };  // offset from base
  auto prefetch_block = [&](int64_t blk) {
    prefetch_rows(cache + table[blk] * bs + base, L.block_size, ts, heads * dim);
    prefetch_rows(v_cache + table[blk] * bs + base, L.block_size, ts, heads * dim);
  };
  for (int64_t blk = 0; blk < std::min(kAhead, nblocks); ++blk) prefetch_block(blk);
  w.q.resize(rows * dim);
  w.s.resize(rows * max_keys);
  w.acc.assign(rows * dim, 0.f);
  w.l.resize(rows);
  const int64_t token0 = starts[it.seq] + it.first;
  for (int64_t t = 0; t < tokens; ++t) {
    const float* src = query + (token0 + t) * L.q_token_stride + h0 * group * dim;
    float* dst = w.q.data() + t * per_token * dim;
    for (int64_t i = 0; i < per_token * dim; ++i) dst[i] = src[i] * scale;
  }
  for (int64_t blk = 0; blk < nblocks; ++blk) {  // pass 1: scores; V comes into L2 meanwhile
    if (blk + kAhead < nblocks) prefetch_block(blk + kAhead);
    const float* k = cache + table[blk] * bs + base;
    const int64_t first = blk * L.block_size;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t n = std::min(L.block_size, keys_of(r) - first);
      if (n > 0)
        key_scores(w.q.data() + r * dim, k + kv_of(r), ts, dim, n, w.s.data() + r * max_keys + first);
    }
  }
  for (int64_t r = 0; r < rows; ++r) {  // softmax numerators; 1 / denominator kept
    float* s = w.s.data() + r * max_keys;
    const int64_t keys = keys_of(r);
    exp_shifted(s, keys, max_of(s, keys));
    __m256 sum8 = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= keys; j += 8) sum8 = _mm256_add_ps(sum8, _mm256_loadu_ps(s + j));
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, sum8);
    float sum = 0.f;
    for (float x : lanes) sum += x;
    for (; j < keys; ++j) sum += s[j];
    w.l[r] = 1.f / sum;
  }
  for (int64_t blk = 0; blk < nblocks; ++blk) {  // pass 2: weighted V rows
    const float* v = v_cache + table[blk] * bs + base;
    const int64_t first = blk * L.block_size;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t n = std::min(L.block_size, keys_of(r) - first);
      if (n <= 0) continue;
      const float* p = w.s.data() + r * max_keys + first;
      const float* vr = v + kv_of(r);
      float* acc_mem = w.acc.data() + r * dim;
      __m256 acc[NV];
      for (int c = 0; c < NV; ++c) acc[c] = _mm256_loadu_ps(acc_mem + 8 * c);
      for (int64_t j = 0; j < n; ++j) {
        const __m256 pj = _mm256_set1_ps(p[j]);
        const float* vj = vr + j * ts;
        for (int c = 0; c < NV; ++c) acc[c] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 8 * c), acc[c]);
      }
      for (int c = 0; c < NV; ++c) _mm256_storeu_ps(acc_mem + 8 * c, acc[c]);
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    float* dst = out + (token0 + r / per_token) * L.out_token_stride + h0 * group * dim +
                 (r % per_token) * dim;
    const __m256 inv = _mm256_set1_ps(w.l[r]);
    for (int c = 0; c < NV; ++c)
      _mm256_storeu_ps(dst + 8 * c, _mm256_mul_ps(_mm256_loadu_ps(w.acc.data() + r * dim + 8 * c), inv));
  }
}
#endif

#ifdef LIGHTVLLM_AVX2
inline bool has_two_pass(const Layout& L) { return L.head_size == 64 || L.head_size == 128; }
#else
inline bool has_two_pass(const Layout&) { return false; }
#endif

// The two-pass AVX2 path for an fp32 cache with head_size 64 or 128; the general online-softmax
// path otherwise (other dtypes and head sizes, no AVX2).
template <typename T>
void attend(const Item& it, T* out, const T* query, const T* cache, const int32_t* tables,
            const int32_t* seq_lens, const int32_t* starts, float scale, const Layout& L,
            Scratch& w) {
#ifdef LIGHTVLLM_AVX2
  if constexpr (std::is_same_v<T, float>) {
    if (has_two_pass(L)) {
      if (L.head_size == 64)
        attend_two_pass<8>(it, out, query, cache, tables, seq_lens, starts, scale, L, w);
      else
        attend_two_pass<16>(it, out, query, cache, tables, seq_lens, starts, scale, L, w);
      return;
    }
  }
#endif
  attend_item(it, out, query, cache, tables, seq_lens, starts, scale, L, w);
}

// Work items: (sequence, kv head, tile of query tokens); with `whole_decodes`, a one-token
// sequence is one item over all its heads (enough sequences keep every thread busy).
std::vector<Item> make_items(const int32_t* starts, int64_t num_seqs, int64_t kv_heads,
                             bool whole_decodes) {
  std::vector<Item> items;
  for (int64_t b = 0; b < num_seqs; ++b) {
    const int64_t q_len = starts[b + 1] - starts[b];
    if (whole_decodes && q_len == 1) {
      items.push_back({b, kAllHeads, 0, 1});
      continue;
    }
    for (int64_t h = 0; h < kv_heads; ++h)
      for (int64_t t = 0; t < q_len; t += kTileTokens)
        items.push_back({b, h, t, std::min(q_len, t + kTileTokens)});
  }
  return items;
}

void check_paged_args(const at::Tensor& out, const at::Tensor& query, const at::Tensor& cache,
                      const at::Tensor& tables, const at::Tensor& seq_lens,
                      const at::Tensor& starts) {
  LIGHTVLLM_CHECK(is_float_type(query.scalar_type()), "query must be float32, float16 or bfloat16");
  LIGHTVLLM_CHECK(query.dim() == 3 && out.sizes() == query.sizes(), "query and out must be [T, Hq, D] "
              "of one shape, got ", query.sizes(), " and ", out.sizes());
  for (const at::Tensor* t : {&query, &out})
    LIGHTVLLM_CHECK(t->stride(2) == 1 && (t->size(1) == 1 || t->stride(1) == t->size(2)),
                "query and out must be contiguous within a token, got strides ", t->strides());
  LIGHTVLLM_CHECK(cache.dim() == 5 && cache.size(0) == 2 && cache.is_contiguous(),
              "kv_cache must be a contiguous [2, num_blocks, block_size, Hk, D] tensor, got ",
              cache.sizes());
  LIGHTVLLM_CHECK(cache.scalar_type() == query.scalar_type() && out.scalar_type() == query.scalar_type(),
              "query, out and kv_cache must share a dtype");
  LIGHTVLLM_CHECK(cache.size(4) == query.size(2), "kv_cache head_size ", cache.size(4),
              " differs from query's ", query.size(2));
  LIGHTVLLM_CHECK(query.size(1) % cache.size(3) == 0, "query heads ", query.size(1),
              " are not a multiple of kv heads ", cache.size(3));
  for (const at::Tensor* t : {&tables, &seq_lens, &starts})
    LIGHTVLLM_CHECK(t->scalar_type() == at::kInt && t->is_contiguous(),
                "block_tables, seq_lens and query_start_loc must be contiguous int32");
  LIGHTVLLM_CHECK(tables.dim() == 2 && seq_lens.dim() == 1 && starts.dim() == 1 &&
                  tables.size(0) == seq_lens.size(0) && starts.size(0) == seq_lens.size(0) + 1,
              "block_tables [B, W], seq_lens [B] and query_start_loc [B + 1] disagree: ",
              tables.sizes(), ", ", seq_lens.sizes(), ", ", starts.sizes());
  for (const at::Tensor* t : {&out, &cache, &tables, &seq_lens, &starts})
    check_same_device(query, *t, "query", "the other arguments");
}

// Every sequence's lengths and block ids are in range (a bad block id would read out of bounds).
void check_tables(const int32_t* tables, const int32_t* seq_lens, const int32_t* starts,
                  int64_t num_seqs, int64_t num_tokens, const Layout& L) {
  for (int64_t b = 0; b < num_seqs; ++b) {
    const int64_t q_len = starts[b + 1] - starts[b];
    LIGHTVLLM_CHECK(q_len >= 0 && starts[b + 1] <= num_tokens, "query_start_loc is not increasing "
                "within the ", num_tokens, " query tokens at sequence ", b);
    LIGHTVLLM_CHECK(seq_lens[b] >= q_len, "sequence ", b, " has ", q_len, " query tokens but seq_len ",
                seq_lens[b]);
    const int64_t used = (seq_lens[b] + L.block_size - 1) / L.block_size;
    LIGHTVLLM_CHECK(used <= L.table_width, "sequence ", b, " needs ", used, " blocks, its table has ",
                L.table_width);
    for (int64_t j = 0; j < used; ++j) {
      const int32_t id = tables[b * L.table_width + j];
      LIGHTVLLM_CHECK(id >= 0 && id < L.num_blocks, "sequence ", b, " block ", j, " is ", id,
                  ", outside the cache's ", L.num_blocks, " blocks");
    }
  }
}

void paged_attention(at::Tensor& out, const at::Tensor& query, const at::Tensor& kv_cache,
                     const at::Tensor& block_tables, const at::Tensor& seq_lens,
                     const at::Tensor& query_start_loc, double scale) {
  check_paged_args(out, query, kv_cache, block_tables, seq_lens, query_start_loc);
  const Layout L{kv_cache.size(1), kv_cache.size(2), kv_cache.size(3), kv_cache.size(4),
                 query.size(1), query.size(1) / kv_cache.size(3),
                 query.size(0) > 1 ? query.stride(0) : query.size(1) * query.size(2),
                 out.size(0) > 1 ? out.stride(0) : out.size(1) * out.size(2), block_tables.size(1)};
  const int64_t num_seqs = seq_lens.size(0);
  const int32_t* starts = query_start_loc.const_data_ptr<int32_t>();
  const int32_t* lens = seq_lens.const_data_ptr<int32_t>();
  const int32_t* tables = block_tables.const_data_ptr<int32_t>();
  LIGHTVLLM_CHECK(starts[0] == 0, "query_start_loc must start at 0, got ", starts[0]);
  check_tables(tables, lens, starts, num_seqs, query.size(0), L);
  const bool fast = query.scalar_type() == at::kFloat && has_two_pass(L);
  const std::vector<Item> items =
      make_items(starts, num_seqs, L.kv_heads, fast && num_seqs >= 4 * at::get_num_threads());
  const float s = static_cast<float>(scale);
  LIGHTVLLM_DISPATCH_FLOATING_TYPES(query.scalar_type(), "paged_attention_cpu", [&] {
    scalar_t* o = out.data_ptr<scalar_t>();
    const scalar_t* q = query.const_data_ptr<scalar_t>();
    const scalar_t* c = kv_cache.const_data_ptr<scalar_t>();
    at::parallel_for(0, static_cast<int64_t>(items.size()), 1, [&](int64_t begin, int64_t end) {
      Scratch scratch;
      for (int64_t i = begin; i < end; ++i)
        attend(items[i], o, q, c, tables, lens, starts, s, L, scratch);
    });
  });
}

// K/V of each token into its slot (block_id * block_size + offset) of the cache; slot < 0 skips.
void store_kv_cache(const at::Tensor& key, const at::Tensor& value, at::Tensor& kv_cache,
                    const at::Tensor& slot_mapping) {
  LIGHTVLLM_CHECK(key.dim() == 3 && value.sizes() == key.sizes(), "key and value must be [T, Hk, D] "
              "of one shape, got ", key.sizes(), " and ", value.sizes());
  LIGHTVLLM_CHECK(kv_cache.dim() == 5 && kv_cache.size(0) == 2 && kv_cache.is_contiguous() &&
                  kv_cache.size(3) == key.size(1) && kv_cache.size(4) == key.size(2),
              "kv_cache must be a contiguous [2, num_blocks, block_size, ", key.size(1), ", ",
              key.size(2), "] tensor, got ", kv_cache.sizes());
  LIGHTVLLM_CHECK(key.scalar_type() == kv_cache.scalar_type() &&
                  value.scalar_type() == kv_cache.scalar_type(),
              "key, value and kv_cache must share a dtype");
  for (const at::Tensor* t : {&key, &value})
    LIGHTVLLM_CHECK(t->stride(2) == 1 && (t->size(1) == 1 || t->stride(1) == t->size(2)),
                "key and value must be contiguous within a token, got strides ", t->strides());
  LIGHTVLLM_CHECK(slot_mapping.scalar_type() == at::kLong && slot_mapping.dim() == 1 &&
                  slot_mapping.size(0) == key.size(0) && slot_mapping.is_contiguous(),
              "slot_mapping must be contiguous int64 [", key.size(0), "]");
  const int64_t tokens = key.size(0), width = key.size(1) * key.size(2);
  const int64_t slots = kv_cache.size(1) * kv_cache.size(2);
  const int64_t* map = slot_mapping.const_data_ptr<int64_t>();
  for (int64_t t = 0; t < tokens; ++t)
    LIGHTVLLM_CHECK(map[t] < slots, "slot ", map[t], " of token ", t, " is outside the cache's ",
                slots, " slots");
  LIGHTVLLM_DISPATCH_FLOATING_TYPES(key.scalar_type(), "store_kv_cache_cpu", [&] {
    const scalar_t* k = key.const_data_ptr<scalar_t>();
    const scalar_t* v = value.const_data_ptr<scalar_t>();
    scalar_t* kc = kv_cache.data_ptr<scalar_t>();
    scalar_t* vc = kc + slots * width;
    const int64_t ks = tokens > 1 ? key.stride(0) : width, vs = tokens > 1 ? value.stride(0) : width;
    for (int64_t t = 0; t < tokens; ++t) {
      if (map[t] < 0) continue;
      std::memcpy(kc + map[t] * width, k + t * ks, width * sizeof(scalar_t));
      std::memcpy(vc + map[t] * width, v + t * vs, width * sizeof(scalar_t));
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(lightvllm, CPU, m) {
  m.impl("paged_attention", &paged_attention);
  m.impl("store_kv_cache", &store_kv_cache);
}

}  // namespace lightvllm
