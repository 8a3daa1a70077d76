// Pin each intra-op (OpenMP) thread to one CPU, vLLM-CPU style: thread i runs only on cpus[i].
// A thread that migrates, or two sharing a core, stalls every parallel region at its barrier.
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include "../common.h"

#include <sched.h>

#include <mutex>
#include <string>
#include <vector>

namespace lightvllm {

std::vector<int64_t> bind_threads(std::vector<int64_t> cpus) {
  const int64_t n = at::get_num_threads();
  LIGHTVLLM_CHECK(static_cast<int64_t>(cpus.size()) == n, "bind_threads got ", cpus.size(),
              " CPUs for ", n, " intra-op threads");
  std::vector<int64_t> bound(n, -1);
  std::mutex lock;
  std::string error;
  // grain 1 over n items on n threads: each thread runs one index, its own number
  at::parallel_for(0, n, 1, [&](int64_t, int64_t) {
    const int64_t me = at::get_thread_num();
    cpu_set_t mask;
    CPU_ZERO(&mask);
    CPU_SET(static_cast<int>(cpus[me]), &mask);
    const int rc = sched_setaffinity(0, sizeof(mask), &mask);  // 0: the calling thread
    std::lock_guard<std::mutex> guard(lock);
    if (rc == 0)
      bound[me] = cpus[me];
    else
      error = "sched_setaffinity to CPU " + std::to_string(cpus[me]) + " failed";
  });
  LIGHTVLLM_CHECK(error.empty(), error);
  return bound;
}

}  // namespace lightvllm
