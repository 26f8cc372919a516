// The number of OpenMP threads deit chooses for itself where the user did not. GNU OpenMP reads it
// as its library loads, before main: apps/main.cpp sets it in the environment and restarts.
#pragma once
#include <optional>
#include <string>

#include "engine/rendezvous.h"

namespace deit {

// OMP_NUM_THREADS for a process that a launcher started beside others on one machine, when the
// user did not choose it and the launcher did not bind the processes to cores of their own: each
// process's share of the cores it may run on, so that N processes do not each start a thread per
// core (N times oversubscribed: even with the passive wait policy main.cpp sets, measured 5% slower
// CPU training steps with two processes of 2 threads on 2 cores, 16% with 4 threads each). nullopt
// where OpenMP's default is already right: OMP_NUM_THREADS set, one process on the machine, or
// processes bound (OpenMP then starts a thread per core of its binding). The processes per machine
// come from the launcher: OMPI_COMM_WORLD_LOCAL_SIZE (mpirun) or LOCAL_WORLD_SIZE (torchrun, which
// sets OMP_NUM_THREADS=1 itself unless told otherwise); Slurm's binds its tasks by default.
std::optional<int> openmp_threads_per_process(const Environment& env, int usable_cpus,
                                              int online_cpus);

// The same for this process: its environment, the CPUs its affinity allows, the machine's.
std::optional<int> openmp_threads_for_this_process();

}  // namespace deit
