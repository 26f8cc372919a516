#include "train/rank_agreement.h"

#include <cstdint>
#include <stdexcept>

#include "data/xxhash64.h"

namespace deit::train {

std::vector<std::string> entries_that_differ(
    Communicator& comm, const std::vector<std::pair<std::string, std::string>>& entries) {
  // Each value's hash in 8-bit pieces c, summed over the n ranks with their squares: the pieces
  // agree everywhere exactly when n * sum(c^2) == sum(c)^2 (their variance is 0), which every rank
  // computes alike from the sums. 8 bits keep sum(c)^2 exact in a double up to 2^18 ranks.
  constexpr int kPieces = 8;
  std::vector<double> sums(2 * kPieces * entries.size());
  for (size_t e = 0; e < entries.size(); ++e) {
    const std::string& value = entries[e].second;
    const uint64_t hash = data::xxhash64(value.data(), value.size());
    for (int p = 0; p < kPieces; ++p) {
      const double piece = static_cast<double>((hash >> (8 * p)) & 0xff);
      sums[2 * (kPieces * e + p)] = piece;
      sums[2 * (kPieces * e + p) + 1] = piece * piece;
    }
  }
  comm.all_reduce_sum(sums);
  const double n = comm.world_size();
  std::vector<std::string> differ;
  for (size_t e = 0; e < entries.size(); ++e) {
    for (int p = 0; p < kPieces; ++p) {
      const double sum = sums[2 * (kPieces * e + p)], squares = sums[2 * (kPieces * e + p) + 1];
      if (n * squares != sum * sum) {
        differ.push_back(entries[e].first);
        break;
      }
    }
  }
  return differ;
}

void require_agreement(Communicator& comm,
                       const std::vector<std::pair<std::string, std::string>>& entries,
                       const std::string& job, const std::string& advice) {
  const std::vector<std::string> differ = entries_that_differ(comm, entries);
  if (differ.empty()) return;
  std::string list;
  for (const std::string& name : differ) list += (list.empty() ? "" : ", ") + name;
  throw std::invalid_argument("the " + std::to_string(comm.world_size()) + " processes of this " +
                              job + " differ in " + list + ": " + advice);
}

void agree_on_build(Communicator& comm, const std::string& fingerprint, const std::string& job) {
  // A contract with every other deit build, older and newer: one all-reduce (sum) of 48 doubles,
  // laid out as below. Never change it: two builds whose first collectives differ in size fail in
  // it (MPI_ERR_TRUNCATE, or a hang) before either can say that the builds differ. So it shares no
  // code with entries_that_differ, which a build may change freely.
  constexpr size_t kChars = 16;
  if (fingerprint.size() != kChars)
    throw std::invalid_argument("agree_on_build: a fingerprint of " + std::to_string(kChars) +
                                " characters, got '" + fingerprint + "'");
  // [0, 16): rank 0's characters (the others add 0); [16, 32) and [32, 48): each character summed
  // over the ranks, and its square. A character agrees on all n ranks exactly when
  // n * sum(c^2) == sum(c)^2 (its variance is 0): exact in a double for any number of ranks.
  std::vector<double> sums(3 * kChars, 0.0);
  for (size_t i = 0; i < kChars; ++i) {
    const double c = static_cast<unsigned char>(fingerprint[i]);
    if (comm.rank() == 0) sums[i] = c;
    sums[kChars + i] = c;
    sums[2 * kChars + i] = c * c;
  }
  comm.all_reduce_sum(sums);
  const double n = comm.world_size();
  bool differ = false;
  std::string rank0;
  for (size_t i = 0; i < kChars; ++i) {
    rank0.push_back(static_cast<char>(static_cast<unsigned char>(sums[i])));
    differ = differ || n * sums[2 * kChars + i] != sums[kChars + i] * sums[kChars + i];
  }
  if (!differ) return;
  std::string builds = "rank 0 runs build " + rank0;
  if (comm.rank() != 0)
    builds +=
        fingerprint == rank0 ? ", as does this process" : ", this process build " + fingerprint;
  throw std::invalid_argument("the " + std::to_string(comm.world_size()) + " processes of this " +
                              job + " differ in the deit build (" + builds +
                              "): every process must run the same deit build (`deit --version` "
                              "shows it): copy one build to every node, or build each node's from "
                              "the same sources with the same options");
}

}  // namespace deit::train
