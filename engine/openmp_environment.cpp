#include "engine/openmp_environment.h"

#include <sched.h>
#include <unistd.h>

#include <algorithm>

namespace deit {

std::optional<int> openmp_threads_per_process(const Environment& env, int usable_cpus,
                                              int online_cpus) {
  if (env.count("OMP_NUM_THREADS") || usable_cpus < online_cpus) return std::nullopt;
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_SIZE", "LOCAL_WORLD_SIZE"}) {
    const auto found = env.find(name);
    if (found == env.end()) continue;
    int processes = 0;
    try {
      processes = std::stoi(found->second);
    } catch (const std::exception&) {  // the rendezvous refuses a malformed launch later
      return std::nullopt;
    }
    if (processes <= 1) return std::nullopt;
    return std::max(1, usable_cpus / processes);
  }
  return std::nullopt;
}

std::optional<int> openmp_threads_for_this_process() {
  cpu_set_t allowed;
  if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0) return std::nullopt;
  const long online = sysconf(_SC_NPROCESSORS_ONLN);
  if (online <= 0) return std::nullopt;
  return openmp_threads_per_process(process_environment(), CPU_COUNT(&allowed),
                                    static_cast<int>(online));
}

}  // namespace deit
