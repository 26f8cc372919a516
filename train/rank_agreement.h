// Data parallelism needs every process to run the same command on the same dataset. A rank whose
// model, classes or training settings differ from the others' used to surface as a truncated
// broadcast, a corrupted heap or a hang; the trainer checks first (Run::agree_across_ranks and
// Run::resume_model, train/run_setup.cpp). Before those, the processes check that they run the same
// deit build (agree_on_build), since another build may compare other entries, or call other
// collectives.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "engine/communicator.h"

namespace deit::train {

// The names of `entries` (name, value) whose values are not the same on every rank; empty when
// all agree. The same answer on every rank, so all stop together. Collective: every rank passes
// the same names in the same order.
std::vector<std::string> entries_that_differ(
    Communicator& comm, const std::vector<std::pair<std::string, std::string>>& entries);

// Throws std::invalid_argument on every rank where some of `entries` differ: "the N processes of
// this `job` differ in NAME, NAME: `advice`". Collective, as entries_that_differ.
void require_agreement(Communicator& comm,
                       const std::vector<std::pair<std::string, std::string>>& entries,
                       const std::string& job, const std::string& advice);

// Throws std::invalid_argument on every rank where the ranks' `fingerprint`s (16 characters; the
// product passes build_fingerprint(), engine/build_fingerprint.h) are not all the same: "the N
// processes of this `job` differ in the deit build (rank 0 runs build X, this process build Y):
// ...". Collective: the first one of every job of several processes (Run::agree_on_build,
// bench/step_bench.cpp), and the one collective whose shape every deit build keeps (48 doubles,
// summed), so that two builds meet in it whatever else they changed.
void agree_on_build(Communicator& comm, const std::string& fingerprint, const std::string& job);

}  // namespace deit::train
