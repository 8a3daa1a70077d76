// Runs mma_linear_kernel.cuh's kernel on the CPU (cuda_emulation.h) for test_mma_emulation.py:
//
//   mma_linear_driver DIR DTYPE GLU WARPS TILES ROWS N K X_STRIDE OUT_STRIDE
//
// reads DIR/x.bin ((ROWS - 1) * X_STRIDE + K values), DIR/w.bin ((GLU ? 2N : N) * K values) and
// DIR/out.bin ((ROWS - 1) * OUT_STRIDE + N values, the kernel's untouched cells keep them), all
// 16-bit DTYPE (bf16 or f16) bits; launches the grid as mma_linear.cu does; writes DIR/out.bin.
#include "cuda_emulation.h"
#include "mma_linear_kernel.cuh"

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace {

struct Buffer {  // exactly `count` 16-bit values, 16-byte aligned: AddressSanitizer sees the end
  explicit Buffer(size_t count) : count(count) {
    if (posix_memalign(&data, 16, count * 2) != 0) std::abort();
  }
  ~Buffer() { std::free(data); }
  void* data = nullptr;
  size_t count;
};

void read_into(const std::string& path, Buffer& buffer) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f || std::fread(buffer.data, 2, buffer.count, f) != buffer.count) {
    std::fprintf(stderr, "cannot read %zu values from %s\n", buffer.count, path.c_str());
    std::exit(2);
  }
  std::fclose(f);
}

void write_from(const std::string& path, const Buffer& buffer) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f || std::fwrite(buffer.data, 2, buffer.count, f) != buffer.count) std::exit(2);
  std::fclose(f);
}

// One block after another; inside a block, one thread per CUDA thread.
template <typename Kernel, typename... Args>
void launch(Kernel kernel, unsigned grid, int threads, Args... args) {
  gridDim.x = grid;
  blockDim.x = threads;
  for (unsigned b = 0; b < grid; ++b) {
    EmuBlock block(threads);
    std::vector<std::unique_ptr<EmuWarp>> warps;
    for (int w = 0; w < threads / 32; ++w) warps.push_back(std::make_unique<EmuWarp>());
    std::vector<std::thread> pool;
    for (int i = 0; i < threads; ++i) {
      pool.emplace_back([&, i] {
        threadIdx.x = i;
        blockIdx.x = b;
        emu_block = &block;
        emu_warp = warps[i / 32].get();
        kernel(args...);
        emu_warp->sync.arrive_and_drop();  // an exited thread no longer holds back a barrier
        emu_block->sync.arrive_and_drop();
      });
    }
    for (auto& t : pool) t.join();
  }
}

template <typename T, bool GLU, int NT, int WARPS, int CG>
void run(T* out, const T* x, const T* w, int rows, int n, int k, int64_t xs, int64_t os) {
  const int per_block = (GLU ? 8 : 16) * CG;
  launch(lightvllm::mma_linear_kernel<T, NT, WARPS, CG, GLU>, (n + per_block - 1) / per_block,
         WARPS * 32, out, x, w, rows, n, k / lightvllm::kMmaStepK, xs, os, int64_t{1} << 40);
}

template <typename T, bool GLU>
void dispatch(Buffer& out, Buffer& x, Buffer& w, int warps, int tiles, int rows, int n, int k,
              int64_t xs, int64_t os) {
  T* o = static_cast<T*>(out.data);
  const T* xp = static_cast<const T*>(x.data);
  const T* wp = static_cast<const T*>(w.data);
  const int key = (rows > 8 ? 100 : 0) + warps * 10 + tiles;
#define LIGHTVLLM_CASE(NT, WARPS, CG) \
  case (NT - 1) * 100 + WARPS * 10 + CG: return run<T, GLU, NT, WARPS, CG>(o, xp, wp, rows, n, k, xs, os);
  switch (key) {
    LIGHTVLLM_CASE(1, 4, 1) LIGHTVLLM_CASE(1, 4, 2) LIGHTVLLM_CASE(1, 8, 1) LIGHTVLLM_CASE(1, 8, 2)
    LIGHTVLLM_CASE(2, 4, 1) LIGHTVLLM_CASE(2, 4, 2) LIGHTVLLM_CASE(2, 8, 1) LIGHTVLLM_CASE(2, 8, 2)
    default: std::fprintf(stderr, "no kernel for warps %d tiles %d\n", warps, tiles); std::exit(2);
  }
#undef LIGHTVLLM_CASE
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 11) {
    std::fprintf(stderr, "usage: %s DIR DTYPE GLU WARPS TILES ROWS N K X_STRIDE OUT_STRIDE\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1], dtype = argv[2];
  const bool glu = std::atoi(argv[3]) != 0;
  const int warps = std::atoi(argv[4]), tiles = std::atoi(argv[5]), rows = std::atoi(argv[6]);
  const int n = std::atoi(argv[7]), k = std::atoi(argv[8]);
  const int64_t xs = std::atoll(argv[9]), os = std::atoll(argv[10]);
  Buffer x((rows - 1) * xs + k), w(static_cast<size_t>(glu ? 2 * n : n) * k), out((rows - 1) * os + n);
  read_into(dir + "/x.bin", x);
  read_into(dir + "/w.bin", w);
  read_into(dir + "/out.bin", out);
  if (dtype == "bf16") {
    if (glu) dispatch<__nv_bfloat16, true>(out, x, w, warps, tiles, rows, n, k, xs, os);
    else dispatch<__nv_bfloat16, false>(out, x, w, warps, tiles, rows, n, k, xs, os);
  } else {
    if (glu) dispatch<__half, true>(out, x, w, warps, tiles, rows, n, k, xs, os);
    else dispatch<__half, false>(out, x, w, warps, tiles, rows, n, k, xs, os);
  }
  write_from(dir + "/out.bin", out);
  return 0;
}
