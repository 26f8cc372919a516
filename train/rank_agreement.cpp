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

}  // namespace deit::train
